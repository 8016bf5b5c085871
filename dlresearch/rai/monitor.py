"""Drift monitoring: is live data (or the model on it) unlike the reference?

Statistics, each comparing a reference sample with a live one:

- ``psi``: population stability index over quantile bins of the reference,
  ``sum (a - e) ln(a / e)`` (rule of thumb: < 0.1 stable, > 0.2 shifted).
- ``ks``: two-sample Kolmogorov-Smirnov statistic and p-value
  (``scipy.stats.ks_2samp``).
- ``mmd``: unbiased squared maximum mean discrepancy with a Gaussian kernel
  (bandwidth by the median heuristic) and a permutation p-value; one jitted
  program over all permutations.
- ``prediction_shift``: PSI of the predicted-class histogram and of the
  score (positive-class probability or top-label confidence).
- ``calibration_drift``: expected calibration error now vs. the reference,
  once live labels arrive.

``DriftMonitor`` holds a reference window and turns a live window into these
statistics plus alert strings; ``append_alerts`` writes the alerts to a
run's ``metrics.jsonl`` as ``{"step", "split": "monitor", "alert", ...}``.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import json
import os
from typing import Any
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from dlresearch.rai import audit

ArrayLike = Any


# ------------------------------------------------------------- statistics --


def _proportions(counts: np.ndarray, eps: float) -> np.ndarray:
  p = counts / max(counts.sum(), 1)
  return np.maximum(p, eps)


def _psi_from_counts(expected: np.ndarray, actual: np.ndarray,
                     eps: float) -> float:
  e, a = _proportions(expected, eps), _proportions(actual, eps)
  return float(np.sum((a - e) * np.log(a / e)))


def psi(expected: ArrayLike, actual: ArrayLike, bins: int = 10, *,
        eps: float = 1e-4) -> float:
  """Population stability index of ``actual`` against ``expected``.

  Bin edges are the reference's ``1/bins, ..., (bins-1)/bins`` quantiles
  (duplicates merged, so a discrete feature gets one bin per value); both
  samples' bin fractions are floored at ``eps`` so empty bins stay finite.
  """
  expected = np.asarray(expected, np.float64).reshape(-1)
  actual = np.asarray(actual, np.float64).reshape(-1)
  if not expected.size or not actual.size:
    raise ValueError('psi needs non-empty samples')
  edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
  n = len(edges) + 1
  e = np.bincount(np.searchsorted(edges, expected, side='right'), minlength=n)
  a = np.bincount(np.searchsorted(edges, actual, side='right'), minlength=n)
  return _psi_from_counts(e, a, eps)


def category_psi(expected: ArrayLike, actual: ArrayLike, num_categories: int,
                 *, eps: float = 1e-4) -> float:
  """PSI between the histograms of two samples of int categories."""
  e = np.bincount(np.asarray(expected, np.int64).reshape(-1),
                  minlength=num_categories)
  a = np.bincount(np.asarray(actual, np.int64).reshape(-1),
                  minlength=num_categories)
  return _psi_from_counts(e, a, eps)


def ks(expected: ArrayLike, actual: ArrayLike) -> tuple[float, float]:
  """Two-sample KS: ``(statistic, p_value)``, two-sided (``scipy.stats.ks_2samp``).

  The statistic is the largest gap between the two empirical CDFs; scipy
  picks the exact p-value where it can compute it and the asymptotic one
  otherwise (silently: its fallback warning is dropped).
  """
  x = np.asarray(expected, np.float64).reshape(-1)
  y = np.asarray(actual, np.float64).reshape(-1)
  if not len(x) or not len(y):
    raise ValueError('ks needs non-empty samples')
  with warnings.catch_warnings():
    # scipy tries the exact p-value up to 10,000 rows a side and says so
    # when it falls back to the asymptotic one: expected here, not news.
    warnings.filterwarnings('ignore', 'ks_2samp: Exact calculation unsuccessful')
    result = stats.ks_2samp(x, y)
  return float(result.statistic), float(result.pvalue)


@functools.partial(jax.jit, static_argnums=(2, 5))
def _mmd(x, y, n, key, bandwidth, num_permutations):
  z = jnp.concatenate([x, y]).astype(jnp.float32)
  total = z.shape[0]
  m = total - n
  sq = jnp.sum(z * z, 1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
  if bandwidth is None:
    upper = d2[jnp.triu_indices(total, 1)]
    bandwidth = jnp.sqrt(jnp.median(upper))
    bandwidth = jnp.where(bandwidth > 0, bandwidth, 1.0)
  kernel = jnp.exp(-d2 / (2 * bandwidth**2))

  def stat(member):  # member: [..., total] 1.0 for "x" rows.
    other = 1.0 - member
    kx = member @ kernel
    kxx = jnp.sum(kx * member, -1) - n  # drop the diagonal (k(z, z) = 1)
    kxy = jnp.sum(kx * other, -1)
    kyy = jnp.sum((other @ kernel) * other, -1) - m
    return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (n * m)

  member = (jnp.arange(total) < n).astype(jnp.float32)
  observed = stat(member)
  keys = jax.random.split(key, num_permutations)
  perms = jax.vmap(lambda k: jax.random.permutation(k, member))(keys)
  null = stat(perms)
  p_value = (1 + jnp.sum(null >= observed)) / (1 + num_permutations)
  return observed, p_value, bandwidth


def mmd(x: ArrayLike, y: ArrayLike, *, bandwidth: float | None = None,
        num_permutations: int = 200, seed: int = 0,
        max_samples: int = 1000) -> dict[str, float]:
  """Gaussian-kernel MMD two-sample test.

  Args:
    x: [n, d] reference sample (a 1-D array is one feature).
    y: [m, d] live sample.
    bandwidth: kernel width sigma in ``exp(-|a - b|^2 / (2 sigma^2))``;
      None: the median pairwise distance of the pooled sample.
    num_permutations: permutations of the pooled sample for the p-value
      ``(1 + #{null >= observed}) / (1 + num_permutations)``.
    seed: seeds the permutations and the subsampling.
    max_samples: each sample is subsampled (without replacement, seeded) to
      at most this many rows; memory and time grow with its square.

  Returns:
    ``{'mmd2': unbiased MMD^2, 'p_value', 'bandwidth'}``.
  """
  rng = np.random.default_rng(seed)

  def prep(a):
    a = np.asarray(a, np.float32)
    a = a.reshape(len(a), -1)
    if len(a) > max_samples:
      a = a[np.sort(rng.choice(len(a), max_samples, replace=False))]
    return a

  x, y = prep(x), prep(y)
  if len(x) < 2 or len(y) < 2:
    raise ValueError('mmd needs at least 2 rows in each sample')
  mmd2, p, bw = _mmd(x, y, len(x), jax.random.key(seed),
                     None if bandwidth is None else float(bandwidth),
                     num_permutations)
  return {'mmd2': float(mmd2), 'p_value': float(p), 'bandwidth': float(bw)}


def _predicted(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """(predicted class, score, number of classes) from [N] or [N, C]."""
  if scores.ndim == 1:  # positive-class probability
    return (scores > 0.5).astype(np.int64), scores, 2
  return scores.argmax(1), scores.max(1), scores.shape[1]


def prediction_shift(reference_scores: ArrayLike, live_scores: ArrayLike, *,
                     bins: int = 10) -> dict[str, float]:
  """PSI of the predicted-class histogram and of the score.

  ``scores``: [N] positive-class probabilities (predicted class: > 0.5) or
  [N, C] class probabilities (predicted class: argmax; score: its
  probability).
  """
  ref = np.asarray(reference_scores, np.float64)
  live = np.asarray(live_scores, np.float64)
  ref_cls, ref_score, c = _predicted(ref)
  live_cls, live_score, _ = _predicted(live)
  return {'predicted_class_psi': category_psi(ref_cls, live_cls, c),
          'score_psi': psi(ref_score, live_score, bins)}


def ece(scores: ArrayLike, labels: ArrayLike, num_bins: int = 10) -> float:
  """ECE: positive-class for [N] scores, top-label for [N, C] scores."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).reshape(-1)
  if scores.ndim == 1:
    return audit.calibration_error(scores, labels == 1, num_bins)
  return audit.calibration_error(scores.max(1), scores.argmax(1) == labels,
                                 num_bins)


def calibration_drift(reference_scores: ArrayLike,
                      reference_labels: ArrayLike, live_scores: ArrayLike,
                      live_labels: ArrayLike, *,
                      num_bins: int = 10) -> dict[str, float]:
  """``{'ece_reference', 'ece_live', 'ece_change'}`` (live - reference)."""
  before = ece(reference_scores, reference_labels, num_bins)
  now = ece(live_scores, live_labels, num_bins)
  return {'ece_reference': before, 'ece_live': now, 'ece_change': now - before}


# ---------------------------------------------------------------- monitor --


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """When ``DriftMonitor.check`` raises an alert.

  ``ks_p_value`` is for the whole feature family: each feature's p-value is
  compared with ``ks_p_value / num_features`` (Bonferroni).
  """

  feature_psi: float = 0.2
  ks_p_value: float = 0.01
  mmd_p_value: float = 0.01
  predicted_class_psi: float = 0.2
  score_psi: float = 0.2
  ece_increase: float = 0.05


class DriftMonitor:
  """Compares live windows of features and scores with a reference window.

  Per-feature PSI and KS run on up to ``max_per_feature`` features
  (skipped for wider inputs such as images: pass embeddings instead); MMD
  runs on all features, standardised with the reference mean and std.
  Calibration drift needs ``reference_labels`` and live ``labels``.
  """

  def __init__(self, reference_features: ArrayLike,
               reference_scores: ArrayLike,
               thresholds: Thresholds | Mapping[str, float] | None = None, *,
               reference_labels: ArrayLike | None = None,
               feature_names: Sequence[str] | None = None, bins: int = 10,
               num_bins: int = 10, num_permutations: int = 200,
               max_mmd_samples: int = 1000, max_per_feature: int = 256,
               seed: int = 0):
    ref = np.asarray(reference_features, np.float64)
    self.reference_features = ref.reshape(len(ref), -1)
    self.reference_scores = np.asarray(reference_scores, np.float64)
    if len(self.reference_scores) != len(ref):
      raise ValueError(f'{len(ref)} reference rows but '
                       f'{len(self.reference_scores)} scores')
    if thresholds is None:
      thresholds = Thresholds()
    elif isinstance(thresholds, Mapping):
      thresholds = Thresholds(**thresholds)
    self.thresholds = thresholds
    self.reference_labels = (None if reference_labels is None
                             else np.asarray(reference_labels))
    dim = self.reference_features.shape[1]
    self.feature_names = (list(feature_names) if feature_names is not None
                          else [f'f{i}' for i in range(dim)])
    if len(self.feature_names) != dim:
      raise ValueError(f'{len(self.feature_names)} feature names for {dim} '
                       'features')
    self.bins, self.num_bins = bins, num_bins
    self.num_permutations, self.max_mmd_samples = (num_permutations,
                                                   max_mmd_samples)
    self.max_per_feature, self.seed = max_per_feature, seed
    self._mean = self.reference_features.mean(0)
    std = self.reference_features.std(0)
    self._std = np.where(std > 0, std, 1.0)

  def check(self, live_features: ArrayLike, live_scores: ArrayLike,
            labels: ArrayLike | None = None) -> dict[str, Any]:
    """Statistics of a live window and the alerts they raise.

    Returns:
      JSON-ready ``{'rows', 'feature_psi': {name: psi}, 'feature_ks':
      {name: {'statistic', 'p_value'}}, 'mmd': {...}, 'prediction': {...},
      'calibration': {...} or None, 'alerts': [str, ...]}``.
    """
    t = self.thresholds
    live = np.asarray(live_features, np.float64)
    live = live.reshape(len(live), -1)
    if live.shape[1] != self.reference_features.shape[1]:
      raise ValueError(f'live features have {live.shape[1]} columns; the '
                       f'reference has {self.reference_features.shape[1]}')
    scores = np.asarray(live_scores, np.float64)
    alerts = []
    out = {'rows': len(live), 'feature_psi': {}, 'feature_ks': {}}
    dim = live.shape[1]
    if dim <= self.max_per_feature:
      for j, name in enumerate(self.feature_names):
        value = psi(self.reference_features[:, j], live[:, j], self.bins)
        stat, p = ks(self.reference_features[:, j], live[:, j])
        out['feature_psi'][name] = value
        out['feature_ks'][name] = {'statistic': stat, 'p_value': p}
        if value > t.feature_psi:
          alerts.append(f'feature {name}: PSI {value:.3f} > {t.feature_psi}')
        if p < t.ks_p_value / dim:
          alerts.append(f'feature {name}: KS {stat:.3f}, p {p:.2g} < '
                        f'{t.ks_p_value}/{dim}')
    out['mmd'] = mmd((self.reference_features - self._mean) / self._std,
                     (live - self._mean) / self._std,
                     num_permutations=self.num_permutations, seed=self.seed,
                     max_samples=self.max_mmd_samples)
    if out['mmd']['p_value'] < t.mmd_p_value:
      alerts.append(f'features: MMD^2 {out["mmd"]["mmd2"]:.4f}, p '
                    f'{out["mmd"]["p_value"]:.3g} < {t.mmd_p_value}')
    out['prediction'] = prediction_shift(self.reference_scores, scores,
                                         bins=self.bins)
    for key in ('predicted_class_psi', 'score_psi'):
      limit = getattr(t, key)
      if out['prediction'][key] > limit:
        alerts.append(f'predictions: {key} {out["prediction"][key]:.3f} > '
                      f'{limit}')
    out['calibration'] = None
    if labels is not None and self.reference_labels is not None:
      cal = calibration_drift(self.reference_scores, self.reference_labels,
                              scores, labels, num_bins=self.num_bins)
      out['calibration'] = cal
      if cal['ece_change'] > t.ece_increase:
        alerts.append(f'calibration: ECE {cal["ece_reference"]:.3f} -> '
                      f'{cal["ece_live"]:.3f} (+{cal["ece_change"]:.3f} > '
                      f'{t.ece_increase})')
    out['alerts'] = alerts
    return audit.jsonable(out)


def append_alerts(path: str | os.PathLike, alerts: Sequence[str], *,
                  step: int, **fields: Any) -> int:
  """Appends ``{"step", "split": "monitor", "alert", **fields}`` lines.

  Each alert is one complete JSON line written with a single ``write`` and
  flushed (the format of ``logging.JsonlWriter``; non-finite numbers become
  null). Returns the number of lines written.
  """
  if not alerts:
    return 0
  extra = audit.jsonable(dict(fields))
  with open(path, 'a', encoding='utf-8') as f:
    for alert in alerts:
      line = {'step': int(step), 'split': 'monitor', 'alert': str(alert),
              **extra}
      f.write(json.dumps(line, allow_nan=False) + '\n')
      f.flush()
  return len(alerts)
