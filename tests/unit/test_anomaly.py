"""Tests for dlresearch.apps.anomaly: the metrics and scores, the scalings,
the autoencoders and the option checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import metrics as skm

from dlresearch import config as config_lib
from dlresearch.apps.anomaly import metrics as anomaly
from dlresearch.apps.anomaly import problem as anomaly_problem
from dlresearch.apps.anomaly import readers as anomaly_readers
from dlresearch.config import ConfigError
from dlresearch.models import autoencoder
from dlresearch.models import registry


@pytest.mark.parametrize('seed', range(5))
def test_auroc_and_ap_by_their_definitions_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 300))
  labels = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
  labels[:2] = [0, 1]  # Both classes present.
  # Few distinct values: many ties, within and across classes.
  scores = rng.integers(0, int(rng.integers(2, 12)), n) + 0.5 * labels
  scores = np.round(scores * rng.random(n)) if seed % 2 else scores
  # AUROC: P(anomaly scores above normal), ties one half, over all pairs.
  pos, neg = scores[labels == 1], scores[labels == 0]
  pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
  assert anomaly.auroc(labels, scores) == pytest.approx(pairs.mean(), abs=1e-12)
  # AP: over each distinct score t (high to low), recall gained x precision.
  ap, recall = 0.0, 0.0
  for t in np.unique(scores)[::-1]:
    flagged = scores >= t
    new_recall = labels[flagged].sum() / labels.sum()
    ap += (new_recall - recall) * labels[flagged].mean()
    recall = new_recall
  assert anomaly.average_precision(labels, scores) == pytest.approx(ap, abs=1e-12)


def test_metrics_all_tied_and_degenerate():
  labels = np.array([0, 1, 0, 1, 0])
  scores = np.zeros(5)
  assert anomaly.auroc(labels, scores) == 0.5
  assert anomaly.average_precision(labels, scores) == pytest.approx(0.4)
  assert anomaly.average_precision(labels, scores) == pytest.approx(
      skm.average_precision_score(labels, scores))
  assert np.isnan(anomaly.auroc([0, 0], [1.0, 2.0]))
  assert np.isnan(anomaly.average_precision([0, 0], [1.0, 2.0]))
  with pytest.raises(ValueError, match='0 \\(normal\\) or 1'):
    anomaly.auroc([0, 2], [1.0, 2.0])


def test_precision_recall_at_alert_rate_by_hand():
  labels = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1])
  scores = np.array([.9, .8, .1, .7, .3, .2, .0, .0, .4, .95])
  # 25% of 10 = 2.5 -> 3 flagged: scores .95 (1), .9 (1), .8 (0).
  assert anomaly.precision_recall_at_alert_rate(labels, scores, 0.25) == (
      pytest.approx(2 / 3), pytest.approx(2 / 3))
  # 1% of 10 -> at least one flagged: .95 (1).
  assert anomaly.precision_recall_at_alert_rate(labels, scores, 0.01) == (
      1.0, pytest.approx(1 / 3))
  # All flagged: precision = prevalence, recall 1.
  assert anomaly.precision_recall_at_alert_rate(labels, scores, 1.0) == (
      pytest.approx(0.3), 1.0)
  # Ties at the cut: the earlier of the two 0.0 scores is flagged.
  assert anomaly.precision_recall_at_alert_rate(
      [0, 1, 0], [0.0, 0.0, 1.0], 2 / 3) == (0.0, 0.0)
  assert anomaly.alert_count(100, 0.07) == 7  # 0.07 * 100 = 7.000000000000001
  metrics = anomaly.anomaly_metrics(labels, scores, alert_rates=(0.25,))
  assert metrics['precision@0.25'] == pytest.approx(2 / 3)
  assert set(metrics) == {'auroc', 'average_precision', 'precision@0.25',
                          'recall@0.25'}


def _planted(rng, n_normal, n_outlier, dim=8):
  """Normals near a 2-D subspace of R^dim; outliers off it."""
  basis = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, 2)))[0].T
  normal = rng.normal(size=(n_normal, 2)) @ basis * 2.0
  normal += 0.05 * rng.normal(size=normal.shape)
  outlier = rng.normal(size=(n_outlier, dim)) * 1.5
  x = np.concatenate([normal, outlier]).astype(np.float32)
  y = np.r_[np.zeros(n_normal, int), np.ones(n_outlier, int)]
  return x, y


def test_mlp_autoencoder_finds_planted_outliers():
  rng = np.random.default_rng(0)
  x_train, _ = _planted(rng, 512, 0)
  x_test, y_test = _planted(rng, 200, 20)
  model = registry.build('mlp_autoencoder', features=(16,), latent=2)
  assert isinstance(model, autoencoder.MLPAutoencoder)
  params = model.init(jax.random.key(0), x_train[:1])['params']
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      recon = model.apply({'params': p}, x_train, train=True)
      return jnp.mean(anomaly.reconstruction_error(x_train, recon))
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  first = None
  for _ in range(300):
    params, opt_state, value = step(params, opt_state)
    first = value if first is None else first
  assert value < 0.2 * first
  recon = jax.jit(functools.partial(model.apply, {'params': params}))
  scores = anomaly.reconstruction_scores(recon, x_test, batch_size=64)
  assert scores.shape == (220,)
  assert anomaly.auroc(y_test, scores) > 0.9
  # The same per-row error as computed by hand in NumPy.
  np.testing.assert_allclose(
      scores, ((np.asarray(recon(x_test)) - x_test) ** 2).mean(1), rtol=1e-5)
  out, feats = model.apply({'params': params}, x_test[:3],
                           return_features=True)
  assert out.shape == (3, 8) and feats['latent'].shape == (3, 2)


def test_isolation_forest_finds_planted_outliers():
  rng = np.random.default_rng(1)
  x_train, _ = _planted(rng, 300, 0)
  x_test, y_test = _planted(rng, 200, 20)
  scores = anomaly.isolation_forest_scores(x_train, x_test, n_estimators=50)
  assert scores.shape == (220,)
  assert anomaly.auroc(y_test, scores) > 0.9


def test_conv_autoencoder_shapes():
  model = registry.build('conv_autoencoder', features=(4, 8), latent=5)
  x = jnp.ones((2, 8, 12, 1))
  variables = model.init(jax.random.key(0), x)
  out, feats = model.apply(variables, x, return_features=True)
  assert out.shape == x.shape and feats['latent'].shape == (2, 5)
  assert variables['params']['encoder_1']['kernel'].shape == (3, 3, 4, 8)
  with pytest.raises(ValueError, match='divisible by 4'):
    model.init(jax.random.key(0), jnp.ones((1, 6, 8, 1)))


def test_alert_rate_is_checked():
  with pytest.raises(ConfigError, match='--alert_rate'):
    config_lib.override(config_lib.Config(), {'alert_rate': 0.0})


def test_error_scores_equal_a_direct_numpy_computation():
  rng = np.random.default_rng(2)
  # Correlated reference errors with unequal spreads; one column constant.
  mix = rng.normal(size=(5, 5)) * [1, 3, 0.2, 1, 1]
  ref = rng.normal(size=(400, 5)) @ mix
  ref[:, 4] = 0.0
  err = rng.normal(size=(30, 5)) * 2
  np.testing.assert_allclose(anomaly.error_scores(err), (err ** 2).mean(1))
  np.testing.assert_allclose(anomaly.error_scores(err, ref, 'mse'),
                             (err ** 2).mean(1))
  std = ref.std(0)
  std[4] = 1.0  # a zero spread counts as 1
  want = ((err / std) ** 2).mean(1)
  np.testing.assert_allclose(anomaly.error_scores(err, ref, 'standardized'),
                             want, rtol=1e-10)
  # Mahalanobis: full rank on the four varying columns, the constant one
  # dropped by the pseudo-inverse.
  mu = ref[:, :4].mean(0)
  cov = (ref[:, :4] - mu).T @ (ref[:, :4] - mu) / (len(ref) - 1)
  d = err[:, :4] - mu
  want = np.array([v @ np.linalg.inv(cov) @ v for v in d])
  got = anomaly.error_scores(err, ref, 'mahalanobis')
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Errors of any shape are flattened per example (images).
  np.testing.assert_allclose(
      anomaly.error_scores(err[:, :4].reshape(30, 2, 2, 1),
                           ref[:, :4].reshape(400, 2, 2, 1), 'mahalanobis'),
      want, rtol=1e-6)
  with pytest.raises(ValueError, match='score must be one of'):
    anomaly.error_scores(err, ref, 'l1')
  with pytest.raises(ValueError, match='at least 2 reference rows'):
    anomaly.error_scores(err, None, 'standardized')


def test_robust_scale_and_hour_of_day_equal_direct_numpy():
  rng = np.random.default_rng(3)
  train = rng.standard_t(2, size=(101, 3)) * [1, 5, 1]
  train[:, 2] = np.abs(train[:, 2]) * 100  # an amount, log1p first
  train[:, 1] = np.where(np.arange(101) < 90, 7.0, train[:, 1])  # IQR 0
  test = rng.normal(size=(9, 3)) ** 2
  s_train, s_test = anomaly_readers.robust_scale(train, test,
                                                 log1p_columns=(2,))
  prepared = [x.copy() for x in (train, test)]
  for x in prepared:
    x[:, 2] = np.log1p(x[:, 2])
  med = np.median(prepared[0], 0)
  iqr = np.percentile(prepared[0], 75, 0) - np.percentile(prepared[0], 25, 0)
  assert iqr[1] == 0
  iqr[1] = 1.0
  np.testing.assert_allclose(s_train, (prepared[0] - med) / iqr, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(s_test, (prepared[1] - med) / iqr, rtol=1e-5,
                             atol=1e-6)
  assert s_train.dtype == np.float32
  # The median row maps to 0 on the odd-sized train set.
  np.testing.assert_allclose(np.median(s_train, 0), 0, atol=1e-6)

  seconds = np.array([0, 6 * 3600, 12 * 3600, 86399, 86400 + 18 * 3600,
                      172799.5])
  angle = 2 * np.pi * (seconds % 86400) / 86400
  hours = anomaly_readers.hour_of_day(seconds)
  np.testing.assert_allclose(hours, np.c_[np.sin(angle), np.cos(angle)],
                             atol=1e-6)
  # Midnight, 06:00, noon, 18:00 of day two.
  np.testing.assert_allclose(hours[[0, 1, 2, 4]],
                             [[0, 1], [1, 0], [0, -1], [-1, 0]], atol=1e-6)
  assert np.linalg.norm(hours[3] - hours[0]) < 1e-3  # 23:59:59 by 00:00


def test_score_holdout_keeps_the_latest_rows_and_checks_sizes():
  normal = np.arange(40, dtype=np.float32).reshape(20, 2)
  train, reference = anomaly_problem.holdout(normal, 0.1)
  np.testing.assert_array_equal(train, normal[:18])
  np.testing.assert_array_equal(reference, normal[18:])
  assert len(anomaly_problem.holdout(normal, 0.11)[1]) == 3  # ceil(2.2)
  with pytest.raises(ConfigError, match='--score_holdout: .*at least 2'):
    anomaly_problem.holdout(normal[:10], 0.1)
  with pytest.raises(ConfigError, match='--score_holdout'):
    config_lib.override(config_lib.Config(), {'score_holdout': 1.0})
  with pytest.raises(ConfigError, match='--anomaly_score'):
    config_lib.override(config_lib.Config(), {'anomaly_score': 'l1'})


def test_feature_options_refuse_data_they_do_not_apply_to(tmp_path):
  # Refused before any file is read (the data dir is empty).
  cfg = config_lib.override(config_lib.Config(), {
      'data_kind': 'anomaly', 'dataset': 'shuttle', 'time_feature': 'hour',
      'manual_dir': str(tmp_path)})
  with pytest.raises(ConfigError, match='--time_feature: shuttle has no '
                     'transaction time'):
    anomaly_problem.load_split(cfg)
  cfg = cfg.replace(dataset='fashion_mnist_local', time_feature='none',
                    feature_scaling='robust')
  with pytest.raises(ConfigError, match='--feature_scaling: .*image dataset'):
    anomaly_problem.load_split(cfg)
  # A classifier scores by its log-odds: a reconstruction score is refused.
  cfg = cfg.replace(dataset='shuttle', feature_scaling='standard',
                    model='mlp', anomaly_score='mahalanobis')
  with pytest.raises(ConfigError, match='--anomaly_score: mlp is a '
                     'classifier'):
    anomaly_problem.anomaly(cfg, str(tmp_path), True)
