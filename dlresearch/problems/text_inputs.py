"""What the text problems share: their splits, columns and tokenizer.

``text_splits`` picks the splits the one way (``problems.splits``) from the
dataset's split names; ``read_columns`` reads the columns that config
fields name; ``workdir_tokenizer`` is the run's tokenizer, kept in the
workdir; ``compact`` holds token ids as uint16 when they fit.
"""

import os
import pathlib
from typing import Callable, Sequence

import jax
from absl import logging
from jax.experimental import multihost_utils
import numpy as np

from dlresearch import problems
from dlresearch.config import Config, ConfigError
from dlresearch.data import datasets, pipeline, text
from dlresearch.problems import splits as splits_lib


def _register_wmt(name: str) -> None:
  """TFDS registers its WMT builders only when their module is imported."""
  base = name.split('/')[0].split(':')[0]
  if base.startswith('wmt') and base.endswith('_translate'):
    try:
      __import__(f'tensorflow_datasets.translate.{base[:-len("_translate")]}')
    except ImportError:
      pass


def text_splits(cfg: Config) -> splits_lib.Splits:
  """The train, eval and test split names of ``cfg.dataset``."""
  _register_wmt(cfg.dataset)
  data_dir, manual_dir = problems.dirs(cfg)
  return splits_lib.pick(cfg, datasets.split_sizes(cfg.dataset, data_dir,
                                                   manual_dir))


def open_source(cfg: Config, split: str):
  """A random-access source over ``split`` of ``cfg.dataset``."""
  data_dir, manual_dir = problems.dirs(cfg)
  return datasets.get_source(cfg.dataset, split, data_dir, manual_dir)


def read_columns(cfg: Config, source, fields: Sequence[str]) -> dict:
  """The features that config ``fields`` (e.g. ``text_key``) name.

  Text comes back as lists of str, labels as arrays; a feature the dataset
  lacks is a ``ConfigError`` naming the field's flag.
  """
  out = {}
  for field in fields:
    key = getattr(cfg, field)
    try:
      out[key] = text.read_column(source, key)
    except KeyError as e:
      raise ConfigError(field, str(e).strip('"')) from None
  return out


def num_classes(source, label_key: str, labels: np.ndarray) -> int:
  """From the ClassLabel feature when known, else the largest label + 1."""
  info = getattr(source, 'dataset_info', None)
  feature = info.features[label_key] if info is not None else None
  if feature is not None and hasattr(feature, 'num_classes'):
    return int(feature.num_classes)
  return int(np.max(labels)) + 1


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def workdir_tokenizer(cfg: Config, workdir: str, fresh: bool,
                      train_texts: Callable[[], Sequence[str]]):
  """The run's tokenizer, kept in ``workdir``.

  Resume / ``--eval_only`` (``fresh`` False): the saved file, never rebuilt.
  A fresh run: the tokenizer of the ``--init_from`` run if it has one, else
  one of ``--tokenizer`` built from ``train_texts()`` (on process 0; the
  others wait and load the file). A fresh run always replaces a tokenizer
  left in the workdir by an earlier attempt that never checkpointed.
  """
  path = text.tokenizer_file(workdir, cfg.tokenizer)
  if not fresh:
    saved = text.find_saved_tokenizer(workdir)
    if saved is None or saved.parent != pathlib.Path(workdir):
      raise ConfigError('eval_only' if cfg.eval_only else 'tokenizer',
                        f'no tokenizer in {workdir}: it is written by the '
                        'training run whose checkpoints it holds')
    found = text.saved_kind(saved)
    if found != cfg.tokenizer:
      raise ConfigError('tokenizer', f'{saved} holds a {found} tokenizer but '
                        f'--tokenizer={cfg.tokenizer}; use '
                        f'--tokenizer={found} or a new --workdir')
    return text.load_tokenizer(saved)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    source = text.find_saved_tokenizer(cfg.init_from) if cfg.init_from else None
    if source is not None:
      found = text.saved_kind(source)
      if found != cfg.tokenizer:
        raise ConfigError('tokenizer', f'--init_from {cfg.init_from} has a '
                          f'{found} tokenizer; use --tokenizer={found}')
      tok = text.load_tokenizer(source)
    else:
      tok = text.build_tokenizer(cfg.tokenizer, cfg.vocab_size, train_texts())
    text._write_atomic(tok, path)  # pylint: disable=protected-access
    logging.info('Tokenizer (%s, vocabulary %d) in %s.', cfg.tokenizer,
                 tok.vocab_size, path)
  _sync('dlresearch_tokenizer')
  return text.load_tokenizer(path)


ID_KEYS = ('inputs', 'targets', 'targets_in')


def compact(arrays: dict[str, np.ndarray], vocab_size: int) -> pipeline.ArrayDataset:
  """An ``ArrayDataset`` holding token ids as uint16 when they fit.

  Its ``batch_fn`` widens them back to int32, so batches look the same.
  """
  if vocab_size <= np.iinfo(np.uint16).max + 1:
    arrays = {k: v.astype(np.uint16) if k in ID_KEYS else v
              for k, v in arrays.items()}

  def widen(batch):
    return {k: v.astype(np.int32) if v.dtype == np.uint16 else v
            for k, v in batch.items()}

  return pipeline.ArrayDataset(arrays, batch_fn=widen)
