"""Tests for dlresearch.data.datasets and the offline TFDS builders."""

import gzip
import hashlib
import io
import os
import pathlib
import shutil
import stat
import subprocess

import jax
from mnist1d import data as mnist1d_data
import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sk_datasets
from sklearn import model_selection
import tensorflow_datasets as tfds

from dlresearch.data import datasets
from dlresearch.data.builders import fashion_mnist_local


def _fixture_idx(directory, n_train=50, n_test=20):
  """Writes small Fashion-MNIST-format IDX files; returns their arrays."""
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for split, n in (('train', n_train), ('test', n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    image_file, label_file = fashion_mnist_local.FILES[split]
    fashion_mnist_local.write_idx(directory / image_file, images)
    fashion_mnist_local.write_idx(directory / label_file, labels)
    arrays[split] = (images, labels)
  return arrays


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def fashion(tmp_path_factory, data_dir):
  manual = tmp_path_factory.mktemp('fashion_manual')
  arrays = _fixture_idx(manual)
  datasets.get_source('fashion_mnist_local', 'train', data_dir, str(manual))
  return arrays


@pytest.fixture(scope='module')
def mnist1d(data_dir):
  """Prepares mnist1d once (generation takes seconds), spying on the package.

  Returns the (args, result) of each `mnist1d.data.make_dataset` call made
  while preparing, and the global NumPy RNG state before and after.
  """
  calls = []
  real = mnist1d_data.make_dataset

  def spy(args):
    calls.append((dict(vars(args)), real(args)))
    return calls[-1][1]

  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(mnist1d_data, 'make_dataset', spy)
    datasets.get_source('mnist1d', 'train', data_dir)
  after = np.random.get_state()[1].copy()
  return calls, before, after


def _iterate(source):
  return [source[i] for i in range(len(source))]


def test_offline_builders_are_registered():
  assert set(datasets.OFFLINE_BUILDERS) == {
      'digits', 'mnist1d', 'fashion_mnist_local', 'shakespeare',
      'rotten_tomatoes', 'text_files', 'number_words', 'adult', 'compas',
      'german_credit'
  }
  for name in datasets.OFFLINE_BUILDERS:
    assert tfds.builder_cls(name).name == name


def test_digits_prepare_and_read(data_dir):
  train = datasets.get_source('digits', 'train', data_dir)
  test = datasets.get_source('digits', 'test', data_dir)
  assert (len(train), len(test)) == (1437, 360)
  example = train[0]
  assert example['image'].shape == (8, 8, 1)
  assert example['image'].dtype == np.uint8
  info = datasets.dataset_info('digits', data_dir)
  assert info == datasets.DatasetInfo(
      name='digits', input_key='image', label_key='label', num_classes=10,
      input_shape=(8, 8, 1), splits={'train': 1437, 'test': 360},
      train_split='train', eval_split='test',
  )


def test_tilde_in_data_dir_is_the_home_directory(tmp_path, monkeypatch):
  home, cwd = tmp_path / 'home', tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.setenv('HOME', str(home))
  monkeypatch.chdir(cwd)
  arrays = datasets.load_in_memory('digits', 'test', '~/tfds')
  assert arrays['image'].shape == (360, 8, 8, 1)
  assert (home / 'tfds' / 'digits').is_dir()
  assert list(cwd.iterdir()) == []  # no literal ./~ folder


def test_digits_split_is_the_fixed_stratified_split(data_dir, tmp_path):
  digits = sk_datasets.load_digits()
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(1797), test_size=360, stratify=digits.target, random_state=0
  )
  expected_images = np.round(digits.images * 255 / 16).astype(np.uint8)
  for split, idx in (('train', train_idx), ('test', test_idx)):
    arrays = datasets.load_in_memory('digits', split, data_dir)
    np.testing.assert_array_equal(arrays['image'][..., 0], expected_images[idx])
    np.testing.assert_array_equal(arrays['label'], digits.target[idx])
  test_counts = np.bincount(datasets.load_in_memory('digits', 'test', data_dir)[
      'label'], minlength=10)
  all_counts = np.bincount(digits.target, minlength=10)
  # Stratified: each class's test share is 360/1797 of its size, +-1.
  assert np.all(np.abs(test_counts - all_counts * 360 / 1797) <= 1)
  assert test_counts.min() >= 35
  # Fixed: a fresh preparation elsewhere gives the same bytes.
  again = datasets.load_in_memory('digits', 'test', str(tmp_path))
  first = datasets.load_in_memory('digits', 'test', data_dir)
  np.testing.assert_array_equal(again['image'], first['image'])
  assert again['image'].max() == 255 and again['image'].min() == 0


def test_mnist1d_matches_package(data_dir, mnist1d):
  calls, _, _ = mnist1d
  assert len(calls) == 1
  args, reference = calls[0]
  # The package's fixed dataset (seed 42).
  assert args == mnist1d_data.get_dataset_args(as_dict=True)
  train = datasets.load_in_memory('mnist1d', 'train', data_dir)
  test = datasets.load_in_memory('mnist1d', 'test', data_dir)
  assert train['x'].shape == (4000, 40, 1) and test['x'].shape == (1000, 40, 1)
  assert train['x'].dtype == np.float32
  np.testing.assert_array_equal(
      train['x'][..., 0], reference['x'].astype(np.float32)
  )
  np.testing.assert_array_equal(
      test['x'][..., 0], reference['x_test'].astype(np.float32)
  )
  np.testing.assert_array_equal(train['label'], reference['y'])
  np.testing.assert_array_equal(test['label'], reference['y_test'])
  info = datasets.dataset_info('mnist1d', data_dir)
  assert (info.input_key, info.input_shape) == ('x', (40, 1))
  assert info.num_classes == 10
  assert info.splits == {'train': 4000, 'test': 1000}


def test_mnist1d_preparation_leaves_global_rng_alone(mnist1d):
  _, before, after = mnist1d
  np.testing.assert_array_equal(before, after)


def test_fashion_mnist_local_reads_idx_files(data_dir, fashion):
  for split, (images, labels) in fashion.items():
    source = datasets.get_source('fashion_mnist_local', split, data_dir)
    assert len(source) == len(labels)
    example = source[3]
    assert example['image'].shape == (28, 28, 1)
    assert example['image'].dtype == np.uint8
    np.testing.assert_array_equal(example['image'][..., 0], images[3])
    assert example['label'] == labels[3]
  features = source.dataset_info.features
  assert features['label'].names[0] == 'T-shirt/top'
  assert features['label'].names[9] == 'Ankle boot'
  info = datasets.dataset_info('fashion_mnist_local', data_dir)
  assert (info.input_shape, info.num_classes) == ((28, 28, 1), 10)
  assert info.splits == {'train': 50, 'test': 20}


def test_fashion_mnist_local_missing_files_say_how_to_get_them(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  fashion_mnist_local.write_idx(
      manual / 'train-labels-idx1-ubyte.gz', np.zeros(3, np.uint8)
  )
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.get_source(
        'fashion_mnist_local', 'train', str(tmp_path / 'tfds'), str(manual)
    )
  message = str(e.value)
  assert 't10k-images-idx3-ubyte.gz' in message and str(manual) in message
  assert 'fetch_fashion_mnist' in message and '\n' not in message
  assert not (tmp_path / 'tfds').exists()  # checked before TFDS writes


def test_fashion_mnist_local_default_manual_dir(tmp_path, monkeypatch):
  # Stand-in for the Debian location /usr/share/datasets/fashion-mnist.
  default = tmp_path / 'usr_share'
  arrays = _fixture_idx(default, n_train=4, n_test=3)
  monkeypatch.setattr(fashion_mnist_local, 'DEFAULT_MANUAL_DIR', str(default))
  monkeypatch.setitem(
      datasets.DEFAULT_MANUAL_DIRS, 'fashion_mnist_local', str(default)
  )
  source = datasets.get_source(
      'fashion_mnist_local', 'test', str(tmp_path / 'a')
  )
  np.testing.assert_array_equal(
      source[2]['image'][..., 0], arrays['test'][0][2]
  )
  # Straight through TFDS, with no manual dir at all: the builder falls back.
  source = tfds.data_source(
      'fashion_mnist_local', split='train', data_dir=str(tmp_path / 'b'),
      download_and_prepare_kwargs={'file_format': 'array_record'},
  )
  assert len(source) == 4
  assert source[1]['label'] == arrays['train'][1][1]


@pytest.mark.parametrize('name,split', [
    ('digits', 'train'),
    ('digits', 'test[:25%]'),
    ('fashion_mnist_local', 'train'),
])
def test_load_in_memory_equals_iterating_the_source(data_dir, fashion, name,
                                                    split):
  del fashion
  source = datasets.get_source(name, split, data_dir)
  arrays = datasets.load_in_memory(name, split, data_dir)
  examples = _iterate(source)
  assert set(arrays) == set(examples[0])
  for key, value in arrays.items():
    assert len(value) == len(examples)
    np.testing.assert_array_equal(value, np.stack([e[key] for e in examples]))
  # The generic (TFDS-decoding) path gives the same arrays as the fast one.
  # pylint: disable-next=protected-access
  generic = datasets._stack(source, len(source))
  for key, value in arrays.items():
    assert value.dtype == generic[key].dtype
    np.testing.assert_array_equal(value, generic[key])


def test_missing_dataset_error_says_where_and_how(tmp_path):
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.get_source('imagenet2012', 'train', str(tmp_path))
  message = str(e.value)
  assert 'imagenet2012' in message and str(tmp_path) in message
  assert 'ILSVRC2012_img_train.tar' in message
  assert 'ILSVRC2012_img_val.tar' in message
  assert "file_format='array_record'" in message
  assert 'download_and_prepare' in message
  assert isinstance(e.value, ValueError)
  with pytest.raises(datasets.DatasetNotFoundError, match='imagenet2012'):
    datasets.dataset_info('imagenet2012', str(tmp_path))
  with pytest.raises(datasets.DatasetNotFoundError, match='not a registered'):
    datasets.get_source('no_such_dataset_xyz', 'train', str(tmp_path))


def test_unknown_split_lists_splits(data_dir):
  expected = r"'validation'.*train \(1437\), test \(360\)"
  with pytest.raises(ValueError, match=expected):
    datasets.get_source('digits', 'validation', data_dir)


def test_imagenet2012_mock_yields_uint8_hwc(tmp_path):
  with tfds.testing.mock_data(num_examples=4):
    source = datasets.get_source('imagenet2012', 'train', str(tmp_path))
    assert len(source) == 4
    for i in range(4):
      image = source[i]['image']
      assert isinstance(image, np.ndarray) and image.dtype == np.uint8
      assert image.ndim == 3 and image.shape[-1] == 3
      assert 0 <= int(source[i]['label']) < 1000
    info = datasets.dataset_info('imagenet2012', str(tmp_path))
  assert info.num_classes == 1000 and info.input_shape is None
  assert (info.input_key, info.train_split, info.eval_split) == (
      'image', 'train', 'validation')


class _JpegToy(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """JPEGs of varying size, one grayscale: like a dataset copied in."""

  VERSION = tfds.core.Version('1.0.0')
  name = 'dlresearch_jpeg_toy'

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(None, None, 3), encoding_format='jpeg'
            ),
            'label': tfds.features.ClassLabel(num_classes=3),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
        'train': self._generate_examples(),
        'test': self._generate_examples(),
    }

  def _generate_examples(self):
    for i, encoded in enumerate(_jpegs()):
      yield i, {'image': encoded, 'label': i % 3}


def _jpegs():
  rng = np.random.default_rng(0)
  out = []
  for i, mode in enumerate(['RGB', 'RGB', 'L']):
    pixels = rng.integers(0, 256, (9 + i, 12, 3), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if mode == 'L' else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG')
    out.append(buffer.getvalue())
  return out


def test_prepared_jpeg_dataset_decodes_to_uint8_hwc(tmp_path):
  # An unregistered dataset prepared elsewhere and copied in: read from files.
  _JpegToy(data_dir=str(tmp_path)).download_and_prepare(
      file_format='array_record'
  )
  source = datasets.get_source('dlresearch_jpeg_toy', 'train', str(tmp_path))
  for i, encoded in enumerate(_jpegs()):
    expected = np.asarray(Image.open(io.BytesIO(encoded)).convert('RGB'))
    image = source[i]['image']
    assert image.dtype == np.uint8 and image.shape == (9 + i, 12, 3)
    np.testing.assert_array_equal(image, expected)
  info = datasets.dataset_info('dlresearch_jpeg_toy', str(tmp_path))
  assert info.input_shape is None and info.eval_split == 'test'
  with pytest.raises(ValueError, match='different shapes'):
    datasets.load_in_memory('dlresearch_jpeg_toy', 'train', str(tmp_path))


def test_prepare_waits_for_process_zero(tmp_path, monkeypatch):
  barriers = []
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(datasets.multihost_utils, 'sync_global_devices',
                      barriers.append)
  # Process 1: does not prepare, passes the barrier, finds nothing shared.
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with pytest.raises(RuntimeError, match='share'):
    datasets.get_source('digits', 'test', str(tmp_path))
  assert not (tmp_path / 'digits').exists()
  # Process 0: prepares, then meets the others at the same barrier.
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  assert len(datasets.get_source('digits', 'test', str(tmp_path))) == 360
  assert barriers == ['dlresearch_prepare_digits'] * 2


def test_idx_round_trip_and_errors(tmp_path):
  for name, array in [
      ('a.gz', np.arange(24, dtype=np.uint8).reshape(2, 3, 4)),
      ('b', np.arange(-3, 3, dtype=np.int32)),
      ('c.gz', np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)),
  ]:
    fashion_mnist_local.write_idx(tmp_path / name, array)
    back = fashion_mnist_local.read_idx(tmp_path / name)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
  (tmp_path / 'bad').write_bytes(b'\x01\x02\x08\x01\x00\x00\x00\x01\x05')
  with pytest.raises(ValueError, match='magic'):
    fashion_mnist_local.read_idx(tmp_path / 'bad')
  (tmp_path / 'short').write_bytes(b'\x00\x00\x08\x01\x00\x00\x00\x05\x05')
  with pytest.raises(ValueError, match='5 bytes|bytes'):
    fashion_mnist_local.read_idx(tmp_path / 'short')


def _payload_sha256(path):
  with gzip.open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


# dpkg-deb ships with every Debian/Ubuntu system; elsewhere the test is
# skipped, but never under CI (CI=true), where a missing tool must fail.
@pytest.mark.skipif(shutil.which('dpkg-deb') is None and not os.environ.get('CI'),
                    reason='needs dpkg-deb (Debian/Ubuntu)')
def test_fetch_fashion_mnist_runs_apt_get_download_and_dpkg_x(tmp_path,
                                                              monkeypatch):
  # A real .deb with fixture files, served by a fake `apt-get` on PATH.
  root = tmp_path / 'pkg'
  target = root / fashion_mnist_local.DEFAULT_MANUAL_DIR.lstrip('/')
  _fixture_idx(target, n_train=3, n_test=2)
  (root / 'DEBIAN').mkdir()
  (root / 'DEBIAN' / 'control').write_text(
      'Package: dataset-fashion-mnist\nVersion: 1.0\nArchitecture: all\n'
      'Maintainer: test <t@example.com>\nDescription: fixture\n'
  )
  deb = tmp_path / 'dataset-fashion-mnist_1.0_all.deb'
  subprocess.run(['dpkg-deb', '--build', str(root), str(deb)], check=True,
                 capture_output=True)
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  fake = bin_dir / 'apt-get'
  fake.write_text(
      '#!/bin/sh\n[ "$1 $2" = "download dataset-fashion-mnist" ] || exit 3\n'
      f'cp {deb} .\n'
  )
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')

  dest = tmp_path / 'dest'
  with pytest.raises(ValueError, match='sha256'):
    datasets.fetch_fashion_mnist(dest)  # Fixture files are not the real ones.
  hashes = {name: _payload_sha256(target / name)
            for name in datasets.FASHION_MNIST_SHA256}
  path = datasets.fetch_fashion_mnist(dest, expected_sha256=hashes)
  assert pathlib.Path(path) == dest / 'usr/share/datasets/fashion-mnist'
  assert list(dest.glob('dataset-fashion-mnist_*.deb'))
  for name in datasets.FASHION_MNIST_SHA256:
    got = (pathlib.Path(path) / name).read_bytes()
    assert got == (target / name).read_bytes()


def test_missing_raw_files_and_unknown_names_are_one_line(tmp_path):
  data_dir = tmp_path / 'tfds'
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.get_source('shakespeare', 'train', str(data_dir),
                        str(tmp_path / 'no_raw_files'))
  assert '\n' not in str(e.value)
  assert 'python -m dlresearch.data.fetch shakespeare' in str(e.value)
  assert not data_dir.exists()  # nothing was created
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.get_source('no_such_dataset', 'train', str(data_dir))
  assert '\n' not in str(e.value) and 'unknown dataset' in str(e.value)


def test_a_prepared_builder_with_configs_needs_no_raw_files(tmp_path):
  """Once prepared (NAME/CONFIG/VERSION/dataset_info.json for a builder
  with configs), a dataset is read without its raw files."""
  data_dir, empty = tmp_path / 'tfds', tmp_path / 'no_raw_files'
  with pytest.raises(datasets.DatasetNotFoundError, match='raw files of compas'):
    datasets._check_manual_files('compas/unaware', str(data_dir), str(empty))  # pylint: disable=protected-access
  version = data_dir / 'compas' / 'unaware' / '1.0.0'
  version.mkdir(parents=True)
  (version / 'dataset_info.json').write_text('{}')
  datasets._check_manual_files('compas/unaware', str(data_dir), str(empty))  # pylint: disable=protected-access


def test_local_preparation_is_announced_without_tfds_noise(tmp_path, capfd,
                                                            caplog):
  """No "Variant folder ... has no dataset_info.json" warning and no
  "Downloading and preparing dataset" line for data that is never
  downloaded; our own lines say what is prepared, how big, how long."""
  import logging  # pylint: disable=g-import-not-at-top
  caplog.set_level(logging.INFO, logger='absl')
  source = datasets.get_source('digits', 'test', str(tmp_path))
  assert len(source) == 360
  out, err = capfd.readouterr()
  said = out + err + caplog.text
  assert 'Variant folder' not in said and 'dataset_info.json' not in said
  assert 'Downloading and preparing' not in said
  assert 'downloaded and prepared' not in said
  assert 'Preparing digits once, from local files (no download)' in caplog.text
  assert 'Prepared digits (train 1,437, test 360 examples) in ' in caplog.text
  datasets.get_source('digits', 'train', str(tmp_path))  # prepared: silent
  out, err = capfd.readouterr()
  assert 'Variant folder' not in out + err + caplog.text
