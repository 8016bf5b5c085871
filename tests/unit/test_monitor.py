"""Tests for dlresearch.rai.monitor: each statistic fires on a planted shift."""

import json

import numpy as np
import pytest
from scipy import stats

from dlresearch.rai import monitor


def _normal(seed, n, loc=0.0, scale=1.0, dim=None):
  rng = np.random.default_rng(seed)
  return rng.normal(loc, scale, n if dim is None else (n, dim))


def test_psi_quiet_without_shift_and_fires_on_shift():
  ref = _normal(0, 5000)
  assert monitor.psi(ref, _normal(1, 5000)) < 0.02
  assert monitor.psi(ref, _normal(2, 5000, loc=0.5)) > 0.2
  # Hand case: two bins split at the median, live 75/25 instead of 50/50.
  ref = np.array([0, 0, 1, 1.0])
  live = np.array([0, 0, 0, 1.0])
  expected = (0.75 - 0.5) * np.log(0.75 / 0.5) + (0.25 - 0.5) * np.log(0.5)
  assert monitor.psi(ref, live, bins=2) == pytest.approx(expected)


def test_ks_statistic_is_the_largest_cdf_gap_and_p_is_scipys():
  cases = [(0, 500, 400, 0.0), (1, 500, 400, 0.1), (2, 1000, 1000, 0.1),
           (3, 200, 3000, 0.2), (4, 100, 80, 0.3)]
  for seed, n, m, shift in cases:
    a, b = _normal(seed, n), _normal(seed + 10, m, loc=shift)
    stat, p = monitor.ks(a, b)
    points = np.concatenate([a, b])
    gap = np.max(np.abs(np.searchsorted(np.sort(a), points, side='right') / n
                        - np.searchsorted(np.sort(b), points, side='right') / m))
    assert stat == pytest.approx(gap, abs=1e-12)
    assert p == stats.ks_2samp(a, b).pvalue
  # Ties (discrete data) too.
  a = np.random.default_rng(5).integers(0, 5, 300)
  b = np.random.default_rng(6).integers(0, 6, 300)
  assert monitor.ks(a, b)[0] == pytest.approx(
      stats.ks_2samp(a, b).statistic, abs=1e-12)
  with pytest.raises(ValueError, match='non-empty'):
    monitor.ks([], [1.0])


def test_ks_quiet_and_fires():
  assert monitor.ks(_normal(0, 2000), _normal(1, 2000))[1] > 0.05
  assert monitor.ks(_normal(0, 2000), _normal(1, 2000, scale=1.3))[1] < 1e-4


def test_mmd_quiet_fires_and_is_seeded():
  ref = _normal(0, 200, dim=3)
  same = monitor.mmd(ref, _normal(1, 200, dim=3), num_permutations=200)
  # A shift no single feature's marginal shows: correlation flips sign.
  rng = np.random.default_rng(2)
  z = rng.normal(size=(200, 1))
  corr = np.concatenate([z, z + 0.3 * rng.normal(size=(200, 1))], 1)
  anti = corr * np.array([1.0, -1.0])
  moved = monitor.mmd(corr, anti, num_permutations=200)
  assert same['p_value'] > 0.05
  assert moved['p_value'] < 0.01 and moved['mmd2'] > same['mmd2']
  again = monitor.mmd(ref, _normal(1, 200, dim=3), num_permutations=200)
  assert again == same
  assert same['bandwidth'] > 0


def test_mmd_null_is_calibrated():
  p = [monitor.mmd(_normal(100 + s, 60, dim=2), _normal(200 + s, 60, dim=2),
                   num_permutations=50, seed=s)['p_value'] for s in range(20)]
  # Under the null p is uniform: about 2 of 20 below 0.1, mean about 0.5.
  assert sum(v < 0.1 for v in p) <= 5
  assert 0.3 < np.mean(p) < 0.7


def test_mmd_statistic_against_numpy():
  x, y = _normal(3, 20, dim=2), _normal(4, 15, loc=0.5, dim=2)
  out = monitor.mmd(x, y, bandwidth=1.3, num_permutations=10)
  k = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * 1.69))
  kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
  expected = ((kxx.sum() - 20) / (20 * 19) + (kyy.sum() - 15) / (15 * 14)
              - 2 * kxy.mean())
  assert out['mmd2'] == pytest.approx(expected, rel=1e-4)
  assert out['bandwidth'] == pytest.approx(1.3)


def test_prediction_shift_and_calibration_drift():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet([1, 1, 1], 3000)
  quiet = monitor.prediction_shift(probs[:1500], probs[1500:])
  assert quiet['predicted_class_psi'] < 0.02 and quiet['score_psi'] < 0.05
  skewed = rng.dirichlet([6, 1, 1], 1500)
  loud = monitor.prediction_shift(probs[:1500], skewed)
  assert loud['predicted_class_psi'] > 0.2 and loud['score_psi'] > 0.2
  # Calibrated scores (labels drawn from them) vs. the same scores when the
  # world changed (labels flipped for a third).
  scores = rng.random(4000)
  labels = (rng.random(4000) < scores).astype(int)
  cal = monitor.calibration_drift(scores[:2000], labels[:2000],
                                  scores[2000:], labels[2000:])
  assert abs(cal['ece_change']) < 0.03
  flipped = labels[2000:].copy()
  flipped[:700] = 1 - flipped[:700]
  cal = monitor.calibration_drift(scores[:2000], labels[:2000],
                                  scores[2000:], flipped)
  assert cal['ece_change'] > 0.05


def _window(seed, n=400, shift=0.0):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(n, 3))
  features[:, 1] += shift
  logit = features @ np.array([1.0, 1.0, -0.5])
  scores = 1 / (1 + np.exp(-logit))
  labels = (rng.random(n) < scores).astype(int)
  return features, scores, labels


def test_drift_monitor_quiet_and_alerts(tmp_path):
  # Seeds 0 and 1 happen to give an MMD p-value of 0.004 (a 1-in-250 draw;
  # the test's null calibration is checked in test_mmd_null_is_calibrated).
  features, scores, labels = _window(10)
  mon = monitor.DriftMonitor(features, scores, reference_labels=labels,
                             feature_names=['age', 'income', 'hours'],
                             num_permutations=100)
  live_f, live_s, live_y = _window(11)
  quiet = mon.check(live_f, live_s, live_y)
  assert quiet['alerts'] == []
  assert set(quiet['feature_psi']) == {'age', 'income', 'hours'}
  json.dumps(quiet, allow_nan=False)

  live_f, live_s, live_y = _window(12, shift=1.0)
  live_y = 1 - live_y  # the labels' relation to the scores changed too
  loud = mon.check(live_f, live_s, live_y)
  text = '\n'.join(loud['alerts'])
  assert 'feature income: PSI' in text and 'feature income: KS' in text
  assert 'feature age' not in text and 'feature hours' not in text
  assert 'MMD' in text and 'score_psi' in text and 'calibration' in text

  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 5, "split": "eval", "accuracy": 0.9}\n')
  n = monitor.append_alerts(path, loud['alerts'], step=7,
                            mmd_p_value=loud['mmd']['p_value'],
                            nan_value=float('nan'))
  lines = path.read_text().splitlines()
  assert n == len(loud['alerts']) == len(lines) - 1
  records = [json.loads(line) for line in lines[1:]]
  assert all(r['step'] == 7 and r['split'] == 'monitor' for r in records)
  assert [r['alert'] for r in records] == loud['alerts']
  assert records[0]['nan_value'] is None
  assert monitor.append_alerts(path, [], step=8) == 0


def test_drift_monitor_thresholds_from_mapping():
  features, scores, _ = _window(0)
  mon = monitor.DriftMonitor(features, scores, {'feature_psi': 0.0},
                             num_permutations=20)
  out = mon.check(*_window(1)[:2])
  assert sum('PSI' in a for a in out['alerts']) == 3
  with pytest.raises(TypeError):
    monitor.DriftMonitor(features, scores, {'psi_typo': 0.1})
