"""Tests for policy.py: keep-best / early-stopping decisions and the best checkpoint."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch import policy

SEQ = [0.5, 0.7, 0.6, 0.8, 0.75, 0.74]


def _run(tracker, values, first_step=1):
  return [tracker.update(100 * (first_step + i), {'accuracy': v, 'loss': -v})
          for i, v in enumerate(values)]


def test_max_mode_keeps_the_step_of_the_best_value():
  tracker = policy.BestTracker('accuracy', mode='max')
  decisions = _run(tracker, SEQ)
  assert [d.is_best for d in decisions] == [True, True, False, True, False, False]
  assert not any(d.should_stop for d in decisions)  # patience=0: never stops
  assert (tracker.best_value, tracker.best_step, tracker.evals_since_best) == (0.8, 400, 2)


def test_patience_stops_right_after_the_second_non_improving_eval():
  tracker = policy.BestTracker('accuracy', mode='max', patience=2)
  stops = [d.should_stop for d in _run(tracker, SEQ)]
  # 0.6 does not improve (1), then 0.8 resets; 0.75 (1), 0.74 (2) -> stop.
  assert stops == [False, False, False, False, False, True]


def test_min_mode():
  tracker = policy.BestTracker('loss', mode='min', patience=3)
  decisions = [tracker.update(s, {'loss': v}) for s, v in
               enumerate([2.0, 1.5, 1.6, 1.5, 1.2, 1.3, 1.4, 1.25])]
  assert [d.is_best for d in decisions] == [True, True, False, False, True, False, False, False]
  assert [d.should_stop for d in decisions][-1] and not decisions[-2].should_stop
  assert (tracker.best_value, tracker.best_step) == (1.2, 4)  # ties do not improve


def test_resume_from_state_dict_gives_the_same_decisions():
  full = _run(policy.BestTracker('accuracy', patience=2), SEQ)
  first = policy.BestTracker('accuracy', patience=2)
  head = _run(first, SEQ[:3])
  resumed = policy.BestTracker('accuracy', patience=2)
  resumed.load_state_dict(first.state_dict())
  tail = _run(resumed, SEQ[3:], first_step=4)
  assert head + tail == full
  assert resumed.state_dict() == {'metric': 'accuracy', 'mode': 'max', 'best_value': 0.8,
                                  'best_step': 400, 'evals_since_best': 2}
  with pytest.raises(ValueError, match='mode'):
    policy.BestTracker('accuracy', mode='min').load_state_dict(first.state_dict())


@pytest.mark.parametrize('metrics,match', [
    ({'loss': 1.0}, "'accuracy' is not in the eval metrics at step 7; available: loss"),
    ({'accuracy': float('nan')}, 'is nan at step 7'),
    ({'accuracy': 'nan'}, 'is nan at step 7'),  # how JSONL stores NaN
    ({'accuracy': 'n/a'}, 'not a number'),
])
def test_missing_or_nan_metric_is_a_clear_error(metrics, match):
  tracker = policy.BestTracker('accuracy')
  with pytest.raises(ValueError, match=match):
    tracker.update(7, metrics)
  with pytest.raises(ValueError, match='mode'):
    policy.BestTracker('accuracy', mode='maximum')


def test_best_checkpoint_keeps_only_the_best_and_restores_it(tmp_path):
  directory = policy.best_checkpoint_dir(str(tmp_path))
  ckpt = policy.BestCheckpoint(directory)
  with pytest.raises(FileNotFoundError):
    ckpt.restore()
  tracker = policy.BestTracker('accuracy')
  for i, acc in enumerate(SEQ):
    step = 100 * (i + 1)
    params = {'dense': {'kernel': jnp.full((2, 3), float(step))}}
    model_state = {'batch_stats': {'mean': jnp.full((3,), acc)}}
    if tracker.update(step, {'accuracy': acc}).is_best:
      ckpt.save(step, params, model_state, {'accuracy': acc, 'samples': 'text'})
  ckpt.close()
  assert sorted(os.listdir(directory)) == ['400']

  reopened = policy.BestCheckpoint(directory)
  assert reopened.best_step() == 400
  variables, info = reopened.restore()
  np.testing.assert_array_equal(variables['params']['dense']['kernel'], np.full((2, 3), 400.0))
  np.testing.assert_allclose(variables['model_state']['batch_stats']['mean'], [0.8] * 3)
  assert info == {'step': 400, 'metrics': {'accuracy': 0.8, 'samples': 'text'}}

  # After a resume from an older checkpoint the best may come at an earlier
  # step than the one on disk (or at the same step again); it still replaces it.
  reopened.save(300, {'dense': {'kernel': jnp.zeros((2, 3))}}, {}, {'accuracy': 0.9})
  reopened.save(300, {'dense': {'kernel': jnp.ones((2, 3))}}, {}, {'accuracy': 0.9})
  assert sorted(os.listdir(directory)) == ['300']
  variables, info = reopened.restore()
  np.testing.assert_array_equal(variables['params']['dense']['kernel'], np.ones((2, 3)))
  assert variables['model_state'] == {} and info['step'] == 300
  reopened.close()
