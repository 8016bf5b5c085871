"""Tests for dlresearch.apps.anomaly: the metrics, the autoencoders and the
``--alert_rate`` option check."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import metrics as skm

from dlresearch import config as config_lib
from dlresearch.apps.anomaly import metrics as anomaly
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
