"""Data kinds: from a config to what ``train.run`` trains on.

Every kind of data enters the engine the same way: a function registered
under ``--data_kind`` that takes ``(cfg, workdir, fresh)`` and returns a
``pipeline.Data`` (train and eval datasets, the task, the sizes the model
needs, eval hooks). ``fresh`` is False when the workdir already holds
checkpoints (resume, ``--eval_only``): artefacts a kind keeps in the workdir
(a tokenizer) are then loaded, never rebuilt.

Kinds:

- ``classification``: images or feature vectors with a class label from a
  TFDS dataset (``tasks.Classification``). With ``--audit_group=sex,...``
  the eval batches also carry those group columns (never passed to the
  model) and eval lines add per-group metrics and fairness gaps.
- ``lm``: next-token rows packed from the documents of ``--text_key``, each
  ended by ``<eos>`` (``tasks.LanguageModel``); ``--sample`` adds a sampled
  continuation to each eval.
- ``text_classification``: right-padded/truncated token ids with a mask and
  the label (``tasks.Classification``).
- ``seq2seq``: source/target pairs with one tokenizer built on both sides of
  train (``tasks.Seq2Seq``); training pairs that do not fit ``--max_len``
  are dropped; each eval adds BLEU/chrF/exact match of decoded translations.

A new kind is one function decorated with ``@register('name')``, here or in
a module ``dlresearch/data/kinds_*.py`` (imported on first use, like the
model registry's modules).
"""

import dataclasses
import functools
import importlib
import os
import pathlib
import pkgutil
from typing import Callable, Sequence

import jax
from absl import logging
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

from dlresearch import hooks, tasks
from dlresearch.config import Config, ConfigError
from dlresearch.data import datasets, pipeline, text
from dlresearch.models import registry

KindFn = Callable[[Config, str, bool], pipeline.Data]
_KINDS: dict[str, KindFn] = {}


def register(name: str):
  """Decorator: ``fn(cfg, workdir, fresh) -> pipeline.Data`` as kind ``name``."""

  def wrap(fn):
    if name in _KINDS:
      raise ValueError(f'data kind {name!r} is registered twice')
    _KINDS[name] = fn
    return fn

  return wrap


@functools.cache
def _import_all() -> None:
  """Imports ``dlresearch/data/kinds_*.py``: their decorators register."""
  import dlresearch.data as pkg  # pylint: disable=g-import-not-at-top
  for info in pkgutil.iter_modules(pkg.__path__):
    if info.name.startswith('kinds_'):
      importlib.import_module(f'dlresearch.data.{info.name}')


def names() -> list[str]:
  _import_all()
  return sorted(_KINDS)


def build(cfg: Config, workdir: str, fresh: bool = True) -> pipeline.Data:
  """The data of ``cfg.data_kind`` (see the module docstring)."""
  _import_all()
  if cfg.data_kind not in _KINDS:
    raise ConfigError('data_kind', f'unknown data kind {cfg.data_kind!r}; '
                      f'known: {", ".join(names())}')
  data = _KINDS[cfg.data_kind](cfg, workdir, fresh)
  if cfg.num_train_examples:
    data.train = train_subset(data.train, cfg.num_train_examples, cfg.seed,
                              getattr(data.task, 'label_key', None))
  return data


# ---------------------------------------------------------------------------
# --num_train_examples: a stratified, seeded subset of the train split.


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """``n`` indices whose class counts are proportional to ``labels``'.

  Each class gets ``floor(n * share)``; the examples left over go to the
  classes with the largest remainders (ties: the lower class). Examples are
  drawn without replacement by a NumPy generator seeded with ``seed``; the
  result is sorted.
  """
  labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
  classes, counts = np.unique(labels, return_counts=True)
  exact = n * counts / counts.sum()
  take = np.floor(exact).astype(int)
  order = np.lexsort((classes, -(exact - take)))
  take[order[:n - take.sum()]] += 1
  rng = np.random.default_rng([seed, n])
  out = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
         for c, k in zip(classes, take)]
  return np.sort(np.concatenate(out))


def train_subset(ds, n: int, seed: int, label_key: str | None):
  """``n`` examples of ``ds``, stratified by ``label_key`` when there is one."""
  if n > ds.num_examples:
    raise ConfigError('num_train_examples', f'{n} is more than the train '
                      f'split holds ({ds.num_examples} examples)')
  if isinstance(ds, pipeline.ArrayDataset):
    labels = ds.arrays.get(label_key) if label_key else None
  else:
    labels = (np.asarray([ds.source[i][label_key] for i in range(ds.num_examples)])
              if label_key else None)
  if labels is None:
    idx = np.sort(np.random.default_rng([seed, n]).choice(
        ds.num_examples, n, replace=False))
  else:
    idx = stratified_indices(labels, n, seed)
  logging.info('train subset: %d of %d examples (seed %d)', n,
               ds.num_examples, seed)
  if isinstance(ds, pipeline.ArrayDataset):
    return dataclasses.replace(ds, arrays={k: v[idx] for k, v in
                                           ds.arrays.items()})
  return dataclasses.replace(ds, source=_Indexed(ds.source, idx))


@dataclasses.dataclass(frozen=True)
class _Indexed:
  """The examples ``indices`` of a random-access source."""

  source: object
  indices: np.ndarray

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


def model_sizes(cfg: Config, **sizes) -> dict:
  """The data-given sizes (``vocab_size``, ``max_len``, ...) the model takes."""
  try:
    accepted = registry.fields(cfg.model)
  except KeyError as e:
    raise ConfigError('model', str(e).strip('"')) from None
  return {k: v for k, v in sizes.items() if k in accepted}


def _dirs(cfg: Config) -> tuple[str, str | None]:
  data_dir = os.path.expanduser(cfg.data_dir)
  return data_dir, os.path.expanduser(cfg.manual_dir) if cfg.manual_dir else None


# ---------------------------------------------------------------------------
# Images and feature vectors.


@register('classification')
def classification(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Image/feature classification from a TFDS dataset named by ``cfg``."""
  del workdir, fresh
  data_dir, manual_dir = _dirs(cfg)
  info = datasets.dataset_info(cfg.dataset, data_dir, manual_dir)
  default_eval = ('validation' if 'validation' in info.splits
                  else info.eval_split)
  splits = {'train': cfg.train_split or info.train_split,
            'eval': cfg.eval_split or default_eval}
  splits['test'] = test_split_name(cfg, splits['eval'], info.splits,
                                   info.eval_split != 'validation')
  for flag, split in (('train_split', splits['train']),
                      ('eval_split', splits['eval']),
                      ('test_split', splits['test'] or '')):
    if split and info.splits and split.split('[')[0] not in info.splits:
      raise ConfigError(flag, f'{cfg.dataset} has no split {split!r}; it has '
                        f'{", ".join(sorted(info.splits))}')
  key = info.input_key
  is_image = key == 'image'
  if is_image and info.input_shape is None and not cfg.image_size:
    raise ConfigError('image_size', f'{cfg.dataset} has images of varying '
                      'size: set --image_size (e.g. 224)')
  if cfg.pipeline == 'auto':
    nbytes = (np.prod(info.input_shape) * info.splits.get(splits['train'], 0)
              if info.input_shape is not None else np.inf)
    in_memory = nbytes <= pipeline.MEMORY_LIMIT_BYTES
  else:
    in_memory = cfg.pipeline == 'memory'
  if in_memory and info.input_shape is None:
    raise ConfigError('pipeline', f'{cfg.dataset} has images of varying size '
                      'and cannot be held in memory; use --pipeline=grain')
  keys = (key, info.label_key)
  groups = audit_groups(cfg, splits['eval'], key, info.label_key)

  def make(split, train):
    keys_ = keys if train else keys + tuple(g for g, _ in groups)
    example_fn = (pipeline.image_example_fn(cfg.augment, cfg.image_size, train,
                                            key) if is_image else None)
    batch_fn = (pipeline.image_batch_fn(cfg.normalize, key) if is_image else
                (lambda b: {**b, key: b[key].astype(np.float32)}))
    if in_memory:
      arrays = datasets.load_in_memory(cfg.dataset, split, data_dir, manual_dir)
      return pipeline.ArrayDataset({k: arrays[k] for k in keys_}, example_fn,
                                   batch_fn)
    source = datasets.get_source(cfg.dataset, split, data_dir, manual_dir)
    return pipeline.SourceDataset(source, example_fn, batch_fn, keys_)

  task = tasks.Classification(input_key=key, label_key=info.label_key,
                              loss=cfg.loss, label_smoothing=cfg.label_smoothing,
                              groups=groups)
  # Every split gets the same input transforms (the test split at the end
  # included): channel repeat, then the fixed pixel permutation.
  sets = [make(splits['train'], True), make(splits['eval'], False),
          make(splits['test'], False) if splits['test'] else None]
  if cfg.image_channels:
    if not is_image:
      raise ConfigError('image_channels', f'{cfg.dataset} has no images')
    sets = [d if d is None else repeat_channels(d, key, cfg.image_channels)
            for d in sets]
  if cfg.shuffle_spatial:
    if info.input_shape is None:
      raise ConfigError('shuffle_spatial', f'{cfg.dataset} has inputs of '
                        'varying size')
    perm = spatial_permutation(info.input_shape[0])
    sets = [d if d is None else permute_positions(d, key, perm) for d in sets]
  train, evals, test = sets
  return pipeline.Data(train, evals, task, {'num_classes': info.num_classes},
                       use_grain=not in_memory, eval_split=splits['eval'],
                       test=test, test_split=splits['test'] or '',
                       label_names=datasets.label_names(cfg.dataset, data_dir,
                                                        manual_dir))


def test_split_name(cfg: Config, eval_split: str, available, test_labelled=True
                    ) -> str | None:
  """The split evaluated once at the end: ``--test_split``, else ``test``
  when the dataset has a labelled one and periodic evals use another."""
  if cfg.test_split == 'none':
    return None
  if cfg.test_split:
    return cfg.test_split
  if test_labelled and 'test' in available and eval_split != 'test':
    return 'test'
  return None


def audit_groups(cfg: Config, split: str, input_key: str, label_key: str
                 ) -> tuple[tuple[str, tuple[str, ...]], ...]:
  """``((column, group names), ...)`` of ``--audit_group`` on ``split``.

  A ClassLabel column gives its names; an integer column the names '0' ..
  'max' (its largest value in ``split``). Raises ``ConfigError``
  (``audit_group``) for a missing column, the model input or label, or a
  column of another kind.
  """
  wanted = [k.strip() for k in cfg.audit_group.split(',') if k.strip()]
  if not wanted:
    return ()
  data_dir, manual_dir = _dirs(cfg)
  source = datasets.get_source(cfg.dataset, split, data_dir, manual_dir)
  info = getattr(source, 'dataset_info', None)
  features = info.features if info is not None else {}
  out = []
  for name in dict.fromkeys(wanted):
    if name not in features:
      raise ConfigError('audit_group', f'{cfg.dataset} has no column {name!r}; '
                        f'its columns: {", ".join(features.keys())}')
    if name in (input_key, label_key):
      raise ConfigError('audit_group', f'{name!r} is the model input or label, '
                        'not a group column')
    feature = features[name]
    if isinstance(feature, tfds.features.ClassLabel):
      out.append((name, tuple(feature.names)))
      continue
    dtype = np.dtype(getattr(feature, 'np_dtype', np.float32))
    if feature.shape != () or not np.issubdtype(dtype, np.integer):
      raise ConfigError('audit_group', f'column {name!r} is {feature!r}; a '
                        'group column is a ClassLabel or an integer scalar')
    values = np.asarray(text.read_column(source, name))
    out.append((name, tuple(str(i) for i in range(int(values.max()) + 1))))
  return tuple(out)


def repeat_channels(ds, key: str, channels: int):
  """``ds`` with single-channel images repeated to ``channels`` (before the
  normalisation, so e.g. grey Fashion-MNIST becomes grey RGB for ImageNet
  models)."""
  inner = ds.batch_fn

  def batch_fn(batch):
    x = batch[key]
    if x.shape[-1] != channels:
      if x.shape[-1] != 1:
        raise ConfigError('image_channels', f'images have {x.shape[-1]} '
                          f'channels; only 1 can be repeated to {channels}')
      x = np.repeat(x, channels, axis=-1)
    batch = {**batch, key: x}
    return inner(batch) if inner else batch

  return dataclasses.replace(ds, batch_fn=batch_fn)


SHUFFLE_SEED = 0  # --shuffle_spatial's permutation, the same for every run


def spatial_permutation(length: int) -> np.ndarray:
  """The fixed permutation of the positions used by ``--shuffle_spatial``."""
  return np.random.default_rng(SHUFFLE_SEED).permutation(length)


def permute_positions(ds, key: str, perm: np.ndarray):
  """``ds`` with ``x[:, perm]`` in every batch."""
  inner = ds.batch_fn

  def batch_fn(batch):
    batch = inner(batch) if inner else batch
    return {**batch, key: batch[key][:, perm]}

  return dataclasses.replace(ds, batch_fn=batch_fn)


# ---------------------------------------------------------------------------
# Text: reading TFDS text columns, the workdir's tokenizer.


def _register_wmt(name: str) -> None:
  """TFDS registers its WMT builders only when their module is imported."""
  base = name.split('/')[0].split(':')[0]
  if base.startswith('wmt') and base.endswith('_translate'):
    try:
      __import__(f'tensorflow_datasets.translate.{base[:-len("_translate")]}')
    except ImportError:
      pass


def open_split(cfg: Config, train: bool):
  """``(split name, source)``: ``--train_split``/``--eval_split`` or defaults.

  Default eval split (periodic evals, model selection): ``validation``,
  else ``test``.
  """
  _register_wmt(cfg.dataset)
  data_dir, manual_dir = _dirs(cfg)
  if train or cfg.eval_split:
    split = (cfg.train_split or 'train') if train else cfg.eval_split
    return split, datasets.get_source(cfg.dataset, split, data_dir, manual_dir)
  try:
    return 'validation', datasets.get_source(cfg.dataset, 'validation',
                                             data_dir, manual_dir)
  except ValueError as e:
    if 'Unknown split' not in str(e):
      raise
    return 'test', datasets.get_source(cfg.dataset, 'test', data_dir,
                                       manual_dir)


def open_test(cfg: Config, eval_split: str):
  """``(split name, source)`` of the split evaluated at the end, or None."""
  if cfg.test_split == 'none' or (not cfg.test_split and eval_split == 'test'):
    return None
  data_dir, manual_dir = _dirs(cfg)
  split = cfg.test_split or 'test'
  try:
    return split, datasets.get_source(cfg.dataset, split, data_dir, manual_dir)
  except ValueError as e:
    if cfg.test_split or 'Unknown split' not in str(e):
      raise
    return None


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


# ---------------------------------------------------------------------------
# Text kinds.


@register('lm')
def lm(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Packed next-token rows; ``bits_per_char`` with the char tokenizer."""
  _, train_src = open_split(cfg, train=True)
  train_texts = read_columns(cfg, train_src, ['text_key'])[cfg.text_key]
  tok = workdir_tokenizer(cfg, workdir, fresh, lambda: train_texts)
  eval_name, eval_src = open_split(cfg, train=False)

  def rows(source):
    texts = read_columns(cfg, source, ['text_key'])[cfg.text_key]
    return compact(text.lm_arrays(texts, tok, cfg.seq_len), tok.vocab_size)

  train = compact(text.lm_arrays(train_texts, tok, cfg.seq_len), tok.vocab_size)
  evals = rows(eval_src)
  test = open_test(cfg, eval_name)
  bits = 'bits_per_char' if cfg.tokenizer == 'char' else 'bits_per_token'
  task = tasks.LanguageModel(bits_name=bits, label_smoothing=cfg.label_smoothing)
  sizes = model_sizes(cfg, vocab_size=tok.vocab_size, max_len=cfg.seq_len)
  data = pipeline.Data(train, evals, task, sizes, tokenizer=tok,
                       eval_split=eval_name,
                       test=rows(test[1]) if test else None,
                       test_split=test[0] if test else '')
  if cfg.sample:
    data.eval_hooks.append(hooks.sample_hook(cfg, tok, sizes.get('max_len')))
  return data


@register('text_classification')
def text_classification(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Padded (``max_len``) token ids, a padding mask and the label."""
  fields = ('text_key', 'label_key')
  _, train_src = open_split(cfg, train=True)
  train_cols = read_columns(cfg, train_src, fields)
  tok = workdir_tokenizer(cfg, workdir, fresh,
                          lambda: train_cols[cfg.text_key])
  eval_name, eval_src = open_split(cfg, train=False)
  eval_cols = read_columns(cfg, eval_src, fields)
  test = open_test(cfg, eval_name)
  classes = num_classes(train_src, cfg.label_key, train_cols[cfg.label_key])

  def arrays(cols, name):
    out = text.classification_arrays(cols[cfg.text_key], cols[cfg.label_key],
                                     tok, cfg.max_len)
    logging.info('%s: %d examples, %.1f%% cut at max_len=%d', name,
                 len(out['label']), 100 * np.mean(out['mask'][:, -1]),
                 cfg.max_len)
    return compact(out, tok.vocab_size)

  task = tasks.Classification(input_key='inputs', label_key='label',
                              mask_key='mask', loss=cfg.loss,
                              label_smoothing=cfg.label_smoothing)
  sizes = model_sizes(cfg, vocab_size=tok.vocab_size, num_classes=classes,
                      max_len=cfg.max_len)
  return pipeline.Data(
      arrays(train_cols, 'train'), arrays(eval_cols, eval_name), task, sizes,
      tokenizer=tok, eval_split=eval_name,
      test=(arrays(read_columns(cfg, test[1], fields), test[0]) if test
            else None),
      test_split=test[0] if test else '')


@register('seq2seq')
def seq2seq(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Source/target ids; the eval adds BLEU of the decoded translations.

  Training pairs whose source or target (with ``<eos>``) exceeds ``max_len``
  are dropped; eval pairs are kept (truncated), and BLEU is scored against
  the untouched reference text.
  """
  fields = ('source_key', 'target_key')
  _, train_src = open_split(cfg, train=True)
  train_cols = read_columns(cfg, train_src, fields)
  tok = workdir_tokenizer(
      cfg, workdir, fresh,
      lambda: train_cols[cfg.source_key] + train_cols[cfg.target_key])
  eval_name, eval_src = open_split(cfg, train=False)
  eval_cols = read_columns(cfg, eval_src, fields)
  test = open_test(cfg, eval_name)
  n = cfg.max_len
  train = text.translation_arrays(train_cols[cfg.source_key],
                                  train_cols[cfg.target_key], tok, n + 1)
  fits = ~train['inputs_mask'][:, n] & ~train['targets_mask'][:, n]
  logging.info('train: %d of %d pairs fit max_len=%d', fits.sum(), fits.size, n)
  if not fits.any():
    raise ConfigError('max_len', f'no training pair fits in {n} tokens')
  train = {k: v[fits, :n] for k, v in train.items()}
  evals = text.translation_arrays(eval_cols[cfg.source_key],
                                  eval_cols[cfg.target_key], tok, n)
  task = tasks.Seq2Seq(label_smoothing=cfg.label_smoothing)
  sizes = model_sizes(cfg, vocab_size=tok.vocab_size, max_len=n)
  test_arrays = None
  if test:  # teacher-forced metrics only; BLEU is computed on the eval split
    cols = read_columns(cfg, test[1], fields)
    test_arrays = compact(text.translation_arrays(
        cols[cfg.source_key], cols[cfg.target_key], tok, n), tok.vocab_size)
  data = pipeline.Data(compact(train, tok.vocab_size),
                       compact(evals, tok.vocab_size), task, sizes,
                       tokenizer=tok, eval_split=eval_name, test=test_arrays,
                       test_split=test[0] if test else '')
  data.eval_hooks.append(hooks.translation_hook(
      cfg, workdir, tok, evals, eval_cols[cfg.source_key],
      eval_cols[cfg.target_key]))
  return data
