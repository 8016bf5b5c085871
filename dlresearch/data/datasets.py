"""TFDS datasets by name, read without TensorFlow as random-access sources.

`get_source(name, split, data_dir)` returns `tfds.data_source`-style random
access over ArrayRecord files: `len(source)`, `source[i]` -> dict of numpy
values (scalar labels may come back as Python ints), `source.__getitems__`.

* The offline builders in `OFFLINE_BUILDERS` (registered with TFDS when this
  module is imported) are prepared into `data_dir` on first use, on JAX
  process 0 only, while the other processes wait.
* ``image_folder:PATH`` (``builders/image_folder.py``): your own images, one
  sub-folder per class, prepared once the same way, refused when the folder
  changed since; its images are decoded per example when read.
* Any other TFDS dataset must already be prepared in `data_dir` in the
  `array_record` format; preparing official datasets such as `imagenet2012`
  needs TensorFlow, so it is done elsewhere and the files are copied over
  (`DatasetNotFoundError` says how). A dataset mocked by
  `tfds.testing.mock_data` also counts as available.

Images stored JPEG/PNG-encoded (`tfds.features.Image`, e.g. imagenet2012)
are decoded by TFDS's NumPy path with PIL (OpenCV when installed): each
example's image arrives as a uint8 [H, W, C] array, grayscale JPEGs expanded
to the feature's channel count. No TensorFlow is involved.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import glob
import gzip
import hashlib
import os
import pathlib
import subprocess
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import decode as tfds_decode
from tensorflow_datasets.core import example_parser

from dlresearch.data import fetch

# Importing the builder modules registers them with TFDS.
# pylint: disable=unused-import
from dlresearch.data import names
from dlresearch.data.builders import adult
from dlresearch.data.builders import compas
from dlresearch.data.builders import digits
from dlresearch.data.builders import fashion_mnist_local
from dlresearch.data.builders import german_credit
from dlresearch.data.builders import image_folder
from dlresearch.data.builders import mnist1d
from dlresearch.data.builders import number_words
from dlresearch.data.builders import rotten_tomatoes
from dlresearch.data.builders import shakespeare
from dlresearch.data.builders import text_files
# pylint: enable=unused-import

OFFLINE_BUILDERS = names.OFFLINE_BUILDERS

# Manual directories used when `manual_dir` is not given.
DEFAULT_MANUAL_DIRS = {
    'fashion_mnist_local': fashion_mnist_local.DEFAULT_MANUAL_DIR,
}

# Datasets whose 'test' split has no labels: evaluate on 'validation'.
_UNLABELED_TEST_SPLIT = ('imagenet2012',)

# sha256 of the decompressed IDX files in Debian's dataset-fashion-mnist
# 0.0~git20200523.55506a9-1 (checked on the payload, not the .gz wrapper,
# which changes if the files are recompressed).
FASHION_MNIST_SHA256 = {
    'train-images-idx3-ubyte.gz':
        'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
    'train-labels-idx1-ubyte.gz':
        'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
    't10k-images-idx3-ubyte.gz':
        '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
    't10k-labels-idx1-ubyte.gz':
        '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
}

_READ_CHUNK = 8192


class DatasetNotFoundError(ValueError):
  """The dataset is neither prepared in `data_dir` nor buildable here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a training pipeline needs to know about a classification dataset.

  Attributes:
    name: TFDS name.
    input_key: feature holding the model input ('image', 'x', or the first
      non-label feature).
    label_key: feature holding the class label.
    num_classes: number of classes.
    input_shape: shape of one input, None when it varies between examples.
    splits: split name -> number of examples. Empty when TFDS does not know
      the sizes (a dataset mocked by `tfds.testing.mock_data`).
    train_split: split to train on.
    eval_split: split to evaluate on ('test', else 'validation').
  """

  name: str
  input_key: str
  label_key: str
  num_classes: int
  input_shape: tuple[int, ...] | None
  splits: Mapping[str, int]
  train_split: str
  eval_split: str


def _base_name(name: str) -> str:
  return name.split(':')[0].split('/')[0]


def _not_found(name: str, data_dir: str) -> DatasetNotFoundError:
  try:
    tfds.builder_cls(_base_name(name))
  except tfds.core.registered.DatasetNotFoundError:
    return DatasetNotFoundError(
        f'--dataset: unknown dataset {name!r} (not prepared in {data_dir} and '
        f'not a registered TFDS dataset); offline ones: '
        f'{", ".join(OFFLINE_BUILDERS)}')
  return DatasetNotFoundError(names.not_prepared(name, data_dir))


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _not_found(name, data_dir) from e


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  """``builder.is_prepared()`` without TFDS's warning "Variant folder ... has
  no dataset_info.json" for a dataset that is simply not prepared yet."""
  return os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json'))


def _prepare_quietly(builder: tfds.core.DatasetBuilder, **kwargs) -> None:
  """``download_and_prepare`` of a local builder, without TFDS's "Downloading
  and preparing dataset Unknown size ..." and "downloaded and prepared" lines
  (nothing is downloaded; our own lines say what happens)."""
  builder._log_download_bytes = lambda: None  # pylint: disable=protected-access
  builder._log_download_done = lambda: None  # pylint: disable=protected-access
  builder.download_and_prepare(**kwargs)


def _prepare(name: str, data_dir: str, manual_dir: str | None) -> None:
  """Prepares an offline builder on process 0; other processes wait."""
  manual_dir = manual_dir or DEFAULT_MANUAL_DIRS.get(_base_name(name))
  try:
    if jax.process_index() == 0:
      start = time.monotonic()
      builder = _builder(name, data_dir)
      logging.info('Preparing %s once, from local files (no download): '
                   'writing its splits to %s', name, builder.data_dir)
      _prepare_quietly(
          builder, file_format='array_record',
          download_config=tfds.download.DownloadConfig(
              manual_dir=manual_dir, try_download_gcs=False
          ),
      )
      sizes = ', '.join(f'{k} {v.num_examples:,}' for k, v in
                        _builder(name, data_dir).info.splits.items())
      logging.info('Prepared %s (%s examples) in %.1f s.', name, sizes,
                   time.monotonic() - start)
  finally:
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'dlresearch_prepare_{name}')


def _check_manual_files(name: str, data_dir: str,
                        manual_dir: str | None) -> None:
  """One line naming the fix when a builder's raw files are missing.

  Checked before TFDS creates anything in ``data_dir``, and only while the
  dataset is not prepared there (no ``dataset_info.json`` yet): for
  Fashion-MNIST its IDX files, for the builders that read what
  ``python -m dlresearch.data.fetch NAME`` writes, a non-empty directory.
  """
  base = _base_name(name)
  if base not in OFFLINE_BUILDERS:
    return
  # NAME/VERSION/ or, for a builder with configs, NAME/CONFIG/VERSION/.
  prepared = glob.glob(os.path.join(glob.escape(os.path.expanduser(data_dir)),
                                    base, '**', 'dataset_info.json'), recursive=True)
  if prepared:
    return
  if base == 'fashion_mnist_local':
    directory = manual_dir or DEFAULT_MANUAL_DIRS[base]
    missing = fashion_mnist_local.missing_files(directory)
    if missing:
      raise DatasetNotFoundError(
          f'Fashion-MNIST files missing in {directory} ({", ".join(missing)}); '
          'fetch them once with: python -c "from dlresearch.data.datasets '
          "import fetch_fashion_mnist as f; print(f('$HOME/.cache/dlresearch/"
          "fashion-mnist'))\" and pass the printed directory as --manual_dir")
    return
  if base not in fetch.SOURCES:
    return
  directory = pathlib.Path(manual_dir) if manual_dir else fetch.default_dest(base)
  if not directory.is_dir() or not any(directory.iterdir()):
    raise DatasetNotFoundError(
        f'the raw files of {base} are not in {directory}; fetch them once '
        f'with: {fetch.command_line(base)} (or pass --manual_dir=DIR where '
        'they are)')


def _open_image_folder(name: str, data_dir: str) -> image_folder.ImageFolder:
  """``image_folder:PATH`` prepared (once, on process 0) and unchanged since."""
  try:
    listing = image_folder.scan(image_folder.folder_of(name))
    builder = image_folder.ImageFolder(listing, data_dir=data_dir)
    if _is_prepared(builder):
      image_folder.check_unchanged(builder, listing)
      return builder
    try:
      if jax.process_index() == 0:
        logging.info('Preparing %s (%d image files) in %s.', name,
                     listing.count, builder.data_dir)
        _prepare_quietly(
            builder, file_format='array_record',
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False))
        if builder.skipped:
          logging.warning('%s: skipped %d of %d files that are not readable '
                          'images (listed in %s/metadata.json)', name,
                          len(builder.skipped), listing.count, builder.data_dir)
    finally:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices('dlresearch_prepare_image_folder')
    builder = image_folder.ImageFolder(listing, data_dir=data_dir)
    if not _is_prepared(builder):
      raise DatasetNotFoundError(
          f'{name} is not prepared in {data_dir} after JAX process 0 prepared '
          'it: with several processes, data_dir must be a filesystem that all '
          'of them share (see process 0 log for errors)')
    return builder
  except image_folder.FolderError as e:
    raise DatasetNotFoundError(f'--dataset={name}: {e}') from None


def _open(
    name: str, data_dir: str, manual_dir: str | None
) -> tfds.core.DatasetBuilder:
  """A builder for `name` whose data is prepared (offline ones on demand).

  ``~`` in `data_dir` or `manual_dir` is the home directory, as on a shell
  line (a literal ``./~`` folder is never what a caller meant).
  """
  data_dir = os.path.expanduser(os.fspath(data_dir))
  manual_dir = manual_dir and os.path.expanduser(os.fspath(manual_dir))
  if name.startswith(image_folder.PREFIX):
    return _open_image_folder(name, data_dir)
  _check_manual_files(name, data_dir, manual_dir)
  builder = _builder(name, data_dir)
  if _base_name(name) in OFFLINE_BUILDERS and not _is_prepared(builder):
    _prepare(name, data_dir, manual_dir)
    builder = _builder(name, data_dir)  # Re-read the info written to disk.
    if jax.process_count() > 1 and not _is_prepared(builder):
      raise RuntimeError(
          f'{name!r} is still not prepared in {data_dir!r} after JAX process 0'
          ' prepared it: with several processes, data_dir must be a'
          ' filesystem that all of them share (see process 0 log for errors).'
      )
  return builder


def _check_split(builder: tfds.core.DatasetBuilder, split: str) -> None:
  splits = builder.info.splits
  if not splits:
    return  # Sizes unknown (mocked dataset): TFDS accepts any split.
  try:
    splits[split]
  except (KeyError, ValueError) as e:
    known = ', '.join(f'{k} ({v.num_examples})' for k, v in splits.items())
    raise ValueError(
        f'Unknown split {split!r} for dataset {builder.name!r}: available'
        f' splits are {known} (slices like "train[:90%]" work too).'
    ) from e


def _data_source(
    builder: tfds.core.DatasetBuilder, name: str, split: str, data_dir: str
):
  """`builder.as_data_source`, with a clear error when nothing is prepared."""
  if isinstance(builder, image_folder.ImageFolder):  # decoded per example
    return image_folder.ImageFolderSource(builder.as_data_source(
        split=split, decoders={'image': tfds.decode.SkipDecoding()}))
  try:
    return builder.as_data_source(split=split)
  except (ValueError, NotImplementedError) as e:
    if _is_prepared(builder):
      raise
    raise _not_found(name, data_dir) from e


def get_source(
    name: str, split: str, data_dir: str, manual_dir: str | None = None
) -> Sequence[dict[str, Any]]:
  """A random-access source over one split of TFDS dataset `name`.

  Args:
    name: TFDS name (`OFFLINE_BUILDERS` are prepared here when missing).
    split: split name or TFDS slice ('train', 'test', 'train[:90%]').
    data_dir: TFDS data directory.
    manual_dir: manual directory for preparing an offline builder (default:
      `DEFAULT_MANUAL_DIRS`, then TFDS's `data_dir/downloads/manual`).

  Returns:
    `len()`-able, indexable source; `source[i]` is a dict of numpy values.

  Raises:
    DatasetNotFoundError: `name` is not prepared in `data_dir` and cannot be
      prepared here; the message says how to prepare it.
    ValueError: unknown split.
  """
  data_dir = os.path.expanduser(os.fspath(data_dir))
  builder = _open(name, data_dir, manual_dir)
  _check_split(builder, split)
  return _data_source(builder, name, split, data_dir)


def split_sizes(
    name: str, data_dir: str, manual_dir: str | None = None
) -> dict[str, int]:
  """Split name -> number of examples of TFDS dataset `name`.

  Empty when TFDS does not know the splits (a mocked dataset).
  """
  builder = _open(name, os.fspath(data_dir), manual_dir)
  return {k: v.num_examples for k, v in builder.info.splits.items()}


def _stack_fast(source: Any, n: int) -> dict[str, np.ndarray] | None:
  """Whole split from raw tf.Example records, for fixed-shape numeric features.

  Parses the protos directly instead of going through TFDS's per-example
  decoding (3x faster for Fashion-MNIST). Returns None when a feature is not
  a fixed-shape numeric `tfds.features.Tensor` (incl. ClassLabel) or the
  layout is not the one expected, so the caller takes the generic path.
  """
  features = getattr(getattr(source, 'dataset_info', None), 'features', None)
  raw_source = getattr(source, 'data_source', None)
  if (
      not isinstance(features, tfds.features.FeaturesDict)
      or raw_source is None
      or source.deserialize_method
      != tfds_decode.DeserializeMethod.DESERIALIZE_AND_DECODE
  ):
    return None
  specs = {}
  for key, feature in features.items():
    if not isinstance(feature, tfds.features.Tensor):
      return None
    dtype = np.dtype(feature.np_dtype)
    if None in feature.shape or dtype.kind not in 'biuf':
      return None
    if dtype == np.uint64:  # Stored bit-cast to int64.
      return None
    specs[key] = (dtype, tuple(feature.shape))
  columns = {key: [] for key in specs}
  for start in range(0, n, _READ_CHUNK):
    records = raw_source.__getitems__(
        list(range(start, min(start + _READ_CHUNK, n)))
    )
    for record in records:
      example = example_parser.tf_example_pb2.Example.FromString(record)
      feature_map = example.features.feature
      for key, column in columns.items():
        if key not in feature_map:
          return None
        value = feature_map[key]
        kind = value.WhichOneof('kind')
        if kind == 'bytes_list':
          column.append(b''.join(value.bytes_list.value))
        elif kind == 'int64_list':
          column.extend(value.int64_list.value)
        elif kind == 'float_list':
          column.extend(value.float_list.value)
        else:
          return None
  out = {}
  for key, (dtype, shape) in specs.items():
    column = columns[key]
    if column and isinstance(column[0], bytes):
      flat = np.frombuffer(b''.join(column), dtype=dtype)
    else:
      flat = np.asarray(column).astype(dtype)
    if flat.size != n * int(np.prod(shape)):
      return None
    out[key] = flat.reshape((n, *shape))
  # Cross-check against TFDS's own decoding on the first and last example.
  for i in {0, n - 1}:
    for key, value in source[i].items():
      if not np.array_equal(out[key][i], np.asarray(value)):
        logging.warning('Fast read of %s disagrees with TFDS; using TFDS.', key)
        return None
  return out


def _read(source: Any, keys: list[int]) -> Sequence[dict[str, Any]]:
  """Batched read when the source supports it, else one by one."""
  try:
    return source.__getitems__(keys)
  except (AttributeError, TypeError):  # No (working) batched read, e.g. mocks.
    return [source[i] for i in keys]


def _stack(source: Any, n: int) -> dict[str, np.ndarray]:
  """Whole split by batched reads through the source's own decoding."""
  columns: dict[str, list[Any]] = {}
  for start in range(0, n, _READ_CHUNK):
    keys = list(range(start, min(start + _READ_CHUNK, n)))
    for example in _read(source, keys):
      for key, value in example.items():
        columns.setdefault(key, []).append(value)
  out = {}
  for key, values in columns.items():
    shapes = {np.shape(v) for v in values}
    if len(shapes) > 1:
      raise ValueError(
          f'Feature {key!r} has examples of different shapes (e.g.'
          f' {sorted(shapes)[:3]}), so the split cannot be stacked in memory;'
          ' read it example by example through get_source() instead.'
      )
    out[key] = np.stack([np.asarray(v) for v in values])
  return out


def load_in_memory(
    name: str, split: str, data_dir: str, manual_dir: str | None = None
) -> dict[str, np.ndarray]:
  """The whole split as stacked numpy arrays, feature name -> [N, ...]."""
  source = get_source(name, split, data_dir, manual_dir)
  n = len(source)
  if n == 0:
    raise ValueError(f'Split {split!r} of {name!r} has no examples.')
  out = _stack_fast(source, n)
  return out if out is not None else _stack(source, n)


def dataset_info(
    name: str, data_dir: str, manual_dir: str | None = None
) -> DatasetInfo:
  """Keys, classes, input shape and splits of classification dataset `name`."""
  data_dir = os.fspath(data_dir)
  builder = _open(name, data_dir, manual_dir)
  if not builder.is_prepared():
    # Raises DatasetNotFoundError unless TFDS can still serve it (mock_data).
    _data_source(builder, name, 'train', data_dir)
  info = builder.info
  features = info.features
  keys = list(features.keys())
  label_key = 'label'
  if label_key not in keys:
    raise ValueError(
        f'Dataset {name!r} has no {label_key!r} feature (features: {keys}).'
    )
  label = features[label_key]
  if not isinstance(label, tfds.features.ClassLabel):
    raise ValueError(
        f'Dataset {name!r}: feature {label_key!r} is'
        f' {type(label).__name__}, not a ClassLabel.'
    )
  inputs = [k for k in keys if k != label_key]
  if not inputs:
    raise ValueError(f'Dataset {name!r} has no input feature besides labels.')
  # 'features' (tabular vectors) wins over group columns such as 'sex',
  # whatever order the reloaded info lists them in.
  input_key = next((k for k in ('image', 'x', 'features') if k in inputs),
                   inputs[0])
  shape = tuple(features[input_key].shape)
  splits = {k: v.num_examples for k, v in info.splits.items()}
  if splits and 'train' not in splits:
    raise ValueError(f'Dataset {name!r} has no train split: {sorted(splits)}.')
  if _base_name(name) in _UNLABELED_TEST_SPLIT:
    eval_split = 'validation'
  elif 'test' in splits or not splits:
    eval_split = 'test'
  elif 'validation' in splits:
    eval_split = 'validation'
  else:
    raise ValueError(
        f'Dataset {name!r} has neither a test nor a validation split:'
        f' {sorted(splits)}.'
    )
  return DatasetInfo(
      name=name,
      input_key=input_key,
      label_key=label_key,
      num_classes=int(label.num_classes),
      input_shape=None if None in shape else tuple(int(d) for d in shape),
      splits=splits,
      train_split='train',
      eval_split=eval_split,
  )


def label_names(name: str, data_dir: str, manual_dir: str | None = None
                ) -> list[str] | None:
  """The ClassLabel names of dataset ``name``'s ``label``, or None."""
  try:
    label = _open(name, os.fspath(data_dir), manual_dir).info.features['label']
    names = list(label.names)
  except (KeyError, AttributeError, ValueError):
    return None
  return names or None


def _payload_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with gzip.open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _check_fashion_mnist(
    directory: pathlib.Path, expected_sha256: Mapping[str, str] | None
) -> None:
  for filename in FASHION_MNIST_SHA256:
    path = directory / filename
    if not path.exists():
      raise FileNotFoundError(
          f'{path} is missing after unpacking'
          f' {fashion_mnist_local.DEBIAN_PACKAGE}: the package layout changed;'
          ' look for the .gz files under the unpacked directory.'
      )
    if expected_sha256 is not None:
      got = _payload_sha256(path)
      if got != expected_sha256[filename]:
        raise ValueError(
            f'{path}: sha256 of the decompressed data is {got}, expected'
            f' {expected_sha256[filename]}. The package content changed; pass'
            ' expected_sha256=None to accept it anyway.'
        )


def fetch_fashion_mnist(
    dest_dir: str | os.PathLike,
    expected_sha256: Mapping[str, str] | None = FASHION_MNIST_SHA256,
) -> str:
  """Fetches Fashion-MNIST's IDX files from Debian's package, without root.

  Runs, in `dest_dir`, exactly

    apt-get download dataset-fashion-mnist
    dpkg -x dataset-fashion-mnist_*.deb DEST_DIR

  and checks each file's decompressed sha256 (skip with
  `expected_sha256=None`). This is the only function here that touches the
  network (the Debian package mirror).

  Args:
    dest_dir: directory for the .deb and the unpacked tree (created).
    expected_sha256: IDX payload sha256 per file name, or None.

  Returns:
    The directory holding the four .gz files (the manual dir for
    'fashion_mnist_local'): DEST_DIR/usr/share/datasets/fashion-mnist.
  """
  dest = pathlib.Path(dest_dir).resolve()
  dest.mkdir(parents=True, exist_ok=True)
  package = fashion_mnist_local.DEBIAN_PACKAGE
  directory = dest / fashion_mnist_local.DEFAULT_MANUAL_DIR.lstrip('/')
  try:
    subprocess.run(
        ['apt-get', 'download', package],
        cwd=dest, check=True, capture_output=True, text=True,
    )
    debs = sorted(dest.glob(f'{package}_*.deb'))
    if not debs:
      raise FileNotFoundError(
          f'apt-get download left no {package}_*.deb in {dest}.'
      )
    subprocess.run(
        ['dpkg', '-x', str(debs[-1]), str(dest)],
        check=True, capture_output=True, text=True,
    )
  except FileNotFoundError as e:
    if e.filename in ('apt-get', 'dpkg'):
      raise FileNotFoundError(
          f'{e.filename} not found: fetch_fashion_mnist needs a Debian/Ubuntu'
          ' system. Elsewhere, get the four IDX .gz files from'
          ' https://github.com/zalandoresearch/fashion-mnist and pass their'
          ' directory as manual_dir.'
      ) from e
    raise
  except subprocess.CalledProcessError as e:
    raise RuntimeError(
        f'{" ".join(e.cmd)} failed (exit {e.returncode}): {e.stderr.strip()}\n'
        'If apt-get cannot find the package, the package lists are stale:'
        ' an administrator has to run `apt-get update`.'
    ) from e
  _check_fashion_mnist(directory, expected_sha256)
  return str(directory)
