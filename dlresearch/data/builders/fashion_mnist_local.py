"""TFDS builder for Fashion-MNIST read from local IDX files (no network).

The builder reads the four standard files

  train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

from the TFDS manual directory (`DownloadConfig(manual_dir=...)`). When no
manual directory with files is given it falls back to the Debian package
location `/usr/share/datasets/fashion-mnist`. Examples keep the order of the
IDX files. Images are stored as raw uint8 tensors (`tfds.features.Tensor`
with byte encoding): they read back as numpy without any image decoding,
which is several times faster than PNG-encoded `tfds.features.Image`.
"""

from collections.abc import Iterator
import gzip
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

DEFAULT_MANUAL_DIR = '/usr/share/datasets/fashion-mnist'
DEBIAN_PACKAGE = 'dataset-fashion-mnist'

FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}

CLASS_NAMES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
    'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
)

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
The manual directory must hold the four Fashion-MNIST IDX files:
  {FILES['train'][0]}  {FILES['train'][1]}
  {FILES['test'][0]}  {FILES['test'][1]}

With the Debian/Ubuntu package installed (`apt-get install {DEBIAN_PACKAGE}`)
they are in {DEFAULT_MANUAL_DIR}, the default. Without root, fetch the package
and unpack it into a directory DIR of your choice:

  apt-get download {DEBIAN_PACKAGE} && dpkg -x {DEBIAN_PACKAGE}_*.deb DIR

then pass DIR{DEFAULT_MANUAL_DIR} as the manual dir (or call
dlresearch.data.datasets.fetch_fashion_mnist(DIR), which runs exactly these
two commands, checks the files' sha256 and returns that path). If
`apt-get download` cannot find the package, the package lists are stale:
ask an administrator to run `apt-get update`.
"""

# IDX type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}


def _open(path: os.PathLike | str, mode: str):
  path = os.fspath(path)
  return gzip.open(path, mode) if path.endswith('.gz') else open(path, mode)


def read_idx(path: os.PathLike | str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) into a numpy array."""
  with _open(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f'{path} is not an IDX file (bad magic number).')
  type_code, ndim = data[2], data[3]
  if type_code not in _IDX_DTYPES:
    raise ValueError(f'{path}: unknown IDX type code {type_code:#04x}.')
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', ndim, offset=4))
  dtype = _IDX_DTYPES[type_code]
  expected = header + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(
        f'{path}: header says shape {shape} ({expected} bytes in all) but the'
        f' file has {len(data)} bytes.'
    )
  array = np.frombuffer(data, dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder('='))


def write_idx(path: os.PathLike | str, array: np.ndarray) -> None:
  """Writes `array` as an IDX file, gzipped when `path` ends with '.gz'."""
  array = np.asarray(array)
  codes = {dtype.newbyteorder('='): code for code, dtype in _IDX_DTYPES.items()}
  native = array.dtype.newbyteorder('=')
  if native not in codes:
    raise ValueError(f'IDX cannot store dtype {array.dtype}.')
  header = bytes([0, 0, codes[native], array.ndim])
  header += np.asarray(array.shape, '>u4').tobytes()
  body = array.astype(native.newbyteorder('>')).tobytes()
  with _open(path, 'wb') as f:
    f.write(header + body)


def missing_files(directory) -> list[str]:
  """The IDX files absent from ``directory`` (checked before preparing)."""
  directory = epath.Path(directory)
  return [name for pair in FILES.values() for name in pair
          if not (directory / name).exists()]


def _find_files(directory: epath.Path) -> None:
  missing = missing_files(directory)
  if missing:
    raise FileNotFoundError(
        f'Fashion-MNIST files missing in {directory}: {", ".join(missing)}.\n'
        + MANUAL_DOWNLOAD_INSTRUCTIONS
    )


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (60k train / 10k test, 28x28 grey) from local IDX files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: raw uint8 images, IDX order.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(
                shape=(28, 28, 1), dtype=np.uint8, encoding='bytes'
            ),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://github.com/zalandoresearch/fashion-mnist',
        citation=(
            '@article{xiao2017fashion, title={Fashion-MNIST: a Novel Image'
            ' Dataset for Benchmarking Machine Learning Algorithms}, author='
            '{Xiao, Han and Rasul, Kashif and Vollgraf, Roland}, journal='
            '{arXiv:1708.07747}, year={2017}}'
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    try:
      directory = dl_manager.manual_dir
    except AssertionError:  # Manual dir missing or empty: use the Debian one.
      directory = epath.Path(DEFAULT_MANUAL_DIR)
    _find_files(directory)
    return {
        split: self._generate_examples(directory / images, directory / labels)
        for split, (images, labels) in FILES.items()
    }

  def _generate_examples(
      self, images_path: epath.Path, labels_path: epath.Path
  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
      raise ValueError(
          f'{images_path}: expected [N, 28, 28], got {images.shape}.'
      )
    if labels.shape != images.shape[:1]:
      raise ValueError(
          f'{labels_path}: {labels.shape[0] if labels.ndim else 0} labels for'
          f' {images.shape[0]} images in {images_path}.'
      )
    for i in range(images.shape[0]):
      yield i, {'image': images[i, :, :, None], 'label': int(labels[i])}
