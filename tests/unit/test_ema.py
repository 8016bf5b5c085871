"""Tests for ema.py, and EMA in the train step, against averages computed by
hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlresearch import ema
from dlresearch import state as state_lib
from dlresearch import train


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


class _Linear(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(x)


def _loss_task(model, variables, batch, *, train, rng=None):
  out = model.apply(variables, batch['x'], train=train)
  loss = jnp.sum((out - batch['y']) ** 2)
  n = jnp.float32(batch['x'].shape[0])
  return {'loss': loss, 'count': n}, {}


def test_ema_in_the_train_step_equals_a_hand_computed_average():
  model = _Linear()
  x = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
  batch = {'x': x, 'y': np.ones((4, 3), np.float32)}
  tx = optax.sgd(0.1)
  state = state_lib.create(model, tx, (x,), {}, seed=0, ema=True)
  step = jax.jit(train.make_train_step(model, _loss_task, tx, ema_decay=0.5))
  history = [jax.tree.map(np.asarray, state.params)]
  for _ in range(4):
    state, _ = step(state, batch)
    history.append(jax.tree.map(np.asarray, state.params))
  expected = history[0]
  for t in range(4):  # d_t = min(0.5, (1 + t) / (10 + t)); t = updates before
    d = min(0.5, (1 + t) / (10 + t))
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, expected,
                            history[t + 1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               state.ema_params, expected)
  assert not np.allclose(state.ema_params['Dense_0']['kernel'],
                         state.params['Dense_0']['kernel'])
