"""TFDS builder for scikit-learn's bundled UCI handwritten digits (no network).

1797 grey 8x8 images of the digits 0-9 (`sklearn.datasets.load_digits`),
pixel counts 0..16 rescaled to uint8 0..255 as round(x * 255 / 16).

Splits are fixed and stratified by class: `sklearn.model_selection.
train_test_split(range(1797), test_size=360, stratify=labels, random_state=0)`
gives train 1437 / test 360, stored in the (shuffled) order that call returns;
`split_indices` maps positions back to `load_digits()` rows. Images are raw
uint8 tensors (`tfds.features.Tensor`), read back as numpy with no image
decoding. scikit-learn is imported only when the arrays are built (it takes
~3 s to import: no other run should pay for it).
"""

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST = 360
SPLIT_SEED = 0


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits: uint8 images [N, 8, 8, 1] in 0..255 and int64 labels."""
  from sklearn import datasets as sk_datasets  # pylint: disable=import-outside-toplevel
  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """The fixed stratified split: indices into `load_digits()` per split."""
  from sklearn import model_selection  # pylint: disable=import-outside-toplevel
  train, test = model_selection.train_test_split(
      np.arange(len(labels)),
      test_size=NUM_TEST,
      stratify=labels,
      random_state=SPLIT_SEED,
  )
  return {'train': train, 'test': test}


class Digits(tfds.core.GeneratorBasedBuilder):
  """UCI handwritten digits, 8x8, from scikit-learn (train 1437 / test 360)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: stratified 1437/360 split.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(
                shape=(8, 8, 1), dtype=np.uint8, encoding='bytes'
            ),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage=(
            'https://archive.ics.uci.edu/dataset/80/'
            'optical+recognition+of+handwritten+digits'
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything ships with scikit-learn.
    images, labels = load_arrays()
    return {
        split: self._generate_examples(images, labels, indices)
        for split, indices in split_indices(labels).items()
    }

  def _generate_examples(
      self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    # With shuffling disabled TFDS writes in key order: key = position.
    for position, i in enumerate(indices):
      yield position, {'image': images[i], 'label': int(labels[i])}
