"""A finished run's data and predictions, as the audit/explain/monitor tools
read them.

Each tool takes a restored run (``dlresearch.restore(workdir)``), rebuilds
the run's data with its data kind (the same preprocessing as in training;
text runs use the workdir's tokenizer): ``split_data`` gives a split as the
run's task sees it (with its group columns), ``predict`` the logits (and
columns, embeddings) of its rows.

Groups and the positive class: group columns must be ClassLabel or integer
features of the dataset (``--audit_group``'s rule); the positive class is 1
(the ``score`` is its probability).
"""

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dlresearch.config import ConfigError
from dlresearch import problems
from dlresearch.data import datasets
from dlresearch.rai import audit

POS_LABEL = 1
EVAL_BATCH = 256


@dataclasses.dataclass
class SplitData:
  """A split as the run's task sees it, with its group columns."""

  dataset: Any  # pipeline.Dataset of model-ready batches
  task: Any
  groups: tuple  # ((column, names), ...)
  train: Any  # the training split (pipeline.Dataset)


def split_data(run, split: str = '', group_keys: Sequence[str] = ()
               ) -> SplitData:
  """The run's data kind built for ``split`` (default: its eval split)."""
  cfg = run.config.replace(eval_only=True, audit_group=','.join(group_keys))
  if split:
    cfg = cfg.replace(eval_split=split)
  if group_keys and cfg.data_kind != 'classification':
    raise ConfigError('group_key', f'group columns need data kind '
                      f'classification; this run is {cfg.data_kind}')
  data = problems.build(cfg, run.workdir, fresh=False)
  groups = getattr(data.task, 'groups', ())
  return SplitData(data.eval, data.task, groups, data.train)


def inputs(task, batch):
  return task.model_inputs(batch)


def predict(run, dataset, task, *, rows: np.ndarray | None = None,
            embeddings: bool = False) -> dict[str, np.ndarray]:
  """Logits (and columns) of every example of ``dataset`` (or ``rows``).

  Returns ``{'logits' [N, C], 'label' [N], group columns [N], 'inputs'
  [N, ...] (model input), 'embedding' [N, D] when asked}``.
  """
  n = dataset.num_examples
  rows = np.arange(n) if rows is None else np.asarray(rows)
  out = {}
  apply = None
  if embeddings:
    apply = jax.jit(lambda v, args, kwargs: run.model.apply(
        v, *args, train=False, return_features=True, **kwargs))
  for start in range(0, len(rows), EVAL_BATCH):
    idx = rows[start:start + EVAL_BATCH]
    real = len(idx)
    idx = np.concatenate([idx, np.repeat(idx[:1], EVAL_BATCH - real)])
    batch = dataset.get(idx, None)
    args, kwargs = inputs(task, batch)
    if embeddings:
      logits, feats = apply(run.variables, args, kwargs)
      cols = {'logits': logits, 'embedding': np.asarray(
          feats['pre_logits']).reshape(EVAL_BATCH, -1)}
    else:
      cols = {'logits': run.predict(*args, **kwargs)}
    cols['inputs'] = args[0]
    cols.update({k: v for k, v in batch.items() if k != task.input_key})
    for k, v in cols.items():
      out.setdefault(k, []).append(np.asarray(v)[:real])
  return {k: np.concatenate(v) for k, v in out.items()}


def softmax(logits: np.ndarray) -> np.ndarray:
  return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1),
                    np.float64)


def named(ids: np.ndarray, names: Sequence[str]) -> np.ndarray:
  return np.asarray(names, dtype=object)[np.asarray(ids, np.int64)]


def feature_names(cfg, dim: int) -> list[str]:
  """The dataset's feature names if it has ``dim`` of them, else f0, f1, ..."""
  try:
    source = datasets.get_source(cfg.dataset, cfg.train_split or 'train',
                                 os.path.expanduser(cfg.data_dir),
                                 cfg.manual_dir or None)
    names = list(source.dataset_info.metadata.get('feature_names', []))
  except (AttributeError, ValueError, TypeError):
    names = []
  return names if len(names) == dim else [f'f{i}' for i in range(dim)]


def write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(audit.jsonable(obj), indent=1, allow_nan=False)
                 + '\n')
  os.replace(tmp, path)


def step_arg(text: str) -> int | str | None:
  """A ``--step`` flag: '' -> latest (None), 'best', or an int."""
  if not text:
    return None
  if text == 'best':
    return text
  try:
    return int(text)
  except ValueError:
    raise ConfigError('step', f"expected a step number or 'best' (got "
                      f'{text!r})') from None


