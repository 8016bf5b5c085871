"""Exponential moving average (EMA) of parameters, as pure functions.

    ema = ema_init(params)
    ema = ema_update(ema, params, decay=0.999, step=step)  # after each update

Each leaf becomes ``d * ema + (1 - d) * params``. With ``step`` given, the
decay is warmed up as in TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``: ``d = min(decay, (1 + step) / (10 + step))``, so early
averages are not dominated by the initialisation (``d`` is 0.1 at step 0,
0.5 at step 8, and reaches 0.999 only after ~9,000 steps). ``step=None``
uses ``decay`` from the start. Here ``step`` counts the updates applied
before this one (0 for the first call), i.e. ``TrainState.step`` before it
is incremented.

Both functions are jit-friendly: ``decay`` and ``step`` may be traced, and
each EMA leaf keeps its own dtype (keep the EMA in float32 even when the
params are not).
"""

from typing import Any

import jax
import jax.numpy as jnp

Params = Any


def ema_init(params: Params) -> Params:
  """A float32 copy of ``params`` to start the average from."""
  return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)


def ema_decay(decay: float | jax.Array, step: int | jax.Array | None = None) -> jax.Array:
  """The decay used at ``step``: ``min(decay, (1 + step) / (10 + step))``."""
  decay = jnp.asarray(decay, jnp.float32)
  if step is None:
    return decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Params, params: Params, decay: float | jax.Array,
               step: int | jax.Array | None = None) -> Params:
  """``d * ema_params + (1 - d) * params`` leaf by leaf, ``d = ema_decay(decay, step)``."""
  if not isinstance(decay, jax.Array) and not 0.0 <= decay <= 1.0:
    raise ValueError(f'decay must be in [0, 1]; got {decay}')
  d = ema_decay(decay, step)

  def leaf(e, p):
    e = jnp.asarray(e)
    return (d * e + (1.0 - d) * jnp.asarray(p, jnp.float32)).astype(e.dtype)

  return jax.tree.map(leaf, ema_params, params)
