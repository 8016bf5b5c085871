"""Per-group confusion counts in a jitted eval step, and the fairness gaps.

``tasks.Classification`` with ``groups`` (``--audit_group``) adds, on eval
batches that carry the group columns, each group's confusion counts as
masked jnp sums (they add up across batches and hosts like
``tasks.classification_sums``); at the end ``GroupMetrics.finalize`` turns
them into the eval-line keys ``group/<key>=<name>/<metric>`` and
``fairness/<key>/<gap>``. The engine's only fairness code: the audits after
training (``dlresearch.rai.audit``) build on ``fairness_gaps`` and
``safe_div`` from here, never the other way round.

Binary conventions: the positive class is ``pos_label`` (default 1); with
more than two classes, TPR/FPR/selection rate are one-vs-rest for it.
Gaps over the groups of one attribute (fairlearn's definitions, groups with
no examples or an undefined rate left out):

- ``demographic_parity_difference``: max - min selection rate;
- ``demographic_parity_ratio``: min / max selection rate;
- ``equalized_odds_difference``: max(TPR max - min, FPR max - min).
"""

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Per-group confusion counts, in this order (also the jnp sums' keys).
COUNT_NAMES = ('count', 'correct', 'predicted_positive', 'tp', 'fp', 'fn',
               'tn')
GAP_METRICS = ('demographic_parity_difference', 'demographic_parity_ratio',
               'equalized_odds_difference')
# The metrics an eval line carries per group (``finalize_group_metrics``).
EVAL_GROUP_METRICS = ('accuracy', 'selection_rate', 'tpr', 'fpr')


def safe_div(num, den):
  """num / den elementwise, NaN where den == 0 (no warnings)."""
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  safe = np.where(den == 0, 1.0, den)
  return np.where(den == 0, np.nan, num / safe)


def nan_range(values: np.ndarray, axis: int = -1):
  """(max, min) over ``axis`` ignoring NaN; NaN if all are NaN."""
  finite = ~np.isnan(values)
  hi = np.where(finite, values, -np.inf).max(axis=axis)
  lo = np.where(finite, values, np.inf).min(axis=axis)
  none = ~finite.any(axis=axis)
  return np.where(none, np.nan, hi), np.where(none, np.nan, lo)


def fairness_gaps(selection_rate, tpr, fpr) -> dict[str, np.ndarray]:
  """fairlearn's gaps from per-group rates [..., num_groups] (NaN ignored)."""
  sel_hi, sel_lo = nan_range(np.asarray(selection_rate, np.float64))
  tpr_hi, tpr_lo = nan_range(np.asarray(tpr, np.float64))
  fpr_hi, fpr_lo = nan_range(np.asarray(fpr, np.float64))
  return {
      'demographic_parity_difference': sel_hi - sel_lo,
      'demographic_parity_ratio': safe_div(sel_lo, sel_hi),
      'equalized_odds_difference': np.fmax(tpr_hi - tpr_lo, fpr_hi - fpr_lo),
  }


def group_metric_sums(logits: jax.Array, labels: jax.Array,
                      valid: jax.Array | None, group_ids: jax.Array,
                      num_groups: int, *,
                      pos_label: int = 1) -> dict[str, jax.Array]:
  """Masked per-group confusion counts, for a jitted eval step.

  Args:
    logits: [B, C] (the prediction is the argmax).
    labels: [B] int classes.
    valid: [B] 1.0 for real examples, 0.0 for padding (None: all real).
    group_ids: [B] int group of each example in [0, num_groups).
    num_groups: static number of groups.
    pos_label: the positive class.

  Returns:
    ``{name: [num_groups] float32}`` for the names in ``COUNT_NAMES``
    (count, correct, predicted_positive, tp, fp, fn, tn). They add across
    batches and devices; ``finalize_group_metrics`` turns them into rates.
  """
  predictions = jnp.argmax(logits, -1)
  if valid is None:
    valid = jnp.ones(labels.shape[0], jnp.float32)
  member = jax.nn.one_hot(group_ids, num_groups, dtype=jnp.float32)
  member = member * jnp.asarray(valid, jnp.float32)[:, None]
  pos = labels == pos_label
  ppos = predictions == pos_label
  stats = jnp.stack([jnp.ones_like(pos), predictions == labels, ppos,
                     pos & ppos, ~pos & ppos, pos & ~ppos, ~pos & ~ppos], 1)
  sums = member.T @ stats.astype(jnp.float32)  # [num_groups, 7]
  return {name: sums[:, i] for i, name in enumerate(COUNT_NAMES)}


def finalize_group_metrics(sums: Mapping[str, Any],
                           group_names: Sequence[str],
                           key: str) -> dict[str, float]:
  """Eval-line keys from summed ``group_metric_sums`` of one attribute.

  Returns ``{'group/{key}={name}/{metric}': ..., 'fairness/{key}/{gap}':
  ...}`` for ``metric`` in count, accuracy, selection_rate, tpr, fpr and the
  gaps in ``GAP_METRICS``; undefined rates are NaN.
  """
  s = {k: np.asarray(jax.device_get(sums[k]), np.float64).reshape(-1)
       for k in COUNT_NAMES}
  if s['count'].shape[0] != len(group_names):
    raise ValueError(f'{s["count"].shape[0]} groups in the sums but '
                     f'{len(group_names)} group names')
  rates = {
      'accuracy': safe_div(s['correct'], s['count']),
      'selection_rate': safe_div(s['predicted_positive'], s['count']),
      'tpr': safe_div(s['tp'], s['tp'] + s['fn']),
      'fpr': safe_div(s['fp'], s['fp'] + s['tn']),
  }
  out = {}
  for g, name in enumerate(group_names):
    out[f'group/{key}={name}/count'] = float(s['count'][g])
    for metric in EVAL_GROUP_METRICS:
      out[f'group/{key}={name}/{metric}'] = float(rates[metric][g])
  gaps = fairness_gaps(rates['selection_rate'], rates['tpr'], rates['fpr'])
  for gap in GAP_METRICS:
    out[f'fairness/{key}/{gap}'] = float(gaps[gap])
  return out


@dataclasses.dataclass(frozen=True)
class GroupMetrics:
  """The per-group metrics of one group column, as a task uses them.

  ``sums`` inside the jitted eval step (keys prefixed ``prefix``), then
  ``finalize`` on the summed metrics dict (all batches and hosts).
  """

  key: str
  names: tuple[str, ...]
  pos_label: int = 1
  prefix: str = ''

  def sums(self, logits, labels, valid, group_ids) -> dict[str, jax.Array]:
    counts = group_metric_sums(logits, labels, valid, group_ids,
                               len(self.names), pos_label=self.pos_label)
    return {f'{self.prefix}{k}': v for k, v in counts.items()}

  def finalize(self, summed: Mapping[str, Any]) -> dict[str, float]:
    """The eval-line keys; {} when the sums are absent (no group columns)."""
    if f'{self.prefix}count' not in summed:
      return {}
    sums = {k: summed[self.prefix + k] for k in COUNT_NAMES}
    return finalize_group_metrics(sums, self.names, self.key)
