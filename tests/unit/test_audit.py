"""Tests for dlresearch.rai.audit against fairlearn and hand-computed cases."""

import csv
import json

from fairlearn import metrics as flm
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from sklearn import metrics as skm

from dlresearch import group_metrics
from dlresearch.rai import audit, pictures


def _random_case(n=600, seed=0):
  rng = np.random.default_rng(seed)
  groups = rng.choice(['a', 'b', 'c'], size=n, p=[0.5, 0.3, 0.2])
  labels = rng.integers(0, 2, n)
  # Group-dependent scores so the gaps are not all ~0.
  shift = np.select([groups == 'a', groups == 'b'], [0.15, -0.1], 0.0)
  scores = np.clip(0.35 * labels + 0.3 * rng.random(n) + 0.2 + shift, 0, 1)
  predictions = (scores > 0.5).astype(np.int64)
  return labels, predictions, scores, groups


def test_model_audit_matches_fairlearn():
  labels, predictions, scores, groups = _random_case()
  report = audit.model_audit(labels, predictions, scores, {'g': groups},
                             n_bootstrap=0)
  frame = flm.MetricFrame(
      metrics={
          'accuracy': skm.accuracy_score,
          'selection_rate': flm.selection_rate,
          'tpr': flm.true_positive_rate,
          'fpr': flm.false_positive_rate,
          'precision': skm.precision_score,
          'count': flm.count,
      },
      y_true=labels, y_pred=predictions, sensitive_features=groups)
  by_group = frame.by_group
  assert list(report['groups']['g']) == ['a', 'b', 'c']
  for name, entry in report['groups']['g'].items():
    assert entry['count'] == by_group.loc[name, 'count']
    for metric in ('accuracy', 'selection_rate', 'tpr', 'fpr', 'precision'):
      assert entry[metric]['value'] == pytest.approx(
          by_group.loc[name, metric], abs=1e-12), (name, metric)
      assert entry[metric]['ci'] is None
  for metric in ('accuracy', 'selection_rate', 'tpr', 'fpr', 'precision'):
    assert report['overall'][metric]['value'] == pytest.approx(
        frame.overall[metric], abs=1e-12)
  gaps = report['gaps']['g']
  kw = dict(y_true=labels, y_pred=predictions, sensitive_features=groups)
  expected = {
      'demographic_parity_difference': flm.demographic_parity_difference(**kw),
      'demographic_parity_ratio': flm.demographic_parity_ratio(**kw),
      'equalized_odds_difference': flm.equalized_odds_difference(**kw),
  }
  for gap, value in expected.items():
    assert gaps[gap]['value'] == pytest.approx(value, abs=1e-12), gap
  assert gaps['demographic_parity_difference']['value'] > 0.05


def test_model_audit_hand_computed():
  # Group x: labels 1 1 0 0, predictions 1 0 1 0; group y: 1 0 / 1 1.
  labels = np.array([1, 1, 0, 0, 1, 0])
  predictions = np.array([1, 0, 1, 0, 1, 1])
  scores = np.array([0.9, 0.4, 0.6, 0.1, 0.75, 0.75])
  groups = np.array(['x', 'x', 'x', 'x', 'y', 'y'])
  r = audit.model_audit(labels, predictions, scores, groups, n_bootstrap=0,
                        num_bins=2)
  x, y = r['groups']['group']['x'], r['groups']['group']['y']
  assert x['count'] == 4 and y['count'] == 2
  assert x['accuracy']['value'] == 0.5 and y['accuracy']['value'] == 0.5
  assert x['selection_rate']['value'] == 0.5
  assert y['selection_rate']['value'] == 1.0
  assert x['tpr']['value'] == 0.5 and y['tpr']['value'] == 1.0
  assert x['fpr']['value'] == 0.5 and y['fpr']['value'] == 1.0
  assert x['fnr']['value'] == 0.5 and y['fnr']['value'] == 0.0
  assert x['precision']['value'] == 0.5 and y['precision']['value'] == 0.5
  # x: bin [0, .5): scores .4 .1 labels 1 0 -> |0.5 - 1| ; bin [.5, 1]:
  # .9 .6 labels 1 0 -> |1.5 - 1| ; ECE = (0.5 + 0.5) / 4.
  assert x['ece']['value'] == pytest.approx(0.25)
  # y: one bin, scores .75 .75, labels 1 0 -> |1.5 - 1| / 2.
  assert y['ece']['value'] == pytest.approx(0.25)
  gaps = r['gaps']['group']
  assert gaps['demographic_parity_difference']['value'] == 0.5
  assert gaps['demographic_parity_ratio']['value'] == 0.5
  assert gaps['equalized_odds_difference']['value'] == 0.5


def test_undefined_rates_are_null_and_ignored_in_gaps():
  # Group z has no positives: its TPR is undefined (None), not 0.
  labels = np.array([1, 0, 1, 0, 0, 0])
  predictions = np.array([1, 0, 0, 0, 1, 0])
  groups = np.array(['w', 'w', 'w', 'w', 'z', 'z'])
  r = audit.model_audit(labels, predictions, predictions.astype(float),
                        groups, n_bootstrap=0)
  assert r['groups']['group']['z']['tpr']['value'] is None
  # TPR gap over w alone is 0; FPR gap: w 0/2, z 1/2.
  assert r['gaps']['group']['equalized_odds_difference']['value'] == 0.5
  json.dumps(r, allow_nan=False)


def test_calibration_error_perfect_and_worst():
  scores = np.array([0.05, 0.05, 0.95, 0.95])
  assert audit.calibration_error(scores, [0, 0, 1, 1]) == pytest.approx(0.05)
  assert audit.calibration_error(scores, [1, 1, 0, 0]) == pytest.approx(0.95)


def test_bootstrap_reproducible_and_matches_naive_resampling(capsys):
  labels, predictions, scores, groups = _random_case(n=300, seed=1)
  kw = dict(n_bootstrap=200, confidence=0.9)
  a = audit.model_audit(labels, predictions, scores, {'g': groups}, seed=3,
                        **kw)
  b = audit.model_audit(labels, predictions, scores, {'g': groups}, seed=3,
                        **kw)
  c = audit.model_audit(labels, predictions, scores, {'g': groups}, seed=4,
                        progress='lines', **kw)
  assert a == b
  assert a['groups']['g']['a']['accuracy']['ci'] != (
      c['groups']['g']['a']['accuracy']['ci'])
  # Same draws, resampled the slow way.
  idx = np.random.default_rng(3).integers(0, 300, size=(200, 300))
  accs, dpds = [], []
  for row in idx:
    y, p, g = labels[row], predictions[row], groups[row]
    accs.append(np.mean(y[g == 'a'] == p[g == 'a']))
    sel = [np.mean(p[g == k]) for k in 'abc']
    dpds.append(max(sel) - min(sel))
  ci = a['groups']['g']['a']['accuracy']['ci']
  np.testing.assert_allclose(ci, np.percentile(accs, [5, 95]), atol=1e-12)
  ci = a['gaps']['g']['demographic_parity_difference']['ci']
  np.testing.assert_allclose(ci, np.percentile(dpds, [5, 95]), atol=1e-12)
  low, high = a['groups']['g']['a']['accuracy']['ci']
  assert low < a['groups']['g']['a']['accuracy']['value'] < high
  # With progress: what it does and how big first, then a done line with
  # all 400 resamples (200 overall + 200 for the one attribute).
  err = capsys.readouterr().err.splitlines()
  assert err[0] == ('audit: bootstrap intervals over 300 examples (400 '
                    'resamples, 200 for the overall metrics and again for '
                    'each of 1 group attribute(s)) ...'), err
  assert err[-1].startswith('audit: bootstrap intervals over 300 examples: '
                            'done, 400 resamples in ')


def test_data_audit_counts_rates_and_small_groups():
  labels = np.array([1, 0, 0, 1, 1, 0, 0, 0])
  sex = np.array(['F', 'F', 'M', 'M', 'M', 'M', 'M', 'M'])
  r = audit.data_audit(labels, {'sex': sex}, min_group_size=3)
  assert r['rows'] == 8
  assert r['label_rate'] == 3 / 8
  assert r['class_balance'] == {'0': 5 / 8, '1': 3 / 8}
  f, m = r['groups']['sex']['F'], r['groups']['sex']['M']
  assert (f['count'], f['fraction'], f['label_rate']) == (2, 0.25, 0.5)
  assert (m['count'], m['fraction'], m['label_rate']) == (6, 0.75, 2 / 6)
  assert f['small'] and not m['small']
  assert r['small_groups'] == ['sex=F']


def test_jnp_group_sums_equal_numpy_audit():
  labels, predictions, scores, groups = _random_case(n=250, seed=2)
  names, ids = np.unique(groups, return_inverse=True)
  # Logits whose argmax is the prediction; pad the last batch.
  logits = np.stack([np.zeros_like(scores), scores - 0.5], 1)
  assert (logits.argmax(1) == predictions).all()
  step = jax.jit(group_metrics.group_metric_sums, static_argnums=4)
  total = None
  for start in range(0, 250, 100):
    sl = slice(start, start + 100)
    pad = 100 - len(labels[sl])
    valid = np.r_[np.ones(len(labels[sl])), np.zeros(pad)].astype(np.float32)
    padded = lambda a: np.concatenate([a[sl], np.repeat(a[:1], pad, 0)])
    sums = step(jnp.asarray(padded(logits)), jnp.asarray(padded(labels)),
                jnp.asarray(valid), jnp.asarray(padded(ids)), len(names))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  out = group_metrics.finalize_group_metrics(total, list(names), 'g')
  ref = audit.model_audit(labels, predictions, scores, {'g': groups},
                          n_bootstrap=0)
  for name in names:
    entry = ref['groups']['g'][name]
    assert out[f'group/g={name}/count'] == entry['count']
    for metric in ('accuracy', 'selection_rate', 'tpr', 'fpr'):
      assert out[f'group/g={name}/{metric}'] == pytest.approx(
          entry[metric]['value'], abs=1e-6)
  for gap in audit.GAP_METRICS:
    assert out[f'fairness/g/{gap}'] == pytest.approx(
        ref['gaps']['g'][gap]['value'], abs=1e-6)
  assert set(out) >= {'group/g=a/accuracy', 'group/g=b/selection_rate',
                      'group/g=c/tpr', 'group/g=c/fpr',
                      'fairness/g/demographic_parity_difference',
                      'fairness/g/demographic_parity_ratio',
                      'fairness/g/equalized_odds_difference'}


def test_write_report(tmp_path):
  labels, predictions, scores, groups = _random_case(n=120, seed=5)
  report = audit.model_audit(labels, predictions, scores, {'g': groups},
                             n_bootstrap=50)
  report['data'] = audit.data_audit(labels, {'g': groups})
  paths = audit.write_report(tmp_path / 'audit', report, {
      'label': labels, 'prediction': predictions, 'score': scores,
      'group': groups})
  names = {p.name for p in paths}
  assert {'report.json', 'predictions.csv', 'g_accuracy.png', 'g_tpr.png',
          'g_ece.png', 'g_gaps.png'} <= names
  loaded = json.loads((tmp_path / 'audit' / 'report.json').read_text())
  assert loaded['groups']['g']['b']['accuracy'] == (
      report['groups']['g']['b']['accuracy'])
  with open(tmp_path / 'audit' / 'predictions.csv', newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['label', 'prediction', 'score', 'group']
  assert len(rows) == 121
  assert rows[1] == [str(labels[0]), str(predictions[0]),
                     repr(float(scores[0])), groups[0]]
  with Image.open(tmp_path / 'audit' / 'g_accuracy.png') as im:
    assert im.format == 'PNG' and im.size == pictures.GROUP_SIZE
  with Image.open(tmp_path / 'audit' / 'g_gaps.png') as im:
    assert im.size == pictures.GAPS_SIZE
    assert np.asarray(im.convert('L')).std() > 10  # not blank

