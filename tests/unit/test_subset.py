"""dlresearch.data.subset: ``--num_train_examples``, a stratified subset."""

import numpy as np
import pytest

from dlresearch.config import ConfigError
from dlresearch.data import subset


def test_stratified_subset_is_proportional_and_seeded():
  labels = np.repeat([0, 1, 2], [600, 300, 100])
  idx = subset.stratified_indices(labels, 100, seed=0)
  assert np.bincount(labels[idx]).tolist() == [60, 30, 10]
  assert len(set(idx.tolist())) == 100
  np.testing.assert_array_equal(idx, subset.stratified_indices(labels, 100, 0))
  assert not np.array_equal(idx, subset.stratified_indices(labels, 100, 1))
  # Remainders go to the largest fractional parts: 7 -> 4.2, 2.1, 0.7.
  small = labels[subset.stratified_indices(labels, 7, 0)]
  assert np.bincount(small, minlength=3).tolist() == [4, 2, 1]
  from dlresearch.data import pipeline  # pylint: disable=g-import-not-at-top
  ds = pipeline.ArrayDataset({'x': np.arange(1000), 'label': labels})
  sub = subset.train_subset(ds, 10, 0, 'label')
  assert sub.num_examples == 10
  assert np.bincount(sub.arrays['label']).tolist() == [6, 3, 1]
  np.testing.assert_array_equal(sub.arrays['label'], labels[sub.arrays['x']])
  with pytest.raises(ConfigError, match='num_train_examples'):
    subset.train_subset(ds, 1001, 0, 'label')
