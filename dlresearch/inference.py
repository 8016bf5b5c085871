"""A trained run in one line: ``dlresearch.restore(workdir)``.

    run = dlresearch.restore('runs/quickstart')        # latest checkpoint
    logits = run.predict(images)                       # eval mode, jitted
    run.config, run.step, run.model, run.variables, run.tokenizer

``restore`` reads the run's recorded ``config.json``, rebuilds its model with
the sizes the data gave it (recorded too; older workdirs rebuild the data to
learn them), and loads the parameters and model state of the latest
checkpoint, of a given step, or of the keep-best checkpoint (``'best'``).
Nothing in the workdir is written.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import numpy as np

from dlresearch import checkpoint, config as config_lib, policy, train
from dlresearch import logging as log_lib
from dlresearch.config import Config, ConfigError
from dlresearch.data import kinds, text


@dataclasses.dataclass
class Restored:
  """A trained model: its config, module, variables and tokenizer (text)."""

  config: Config
  model: Any
  variables: dict  # flax variables: {'params': ..., 'batch_stats': ...}
  step: int
  workdir: str
  tokenizer: Any = None

  @functools.cached_property
  def _apply(self):
    return jax.jit(lambda v, args, kwargs: self.model.apply(
        v, *args, train=False, **kwargs))

  def predict(self, *inputs, **kwargs) -> np.ndarray:
    """The model's output (logits) for a batch of model inputs, eval mode.

    ``inputs`` are what the model takes (e.g. float images ``[B, H, W, C]``
    preprocessed as in training, or token ids ``[B, T]`` and ``mask=``).
    """
    return np.asarray(self._apply(self.variables, inputs, kwargs))


def _variables(workdir: str, step) -> tuple[dict, int]:
  ckpts = checkpoint.checkpoint_dir(workdir)
  if step == 'best':
    return _best_variables(workdir)
  if step is None:
    path = workdir
  else:
    path = os.path.join(ckpts, str(int(step)))
  if not os.path.exists(path):
    raise FileNotFoundError(f'no checkpoint {step!r} in {workdir} (steps: '
                            f'{_steps(ckpts) or "none"})')
  loaded = checkpoint.load_variables(path)
  return {'params': loaded['params'], **loaded['model_state']}, loaded['step']


def _best_variables(workdir: str) -> tuple[dict, int]:
  """The keep-best checkpoint (``--best_metric``) as flax variables."""
  path = policy.best_checkpoint_dir(workdir)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no keep-best checkpoint in {workdir} (train '
                            'with --best_metric)')
  best = policy.BestCheckpoint(path)
  try:
    loaded, info = best.restore()
  finally:
    best.close()
  variables = jax.tree.map(np.asarray, loaded)
  return {'params': variables['params'], **variables['model_state']}, int(
      info['step'])


def _steps(ckpts: str) -> list[int]:
  if not os.path.isdir(ckpts):
    return []
  return sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())


def restore(workdir: str, step: int | str | None = None) -> Restored:
  """The run in ``workdir`` at its latest checkpoint, ``step``, or ``'best'``.

  Raises:
    FileNotFoundError: no recorded config or no such checkpoint.
  """
  log_lib.quiet_libraries()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  cfg = config_lib.read_recorded(workdir)
  if cfg is None:
    raise FileNotFoundError(f'{workdir} has no config.json: not a dlresearch '
                            'run directory')
  sizes = config_lib.read_record(workdir).get('data_model_kwargs')
  tokenizer = None
  saved = text.find_saved_tokenizer(workdir)
  if saved is not None and str(saved.parent) == workdir:
    tokenizer = text.load_tokenizer(saved)
  if sizes is None:  # Written before sizes were recorded: ask the data.
    data = kinds.build(cfg.replace(eval_only=True), workdir, fresh=False)
    sizes, tokenizer = data.model_kwargs, data.tokenizer
  try:
    model = train.build_model(cfg, sizes)
  except ConfigError as e:
    raise ValueError(f'{workdir}: cannot rebuild the model: {e}') from None
  variables, found = _variables(workdir, step)
  return Restored(cfg, model, variables, found, workdir, tokenizer)
