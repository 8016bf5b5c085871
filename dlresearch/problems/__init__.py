"""Problems: from a config to what ``train.run`` trains on.

Every problem enters the engine the same way: a function registered under
``--data_kind`` that takes ``(cfg, workdir, fresh)`` and returns a
``pipeline.Data`` (train and eval datasets, the task, the sizes the model
needs, eval hooks). ``fresh`` is False when the workdir already holds
checkpoints (resume, ``--eval_only``): artefacts a problem keeps in the
workdir (a tokenizer) are then loaded, never rebuilt.

Problems of the engine, one file each in ``dlresearch/problems/``:
``classification`` (images or feature vectors from TFDS), ``lm``,
``text_classification``, ``seq2seq`` and ``hf_text_classification``
(``hf_text.py``). Applications register theirs in
``dlresearch/apps/<name>/problem.py`` (``anomaly``, ``ratings``,
``retrieval``). Splits are picked one way for all of them
(``problems.splits``).

A new problem is one function decorated with ``@problems.register('name')``
in a new ``dlresearch/problems/<name>.py`` or an application's
``problem.py``. Both are found by scanning on first use (like the model
registry's modules), so the engine never imports an application.
"""

import functools
import importlib
import os
import pathlib
import pkgutil
from typing import Callable

from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline, subset
from dlresearch.models import registry

ProblemFn = Callable[[Config, str, bool], pipeline.Data]
_PROBLEMS: dict[str, ProblemFn] = {}
APPS = pathlib.Path(__file__).resolve().parents[1] / 'apps'


def register(name: str):
  """Decorator: ``fn(cfg, workdir, fresh) -> pipeline.Data`` as ``name``."""

  def wrap(fn):
    if name in _PROBLEMS:
      raise ValueError(f'data kind {name!r} is registered twice')
    _PROBLEMS[name] = fn
    return fn

  return wrap


@functools.cache
def _import_all() -> None:
  """Imports ``problems/*.py`` and ``apps/*/problem.py``: they register."""
  for info in pkgutil.iter_modules(__path__):
    importlib.import_module(f'{__name__}.{info.name}')
  for info in pkgutil.iter_modules([str(APPS)]):
    if info.ispkg and (APPS / info.name / 'problem.py').is_file():
      importlib.import_module(f'dlresearch.apps.{info.name}.problem')


def names() -> list[str]:
  """Every registered ``--data_kind``."""
  _import_all()
  return sorted(_PROBLEMS)


def build(cfg: Config, workdir: str, fresh: bool = True) -> pipeline.Data:
  """The data of ``cfg.data_kind`` (see the module docstring).

  With ``--num_train_examples`` the train split is cut to a seeded subset,
  stratified by the task's label when it has one (``data.subset``).
  """
  _import_all()
  if cfg.data_kind not in _PROBLEMS:
    raise ConfigError('data_kind', f'unknown data kind {cfg.data_kind!r}; '
                      f'known: {", ".join(names())}')
  data = _PROBLEMS[cfg.data_kind](cfg, workdir, fresh)
  if cfg.num_train_examples:
    data.train = subset.train_subset(data.train, cfg.num_train_examples,
                                     cfg.seed,
                                     getattr(data.task, 'label_key', None))
  return data


def model_sizes(cfg: Config, **sizes) -> dict:
  """The data-given sizes (``vocab_size``, ``max_len``, ...) the model takes."""
  try:
    accepted = registry.fields(cfg.model)
  except KeyError as e:
    raise ConfigError('model', str(e).strip('"')) from None
  return {k: v for k, v in sizes.items() if k in accepted}


def dirs(cfg: Config) -> tuple[str, str | None]:
  """``(data_dir, manual_dir or None)`` of ``cfg``, ``~`` expanded."""
  data_dir = os.path.expanduser(cfg.data_dir)
  return data_dir, os.path.expanduser(cfg.manual_dir) if cfg.manual_dir else None
