"""The train state: one pytree with everything a step reads and writes."""

import dataclasses
from typing import Any

import flax
import jax
import optax

from dlresearch import ema as ema_lib


@flax.struct.dataclass
class TrainState:
  """step, params, optimizer state, model state (e.g. batch_stats), rng,
  and optionally an EMA of the params.

  The model's ``apply`` and the optimizer live outside the state (bound into
  the step with ``functools.partial``), so the state is a plain pytree that
  checkpoints and shards like any other.
  """

  step: jax.Array
  params: Any
  opt_state: optax.OptState
  model_state: Any  # non-param collections, e.g. {'batch_stats': ...}
  rng: jax.Array  # a raw uint32 key; a step's key is fold_in(rng, step)
  # --ema_decay > 0: a float32 moving average of params (ema.py), updated
  # after every step; None (an empty subtree) when off.
  ema_params: Any = None

  def variables(self, params=None) -> dict:
    """The flax variables dict for ``apply``."""
    return {'params': self.params if params is None else params, **self.model_state}


def create(model, tx: optax.GradientTransformation, args: tuple, kwargs: dict,
           seed: int, ema: bool = False) -> TrainState:
  """Initialises a state from example model inputs ``model(*args, **kwargs)``.

  ``ema``: also keep ``ema_params``, starting as a float32 copy of params.

  Jit it (with out_shardings) or ``jax.eval_shape`` it.
  """
  root = jax.random.PRNGKey(seed)
  init_rng, dropout_rng, train_rng = jax.random.split(root, 3)
  variables = model.init({'params': init_rng, 'dropout': dropout_rng},
                         *args, train=False, **kwargs)
  variables = flax.core.unfreeze(variables)
  params = variables.pop('params')
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    opt_state=tx.init(params), model_state=variables,
                    rng=train_rng,
                    ema_params=ema_lib.ema_init(params) if ema else None)


def to_checkpoint(state: TrainState) -> dict:
  """The state as the dict a checkpoint holds; no ``ema_params`` key when
  EMA is off, so checkpoints written before EMA existed still restore."""
  out = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  if out['ema_params'] is None:
    del out['ema_params']
  return out


def from_checkpoint(tree: dict) -> TrainState:
  return TrainState(**{'ema_params': None, **tree})
