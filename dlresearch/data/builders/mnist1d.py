"""TFDS builder for MNIST-1D (Greydanus 2020), generated locally.

The fixed dataset of the `mnist1d` package, `make_dataset(get_dataset_args())`
(seed 42): 4000 train / 1000 test sequences of length 40, 10 classes. It is
procedural and needs no network (the package's `get_dataset(download=True)`
is never called). Values are the package's float64 numbers cast to float32,
stored as 'x' [40, 1] (time, channel) in the package's order.
"""

from collections.abc import Iterator
import random

import numpy as np
import tensorflow_datasets as tfds

LENGTH = 40


def make_arrays() -> dict[str, np.ndarray]:
  """The package's fixed dataset: keys x, y, x_test, y_test (as it returns).

  `make_dataset` reseeds Python's and NumPy's global generators; their state
  is restored afterwards so callers' random streams are unaffected.
  """
  # Imported on use: mnist1d pulls in scipy and matplotlib (seconds).
  from mnist1d import data as mnist1d_data

  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    data = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  return {k: data[k] for k in ('x', 'y', 'x_test', 'y_test')}


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D: 4000 train / 1000 test, length 40, 10 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: make_dataset(get_dataset_args()).'
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'x': tfds.features.Tensor(
                shape=(LENGTH, 1), dtype=np.float32, encoding='bytes'
            ),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('x', 'label'),
        disable_shuffling=True,
        homepage='https://github.com/greydanus/mnist1d',
        citation=(
            '@inproceedings{greydanus2024scaling, title={Scaling down deep'
            ' learning with {MNIST-1D}}, author={Greydanus, Sam and Kobak,'
            ' Dmitry}, booktitle={ICML}, year={2024}}'
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Generated locally.
    data = make_arrays()
    return {
        'train': self._generate_examples(data['x'], data['y']),
        'test': self._generate_examples(data['x_test'], data['y_test']),
    }

  def _generate_examples(
      self, x: np.ndarray, y: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    x = x.astype(np.float32)[..., None]
    for i in range(x.shape[0]):
      yield i, {'x': x[i], 'label': int(y[i])}
