"""Tests for ema.py against averages computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch import ema


def _params(a, b):
  return {'dense': {'kernel': jnp.array([a, b], jnp.float32)}, 'bias': jnp.float32(a)}


def test_constant_decay_matches_hand_computed_average():
  steps = [_params(1.0, 2.0), _params(3.0, 0.0), _params(-1.0, 4.0)]
  avg = ema.ema_init(_params(0.0, 0.0))
  for p in steps:
    avg = ema.ema_update(avg, p, 0.5)
  # 0.5 * (0.5 * (0.5 * 0 + 0.5 * 1) + 0.5 * 3) + 0.5 * -1 = 0.375
  # 0.5 * (0.5 * (0.5 * 0 + 0.5 * 2) + 0.5 * 0) + 0.5 * 4 = 2.25
  np.testing.assert_allclose(avg['dense']['kernel'], [0.375, 2.25], rtol=1e-6)
  np.testing.assert_allclose(avg['bias'], 0.375, rtol=1e-6)


def test_warmup_decay_matches_tf_num_updates_rule():
  steps = [_params(1.0, 2.0), _params(3.0, 0.0), _params(-1.0, 4.0)]
  avg = ema.ema_init(_params(10.0, 10.0))
  update = jax.jit(ema.ema_update)
  for i, p in enumerate(steps):
    avg = update(avg, p, 0.99, i)
  # d = min(0.99, (1 + i) / (10 + i)) = 1/10, 2/11, 3/12.
  expected = 10.0
  for d, v in zip([1 / 10, 2 / 11, 3 / 12], [1.0, 3.0, -1.0]):
    expected = d * expected + (1 - d) * v
  np.testing.assert_allclose(avg['bias'], expected, rtol=1e-6)
  np.testing.assert_allclose(float(ema.ema_decay(0.99, 1000)), 0.99)


def test_keeps_the_ema_dtype_and_checks_decay():
  avg = ema.ema_update({'w': jnp.zeros(2, jnp.float32)}, {'w': jnp.ones(2, jnp.bfloat16)}, 0.9)
  assert avg['w'].dtype == jnp.float32
  np.testing.assert_allclose(avg['w'], [0.1, 0.1], rtol=1e-6)
  with pytest.raises(ValueError, match='decay'):
    ema.ema_update(avg, avg, 1.5)
