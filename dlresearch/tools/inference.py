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

from dlresearch import checkpoint, config as config_lib, init as init_lib, policy, problems, train
from dlresearch import logging as log_lib
from dlresearch.config import Config, ConfigError
from dlresearch.data import text


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

  ``'hf:DIR'``: a Hugging Face Llama or GPT-2 directory, converted into
  ``llama`` or ``transformer_lm`` (``restore_hf``).

  A ``--lora_save=adapters`` run gets its frozen base back from its
  ``--init_from`` (``init.complete``).

  Raises:
    FileNotFoundError: no recorded config or no such checkpoint.
    ConfigError (a ValueError): the base of an adapters-only LoRA run is
      missing or has changed.
  """
  log_lib.quiet_libraries()
  if workdir.startswith('hf:'):
    return restore_hf(workdir[len('hf:'):])
  workdir = os.path.abspath(os.path.expanduser(workdir))
  cfg = config_lib.read_recorded(workdir)
  if cfg is None:
    raise FileNotFoundError(f'{workdir} has no config.json: not a dlresearch '
                            'run directory')
  # The checkpoint first: a run without one is refused before its data is
  # read (or, for a run recorded before model sizes were, prepared).
  variables, found = _variables(workdir, step)
  sizes = config_lib.read_record(workdir).get('data_model_kwargs')
  tokenizer = None
  saved = text.find_saved_tokenizer(workdir)
  if saved is not None and str(saved.parent) == workdir:
    tokenizer = text.load_tokenizer(saved)
  if sizes is None:  # Written before sizes were recorded: ask the data.
    data = problems.build(cfg.replace(eval_only=True), workdir, fresh=False)
    sizes, tokenizer = data.model_kwargs, data.tokenizer
  try:
    model = train.build_model(cfg, sizes)
  except ConfigError as e:
    raise ValueError(f'{workdir}: cannot rebuild the model: {e}') from None
  if init_lib.adapters_only(cfg):  # --lora_save=adapters: the base from --init_from
    variables['params'] = init_lib.complete(cfg, model, variables['params'], workdir)
  return Restored(cfg, model, variables, found, workdir, tokenizer)


def restore_hf(directory: str) -> Restored:
  """A HF Llama/GPT-2 directory as a ``Restored`` (step 0): ``.model``,
  ``.variables``, ``.config`` (its ``--model``, ``--model_kwargs`` and
  ``--init_from``), ``.predict(token_ids) -> logits [B, T, vocab]``, and
  ``.tokenizer`` (a ``tokenizers.Tokenizer``) when ``tokenizer.json`` exists.

  Raises ``weights.WeightsError`` for a missing or misshaped tensor (named)
  or another architecture.
  """
  import json  # pylint: disable=g-import-not-at-top
  from dlresearch import weights  # pylint: disable=g-import-not-at-top
  from dlresearch.models import registry  # pylint: disable=g-import-not-at-top
  from dlresearch.weights import convert  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(os.path.expanduser(directory))
  state = weights.read(f'hf:{directory}')  # checks config.json is there
  with open(os.path.join(directory, 'config.json'), encoding='utf-8') as f:
    hf_config = json.load(f)
  kwargs = convert.hf_decoder_kwargs(hf_config)
  llama = hf_config['model_type'] == 'llama'
  name = 'llama' if llama else 'transformer_lm'
  model = registry.build(name, **kwargs)
  variables = (convert.llama if llama else convert.gpt2)(state, model)
  tokenizer = None
  if os.path.isfile(os.path.join(directory, 'tokenizer.json')):
    import tokenizers  # pylint: disable=g-import-not-at-top
    tokenizer = tokenizers.Tokenizer.from_file(
        os.path.join(directory, 'tokenizer.json'))
  cfg = Config(data_kind='lm', model=name, model_kwargs=kwargs,
               init_from=f'hf:{directory}')
  return Restored(cfg, model, variables, 0, directory, tokenizer)


# ---------------------------------------------------------------------------
# Predictors: inputs as files/strings -> class probabilities, with the
# model's own eval preprocessing (experiments/predict.py).


@dataclasses.dataclass
class Predictor:
  """``images(paths)`` / ``texts(strings)`` -> probabilities ``[N, classes]``."""

  model: Any
  variables: dict
  labels: list[str] | None
  image_fn: Any = None  # path -> float32 [H, W, C]
  text_fn: Any = None  # list[str] -> (ids, mask)

  @functools.cached_property
  def _apply(self):
    return jax.jit(lambda v, x, kw: jax.nn.softmax(
        self.model.apply(v, x, train=False, **kw), -1))

  def images(self, paths) -> np.ndarray:
    if self.image_fn is None:
      raise ValueError('this model classifies texts: use --text')
    x = np.stack([self.image_fn(p) for p in paths])
    return np.asarray(self._apply(self.variables, x, {}))

  def texts(self, texts) -> np.ndarray:
    if self.text_fn is None:
      raise ValueError('this model classifies images, not --text')
    ids, mask = self.text_fn(list(texts))
    return np.asarray(self._apply(self.variables, ids, {'mask': mask}))


def _read_image(path: str, mode: str) -> np.ndarray:
  from dlresearch.data import images  # pylint: disable=g-import-not-at-top
  return images.read(path, mode)


def _label_names(cfg: Config) -> list[str] | None:
  from dlresearch.data import datasets  # pylint: disable=g-import-not-at-top
  try:
    manual = os.path.expanduser(cfg.manual_dir) if cfg.manual_dir else None
    builder = datasets._open(cfg.dataset, os.path.expanduser(cfg.data_dir),  # pylint: disable=protected-access
                             manual)
    return list(builder.info.features[cfg.label_key].names)
  except Exception:  # pylint: disable=broad-exception-caught
    return None  # indices are shown instead


def from_workdir(workdir: str) -> Predictor:
  """A predictor for a trained run, preprocessing as its eval split."""
  from dlresearch.data import datasets, pipeline, transforms  # pylint: disable=g-import-not-at-top
  run = restore(workdir)
  cfg = run.config
  pred = Predictor(run.model, run.variables, _label_names(cfg))
  if cfg.data_kind == 'hf_text_classification':
    from dlresearch.problems import hf_text  # pylint: disable=g-import-not-at-top
    tok = hf_text.load_tokenizer(
        os.path.join(run.workdir, hf_text.SAVED_TOKENIZER), cfg.max_len)
    pred.text_fn = lambda t: tuple(hf_text.encode(tok, t).values())
  elif cfg.data_kind == 'text_classification':
    pred.text_fn = lambda t: text.pad_batch(
        run.tokenizer.encode_batch(t), cfg.max_len, run.tokenizer.pad_id)
  elif cfg.data_kind == 'classification':
    info = datasets.dataset_info(cfg.dataset, os.path.expanduser(cfg.data_dir),
                                 os.path.expanduser(cfg.manual_dir) or None)
    stored = info.input_shape
    mode = 'L' if stored and stored[-1] == 1 else 'RGB'
    size = cfg.image_size or (stored[0] if stored else 0)
    batch_fn = pipeline.image_batch_fn(cfg.normalize)

    def image_fn(path):
      x = _read_image(path, mode)
      if size:
        x = transforms.resize_center_crop(x, size) if cfg.image_size else (
            np.asarray(transforms.resize_center_crop(x, size, 1.0)))
      if cfg.image_channels and x.shape[-1] != cfg.image_channels:
        x = np.repeat(x, cfg.image_channels, -1)
      return batch_fn({'image': x[None]})['image'][0]

    pred.image_fn = image_fn
  else:
    raise ValueError(f'{workdir}: a {cfg.data_kind} run does not classify '
                     'images or texts')
  return pred


def from_weights(model_name: str, spec: str) -> Predictor:
  """A predictor for converted weights (``torch:``/``safetensors:``/``hf:``)."""
  import json  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  from dlresearch import init as init_lib  # pylint: disable=g-import-not-at-top
  from dlresearch.weights import imagenet  # pylint: disable=g-import-not-at-top
  from dlresearch.weights.errors import WeightsError  # pylint: disable=g-import-not-at-top
  if not init_lib.is_foreign(spec):
    raise ValueError(f'--init_from={spec}: use torch:PATH, safetensors:PATH or '
                     'hf:DIR (or --workdir for a run of ours)')
  cfg = Config(model=model_name, init_from=spec)
  try:
    base = train.build_model(cfg, {'num_classes': 1000})
    model, variables = init_lib.foreign_model(cfg, base)
  except (ConfigError, WeightsError) as e:
    raise ValueError(str(e)) from None
  if getattr(model, 'num_classes', None) is None:
    raise ValueError(f'{spec} has no classification head')
  path = pathlib.Path(os.path.expanduser(spec.split(':', 1)[1]))
  labels = None
  if spec.startswith('hf:'):
    id2label = json.loads((path / 'config.json').read_text()).get('id2label')
    if id2label:
      labels = [id2label[str(i)] for i in range(len(id2label))]
    from dlresearch.problems import hf_text  # pylint: disable=g-import-not-at-top
    tok = hf_text.load_tokenizer(path / 'tokenizer.json', 128)
    return Predictor(model, variables, labels, text_fn=lambda t: tuple(
        hf_text.encode(tok, t).values()))
  if model.num_classes == 1000 and (path.parent / imagenet.CLASS_NAMES_FILE).is_file():
    labels = imagenet.class_names(path.parent)
  return Predictor(model, variables, labels, image_fn=lambda p: imagenet.preprocess(
      _read_image(p, 'RGB')))
