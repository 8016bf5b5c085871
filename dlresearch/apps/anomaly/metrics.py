"""Anomaly detection: scores, exact ranking metrics, an isolation forest.

Convention: a higher score means more anomalous; label 1 marks an anomaly.

The metrics are exact over the whole evaluation set and are not sums over
batches, so an eval step cannot accumulate them. The eval step returns
per-example scores (``reconstruction_error``, jittable) and the eval hook
collects them on the host, then calls ``anomaly_metrics`` once::

  scores = np.concatenate([np.asarray(step(state, b)['score']) for b in ...])
  anomaly_metrics(labels, scores)  # {'auroc': ..., 'average_precision': ...}

``auroc`` and ``average_precision`` equal scikit-learn's ``roc_auc_score``
and ``average_precision_score``, ties included.
"""

from collections.abc import Callable, Sequence
import math

import jax
import jax.numpy as jnp
import numpy as np


def reconstruction_error(x: jax.Array, reconstruction: jax.Array) -> jax.Array:
  """Per-example mean squared error over all non-batch axes (jittable)."""
  diff = jnp.asarray(reconstruction, jnp.float32) - jnp.asarray(x, jnp.float32)
  return jnp.mean(jnp.square(diff).reshape(diff.shape[0], -1), axis=1)


def reconstruction_scores(reconstruct: Callable[[jax.Array], jax.Array],
                          x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
  """Per-row reconstruction error of ``x`` on the host, in batches.

  Args:
    reconstruct: maps a batch to its reconstruction, e.g.
      ``functools.partial(model.apply, variables)``; jit it for speed.
    x: inputs, first axis the examples.
    batch_size: rows per call (the last batch may be smaller).

  Returns:
    float32 [len(x)] scores, higher = more anomalous.
  """
  out = []
  for start in range(0, len(x), batch_size):
    xb = x[start:start + batch_size]
    out.append(np.asarray(reconstruction_error(xb, reconstruct(xb))))
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


SCORES = ('mse', 'standardized', 'mahalanobis')


def error_scores(errors: np.ndarray, reference: np.ndarray | None = None,
                 score: str = 'mse') -> np.ndarray:
  """Anomaly scores from reconstruction errors (``reconstruction - x``).

  Args:
    errors: [n, ...] per-example errors to score (flattened to [n, d]).
    reference: [m, ...] errors of normal rows the model did not train on:
      the statistics of ``standardized`` and ``mahalanobis`` (unused by
      ``mse``).
    score: ``'mse'``: ``mean_j e_j^2`` (``reconstruction_error``);
      ``'standardized'``: ``mean_j (e_j / s_j)^2``, ``s_j`` the std of
      feature ``j``'s reference errors (features the autoencoder always
      reconstructs badly no longer dominate; a zero std counts as 1);
      ``'mahalanobis'``: ``(e - mu)^T C^+ (e - mu)``, ``mu`` and ``C`` the
      mean and covariance of the reference errors (``C^+`` the
      pseudo-inverse), so errors that normal rows make together count less.

  Returns:
    float64 [n] scores, higher = more anomalous.
  """
  e = np.asarray(errors, np.float64).reshape(len(errors), -1)
  if score == 'mse':
    return np.mean(np.square(e), axis=1)
  if score not in SCORES:
    raise ValueError(f'score must be one of {SCORES}, got {score!r}')
  if reference is None or len(reference) < 2:
    raise ValueError(f'the {score} score needs the errors of at least 2 '
                     'reference rows')
  ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
  if score == 'standardized':
    std = ref.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return np.mean(np.square(e / std), axis=1)
  mu = ref.mean(axis=0)
  precision = np.linalg.pinv(np.cov(ref, rowvar=False).reshape(
      e.shape[1], e.shape[1]), hermitian=True)
  d = e - mu
  return np.einsum('ij,jk,ik->i', d, precision, d)


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels).ravel()
  scores = np.asarray(scores, np.float64).ravel()
  if labels.shape != scores.shape:
    raise ValueError(f'labels {labels.shape} and scores {scores.shape} differ')
  if not np.isin(labels, (0, 1)).all():
    raise ValueError('labels must be 0 (normal) or 1 (anomaly)')
  if np.isnan(scores).any():
    raise ValueError('scores contain NaN')
  return labels.astype(bool), scores


def auroc(labels, scores) -> float:
  """Area under the ROC curve (``sklearn.metrics.roc_auc_score``: tied scores
  count one half). NaN when only one class is present."""
  labels, scores = _check(labels, scores)
  if labels.all() or not labels.any():
    return float('nan')
  from sklearn import metrics  # pylint: disable=g-import-not-at-top (start-up)
  return float(metrics.roc_auc_score(labels, scores))


def average_precision(labels, scores) -> float:
  """Step-wise (not interpolated) area under the precision-recall curve
  (``sklearn.metrics.average_precision_score``: tied scores form one
  threshold). NaN when there is no anomaly."""
  labels, scores = _check(labels, scores)
  if not labels.any():
    return float('nan')
  from sklearn import metrics  # pylint: disable=g-import-not-at-top (start-up)
  return float(metrics.average_precision_score(labels, scores))


def alert_count(n: int, alert_rate: float) -> int:
  """``ceil(alert_rate * n)``, at least 1 (a hair of float slack)."""
  if not 0 < alert_rate <= 1:
    raise ValueError(f'alert_rate must be in (0, 1], got {alert_rate}')
  return max(1, math.ceil(alert_rate * n - 1e-9))


def precision_recall_at_alert_rate(labels, scores,
                                   alert_rate: float) -> tuple[float, float]:
  """Precision and recall when the top ``alert_rate`` of scores are flagged.

  Exactly ``alert_count(n, alert_rate)`` examples are flagged, the highest
  scores first; among equal scores the earlier example is flagged first.

  Returns:
    ``(precision, recall)``; recall is NaN when there is no anomaly.
  """
  labels, scores = _check(labels, scores)
  k = alert_count(len(scores), alert_rate)
  flagged = np.argsort(-scores, kind='stable')[:k]
  tp = labels[flagged].sum()
  n_pos = labels.sum()
  return float(tp / k), float(tp / n_pos) if n_pos else float('nan')


def anomaly_metrics(labels, scores,
                    alert_rates: Sequence[float] = (0.001, 0.01)
                    ) -> dict[str, float]:
  """AUROC, average precision and precision/recall at each alert rate."""
  out = {'auroc': auroc(labels, scores),
         'average_precision': average_precision(labels, scores)}
  for rate in alert_rates:
    p, r = precision_recall_at_alert_rate(labels, scores, rate)
    out[f'precision@{rate:g}'] = p
    out[f'recall@{rate:g}'] = r
  return out


def isolation_forest_scores(x_train: np.ndarray, x_test: np.ndarray, *,
                            n_estimators: int = 100,
                            max_samples: int | str = 'auto',
                            seed: int = 0, n_jobs: int | None = None
                            ) -> np.ndarray:
  """Fits scikit-learn's IsolationForest on ``x_train``; scores ``x_test``.

  Unsupervised: fit it on the same train rows the model sees (all of them,
  or only the normal ones; say which). Returns ``-score_samples``, so that
  higher is more anomalous like a reconstruction error.
  """
  from sklearn import ensemble  # pylint: disable=g-import-not-at-top

  forest = ensemble.IsolationForest(
      n_estimators=n_estimators, max_samples=max_samples, random_state=seed,
      n_jobs=n_jobs)
  forest.fit(np.asarray(x_train))
  return -forest.score_samples(np.asarray(x_test))
