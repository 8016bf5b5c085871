"""Fairness audits of data and of a classifier's predictions, per group.

Three layers, all vectorised:

- ``data_audit``: representation and label balance per sensitive group, with
  groups smaller than a minimum size flagged.
- ``model_audit``: per-group accuracy, selection rate, TPR, FPR, FNR,
  precision and expected calibration error, the fairness gaps between
  groups, and seeded percentile bootstrap intervals for all of them. Plain NumPy; the
  gap definitions are fairlearn's (checked against it in the tests).
- The same confusion counts as masked jnp sums inside a jitted eval step
  (``--audit_group``) live in the engine, ``dlresearch/group_metrics.py``,
  whose ``fairness_gaps`` this module shares.

Binary conventions: the positive class is ``pos_label`` (default 1);
``predictions`` are class ids, ``scores`` the model's probability of the
positive class. With more than two classes, TPR/FPR/selection rate are
one-vs-rest for ``pos_label``.

Gaps over the groups of one attribute (fairlearn's definitions, groups with
no examples or an undefined rate left out):

- ``demographic_parity_difference``: max - min selection rate;
- ``demographic_parity_ratio``: min / max selection rate;
- ``equalized_odds_difference``: max(TPR max - min, FPR max - min).

``write_report`` writes ``report.json`` (NaN as null), ``predictions.csv``
(``label,prediction,score,group``) and one PNG bar chart per metric with the
bootstrap intervals.
"""

from collections.abc import Mapping, Sequence
import csv
import functools
import json
import math
import os
import pathlib
from typing import Any
import warnings

import numpy as np

from dlresearch import logging as log_lib
from dlresearch.group_metrics import COUNT_NAMES, GAP_METRICS, fairness_gaps
from dlresearch.group_metrics import safe_div as _div

ArrayLike = Any
Groups = Mapping[str, ArrayLike]

GROUP_METRICS = ('accuracy', 'selection_rate', 'tpr', 'fpr', 'fnr',
                 'precision', 'ece')


# ------------------------------------------------------------- helpers --


def _as_groups(groups: Groups | ArrayLike, n: int) -> dict[str, np.ndarray]:
  """``{attribute: values [n]}``; a bare array becomes attribute 'group'."""
  if not isinstance(groups, Mapping):
    groups = {'group': groups}
  out = {}
  for attr, values in groups.items():
    values = np.asarray(values)
    if values.shape != (n,):
      raise ValueError(f'group column {attr!r} has shape {values.shape}; '
                       f'expected ({n},)')
    out[str(attr)] = values
  if not out:
    raise ValueError('no group columns given')
  return out


def _encode(values: np.ndarray) -> tuple[list[str], np.ndarray]:
  """Sorted distinct values as strings, and each example's index into them."""
  uniques, ids = np.unique(values, return_inverse=True)
  return [str(u) for u in uniques], ids.reshape(-1)


def jsonable(x):
  """Nested dicts/lists of NumPy values -> plain Python; NaN/inf -> None."""
  if isinstance(x, Mapping):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    x = float(x)
    return x if math.isfinite(x) else None
  return x


def calibration_error(confidence: ArrayLike, outcome: ArrayLike,
                      num_bins: int = 10) -> float:
  """Expected calibration error with ``num_bins`` equal-width bins on [0, 1].

  ``sum_b (n_b / n) |mean(confidence_b) - mean(outcome_b)|``. For a binary
  classifier pass the positive-class score and ``label == positive``; for
  top-label ECE pass the max probability and ``prediction == label``.
  """
  confidence = np.asarray(confidence, np.float64).reshape(-1)
  outcome = np.asarray(outcome, np.float64).reshape(-1)
  if confidence.size == 0:
    return float('nan')
  bins = _bin_ids(confidence, num_bins)
  conf_sum = np.bincount(bins, confidence, minlength=num_bins)
  out_sum = np.bincount(bins, outcome, minlength=num_bins)
  return float(np.abs(conf_sum - out_sum).sum() / confidence.size)


def _bin_ids(scores: np.ndarray, num_bins: int) -> np.ndarray:
  """Equal-width bin of each score in [0, 1]; 1.0 goes to the last bin."""
  return np.clip((scores * num_bins).astype(np.int64), 0, num_bins - 1)


# ----------------------------------------------------------- data audit --


def _class_balance(labels: np.ndarray, classes: np.ndarray,
                   ids: np.ndarray, num_groups: int) -> np.ndarray:
  """[num_groups, num_classes] label fractions within each group."""
  cls = np.searchsorted(classes, labels)
  counts = np.zeros((num_groups, len(classes)))
  np.add.at(counts, (ids, cls), 1)
  return _div(counts, counts.sum(1, keepdims=True))


def data_audit(labels: ArrayLike, groups: Groups | ArrayLike, *,
               min_group_size: int = 30, pos_label: Any = 1) -> dict:
  """Rows, label balance and representation, overall and per group.

  Args:
    labels: [n] class labels.
    groups: ``{attribute: values [n]}`` (values are strings or ints; group
      names are ``str(value)``), or one array (attribute ``'group'``).
    min_group_size: groups with fewer rows are flagged.
    pos_label: the class whose rate is reported as ``label_rate``.

  Returns:
    ``{'rows', 'label_rate', 'class_balance': {class: fraction},
    'min_group_size', 'groups': {attr: {name: {'count', 'fraction',
    'label_rate', 'class_balance', 'small'}}}, 'small_groups': ['attr=name',
    ...]}`` in plain Python types.
  """
  labels = np.asarray(labels).reshape(-1)
  n = labels.shape[0]
  groups = _as_groups(groups, n)
  classes = np.unique(labels)
  overall = _class_balance(labels, classes, np.zeros(n, np.int64), 1)[0]
  report = {
      'rows': n,
      'label_rate': float(np.mean(labels == pos_label)) if n else None,
      'class_balance': dict(zip(map(str, classes), overall)),
      'min_group_size': int(min_group_size),
      'groups': {},
      'small_groups': [],
  }
  for attr, values in groups.items():
    names, ids = _encode(values)
    counts = np.bincount(ids, minlength=len(names))
    rate = _div(np.bincount(ids, labels == pos_label, len(names)), counts)
    balance = _class_balance(labels, classes, ids, len(names))
    entry = {}
    for g, name in enumerate(names):
      small = bool(counts[g] < min_group_size)
      entry[name] = {
          'count': int(counts[g]),
          'fraction': counts[g] / n,
          'label_rate': rate[g],
          'class_balance': dict(zip(map(str, classes), balance[g])),
          'small': small,
      }
      if small:
        report['small_groups'].append(f'{attr}={name}')
    report['groups'][attr] = entry
  return jsonable(report)


# ---------------------------------------------------------- model audit --


def _example_values(labels, predictions, scores, pos_label) -> np.ndarray:
  """[n, 10] per example: the 7 ``COUNT_NAMES`` indicators, then 1, score
  and the positive-label indicator (for the calibration bins)."""
  pos = labels == pos_label
  ppos = predictions == pos_label
  ones = np.ones(labels.shape[0])
  return np.stack([ones, predictions == labels, ppos, pos & ppos, ~pos & ppos,
                   pos & ~ppos, ~pos & ~ppos, ones, scores, pos],
                  1).astype(np.float64)


def _weighted_sums(values: np.ndarray, cells: np.ndarray, num_cells: int,
                   weights: np.ndarray) -> np.ndarray:
  """[b, num_cells, Q]: sums of ``weights[b] * values`` per cell.

  One bincount per value column over all ``b`` weight vectors at once (the
  cell index offset by ``num_cells`` per weight vector); memory O(b n).
  """
  b = weights.shape[0]
  flat = (cells[None, :] + num_cells * np.arange(b)[:, None]).reshape(-1)
  out = [np.bincount(flat, (weights * values[:, j]).reshape(-1), b * num_cells)
         for j in range(values.shape[1])]
  return np.stack(out, -1).reshape(b, num_cells, values.shape[1])


def _group_sums(values, ids, bins, num_groups, num_bins, weights):
  """(confusion [b, G, 7], calibration [b, G, num_bins, 3]) sums."""
  k = len(COUNT_NAMES)
  conf = _weighted_sums(values[:, :k], ids, num_groups, weights)
  calib = _weighted_sums(values[:, k:], ids * num_bins + bins,
                         num_groups * num_bins, weights)
  return conf, calib.reshape(-1, num_groups, num_bins, 3)


def _metrics_from_sums(conf: np.ndarray,
                       calib: np.ndarray) -> dict[str, np.ndarray]:
  """Per-group metrics [..., G] from confusion [..., G, 7] and calibration
  [..., G, num_bins, 3] sums."""
  count, correct, ppos, tp, fp, fn, tn = np.moveaxis(conf, -1, 0)
  ece_num = np.abs(calib[..., 1] - calib[..., 2]).sum(-1)
  return {
      'count': count,
      'accuracy': _div(correct, count),
      'selection_rate': _div(ppos, count),
      'tpr': _div(tp, tp + fn),
      'fpr': _div(fp, fp + tn),
      'fnr': _div(fn, tp + fn),
      'precision': _div(tp, tp + fp),
      'ece': _div(ece_num, count),
  }


def _interval(samples: np.ndarray, alpha: float) -> np.ndarray:
  """[2, ...] percentile interval over axis 0, ignoring NaN resamples."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # all-NaN columns
    return np.nanpercentile(samples, [100 * alpha, 100 * (1 - alpha)], axis=0)


def _bootstrap_weights(n: int, n_bootstrap: int, seed: int,
                       chunk: int = 64):
  """Yields [b, n] resampling counts, ``chunk`` resamples at a time.

  Resample ``r`` draws n row indices with replacement (``seed`` fixes them
  all); its weight vector counts how often each row was drawn.
  """
  rng = np.random.default_rng(seed)
  for start in range(0, n_bootstrap, chunk):
    b = min(chunk, n_bootstrap - start)
    idx = rng.integers(0, n, size=(b, n))
    flat = (idx + n * np.arange(b)[:, None]).reshape(-1)
    yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _audit_grouping(per_example: np.ndarray, bins: np.ndarray, num_bins: int,
                    n_bootstrap: int, seed: int, phase, ids: np.ndarray,
                    num_groups: int):
  """(metrics, bootstrap metrics or None) for one grouping of the examples.

  Every grouping draws the same resamples (same seed, same n).
  """
  n = per_example.shape[0]
  sums = _group_sums(per_example, ids, bins, num_groups, num_bins,
                     np.ones((1, n)))
  m = {k: v[0] for k, v in _metrics_from_sums(*sums).items()}
  if n_bootstrap <= 0:
    return m, None
  parts = []
  for w in _bootstrap_weights(n, n_bootstrap, seed):
    parts.append(_group_sums(per_example, ids, bins, num_groups, num_bins, w))
    phase.update(len(w))
  return m, _metrics_from_sums(np.concatenate([p[0] for p in parts]),
                               np.concatenate([p[1] for p in parts]))


def _entries(values: np.ndarray, samples: np.ndarray | None,
             alpha: float) -> list[dict]:
  """[{'value', 'ci'}] per last-axis position of values [G] / samples."""
  ci = None if samples is None else _interval(samples, alpha)
  return [{'value': values[i], 'ci': None if ci is None else ci[:, i]}
          for i in range(values.shape[-1])]


def _pick(samples: dict | None, k: str, scalar: bool = False):
  """Metric ``k``'s bootstrap samples ([b, G], or [b, 1] for a scalar)."""
  if samples is None:
    return None
  return samples[k][:, None] if scalar else samples[k]


def model_audit(labels: ArrayLike, predictions: ArrayLike, scores: ArrayLike,
                groups: Groups | ArrayLike, *, n_bootstrap: int = 1000,
                seed: int = 0, num_bins: int = 10, confidence: float = 0.95,
                pos_label: Any = 1, progress: str = 'none') -> dict:
  """Per-group metrics, fairness gaps and bootstrap intervals.

  Args:
    labels: [n] true classes.
    predictions: [n] predicted classes.
    scores: [n] predicted probability of ``pos_label`` (for the ECE).
    groups: ``{attribute: values [n]}`` or one array (attribute 'group').
    n_bootstrap: resamples of the n examples (rows resampled jointly, not
      within groups); 0 gives no intervals.
    seed: the resampling seed; the same seed gives the same intervals.
    num_bins: equal-width calibration bins on [0, 1].
    confidence: width of the percentile intervals.
    pos_label: the positive class.
    progress: how the bootstrap shows itself (``logging.Phase``: 'auto',
      'bar', 'lines'; 'none', the default, prints nothing).

  Returns:
    JSON-ready dict: ``{'n', 'n_bootstrap', 'seed', 'confidence',
    'num_bins', 'overall': {metric: {'value', 'ci'}}, 'groups': {attr:
    {name: {'count', metric: {'value', 'ci'}}}}, 'gaps': {attr: {gap:
    {'value', 'ci'}}}}``; ``ci`` is ``[low, high]`` (None without
    bootstrap); undefined values (a group with no positives has no TPR) are
    None.
  """
  labels = np.asarray(labels).reshape(-1)
  predictions = np.asarray(predictions).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  n = labels.shape[0]
  if predictions.shape != (n,) or scores.shape != (n,):
    raise ValueError(f'labels {labels.shape}, predictions '
                     f'{predictions.shape} and scores {scores.shape} differ')
  if n == 0:
    raise ValueError('model_audit needs at least one example')
  groups = _as_groups(groups, n)
  alpha = (1.0 - confidence) / 2.0

  per_example = _example_values(labels, predictions, scores, pos_label)
  n_bootstrap = max(int(n_bootstrap), 0)
  phase = log_lib.Phase(
      f'audit: bootstrap intervals over {n:,} examples',
      n_bootstrap * (1 + len(groups)) or None, 'resample',
      detail=f'{n_bootstrap:,} for the overall metrics and again for each of '
      f'{len(groups)} group attribute(s)',
      progress=progress if n_bootstrap else 'none')
  grouping = functools.partial(
      _audit_grouping, per_example, _bin_ids(scores, num_bins), num_bins,
      n_bootstrap, seed, phase)
  report = {'n': n, 'n_bootstrap': n_bootstrap, 'seed': int(seed),
            'confidence': confidence, 'num_bins': int(num_bins),
            'overall': {}, 'groups': {}, 'gaps': {}}
  with phase:
    m, boot = grouping(np.zeros(n, np.int64), 1)
    report['overall'] = {k: _entries(m[k], _pick(boot, k), alpha)[0]
                         for k in GROUP_METRICS}
    for attr, values in groups.items():
      names, ids = _encode(values)
      m, boot = grouping(ids, len(names))
      per_metric = {k: _entries(m[k], _pick(boot, k), alpha)
                    for k in GROUP_METRICS}
      report['groups'][attr] = {
          name: {'count': int(m['count'][g]),
                 **{k: per_metric[k][g] for k in GROUP_METRICS}}
          for g, name in enumerate(names)}
      gaps = fairness_gaps(m['selection_rate'], m['tpr'], m['fpr'])
      boot_gaps = None if boot is None else fairness_gaps(
          boot['selection_rate'], boot['tpr'], boot['fpr'])
      report['gaps'][attr] = {
          k: _entries(np.atleast_1d(gaps[k]), _pick(boot_gaps, k, True),
                      alpha)[0]
          for k in GAP_METRICS}
  return jsonable(report)


# --------------------------------------------------------------- report --

PREDICTION_COLUMNS = ('label', 'prediction', 'score', 'group')


def write_predictions_csv(path: str | os.PathLike,
                          predictions: Mapping[str, ArrayLike]) -> None:
  """``label,prediction,score,group`` rows (any mapping with those keys,
  e.g. a dict of arrays or a pandas DataFrame)."""
  cols = [np.asarray(predictions[c]).reshape(-1) for c in PREDICTION_COLUMNS]
  n = cols[0].shape[0]
  if any(c.shape[0] != n for c in cols):
    raise ValueError('prediction columns differ in length: '
                     f'{[c.shape[0] for c in cols]}')
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(PREDICTION_COLUMNS)
    for label, pred, score, group in zip(*(c.tolist() for c in cols)):
      writer.writerow([label, pred, repr(float(score)), group])


def write_report(directory: str | os.PathLike, report: Mapping[str, Any],
                 predictions: Mapping[str, ArrayLike] | None = None,
                 ) -> list[pathlib.Path]:
  """Writes ``report.json``, ``predictions.csv`` and bar charts.

  Args:
    directory: created if missing.
    report: a ``model_audit`` result (other keys, e.g. a ``data_audit``
      under ``'data'``, are written to the JSON as they are).
    predictions: columns ``label, prediction, score, group`` (one row per
      eval example); skipped when None.

  Returns:
    The paths written: the JSON, the CSV, then ``{attr}_{metric}.png`` per
    attribute and metric (bars per group with the bootstrap interval, n per
    group, the overall value as a line) and ``{attr}_gaps.png`` (ratio and
    differences on separate axes with their fair values; see
    ``dlresearch/rai/pictures.py``).
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  paths = [directory / 'report.json']
  tmp = paths[0].with_suffix('.json.tmp')
  tmp.write_text(json.dumps(jsonable(report), indent=1, allow_nan=False)
                 + '\n')
  os.replace(tmp, paths[0])
  if predictions is not None:
    paths.append(directory / 'predictions.csv')
    write_predictions_csv(paths[-1], predictions)
  from dlresearch import plot  # pylint: disable=import-outside-toplevel
  from dlresearch.rai import pictures  # pylint: disable=import-outside-toplevel
  for attr, by_group in report.get('groups', {}).items():
    names = list(by_group)
    counts = [by_group[g].get('count', 0) for g in names]
    for metric in GROUP_METRICS:
      path = directory / f'{attr}_{metric}.png'
      plot.save(pictures.group_metric_figure(
          attr, metric, names, [by_group[g][metric] for g in names], counts,
          report.get('overall', {}).get(metric)), str(path))
      paths.append(path)
    gaps = report.get('gaps', {}).get(attr)
    if gaps:
      path = directory / f'{attr}_gaps.png'
      plot.save(pictures.fairness_gaps_figure(attr, gaps,
                                              dict(zip(names, counts))),
                str(path))
      paths.append(path)
  return paths
