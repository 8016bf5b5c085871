"""dlresearch.group_metrics.GroupMetrics: the per-group eval sums a task adds
in its jitted eval step, and the eval-line keys they finalize into."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch.group_metrics import GroupMetrics


def test_sums_and_finalize_count_by_hand():
  group = GroupMetrics('sex', ('F', 'M'), prefix='group_sums/sex/')
  # label, prediction (argmax), group: F: TP, FP; M: TN, FN, padding.
  labels = jnp.array([1, 0, 0, 1, 1])
  logits = jnp.array([[0., 1.], [0., 1.], [1., 0.], [1., 0.], [0., 1.]])
  groups = jnp.array([0, 0, 1, 1, 1])
  valid = jnp.array([1., 1., 1., 1., 0.])
  sums = jax.jit(group.sums)(logits, labels, valid, groups)
  assert sorted(sums) == sorted(f'group_sums/sex/{k}' for k in (
      'count', 'correct', 'predicted_positive', 'tp', 'fp', 'fn', 'tn'))
  np.testing.assert_array_equal(sums['group_sums/sex/count'], [2, 2])
  out = group.finalize({**sums, 'accuracy': 0.5})
  assert out['group/sex=F/accuracy'] == 0.5
  assert out['group/sex=F/selection_rate'] == 1.0
  assert out['group/sex=M/selection_rate'] == 0.0
  assert out['group/sex=F/tpr'] == 1.0 and out['group/sex=M/tpr'] == 0.0
  assert out['group/sex=F/fpr'] == 1.0 and out['group/sex=M/fpr'] == 0.0
  assert out['fairness/sex/demographic_parity_difference'] == 1.0
  assert out['fairness/sex/equalized_odds_difference'] == 1.0
  assert 'accuracy' not in out  # only its own keys
  assert group.finalize({'accuracy': 0.5}) == {}  # no group columns this eval


def test_finalize_refuses_sums_of_another_grouping():
  three = GroupMetrics('race', ('a', 'b', 'c'))
  sums = GroupMetrics('race', ('a', 'b')).sums(
      jnp.zeros((2, 2)), jnp.array([0, 1]), None, jnp.array([0, 1]))
  with pytest.raises(ValueError, match='2 groups in the sums but 3 group names'):
    three.finalize(sums)
