"""The train state: one pytree with everything a step reads and writes.

Also where a run's first state comes from (``restore_or_create``: the
workdir's checkpoint, then ``--init_from``, then fresh) and the check that
no non-finite state is trained on or saved.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from absl import logging

from dlresearch import ema as ema_lib, init as init_lib, policy
from dlresearch.config import ConfigError


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


def to_checkpoint(state: TrainState, cfg=None) -> dict:
  """The state as the dict a checkpoint holds; no ``ema_params`` key when
  EMA is off, so checkpoints written before EMA existed still restore.

  With ``cfg`` of a ``--lora_save=adapters`` run, ``params`` holds only the
  parameters that train (the frozen base is ``init.complete``'s to put back);
  the optimizer state has no entries for the frozen ones anyway.
  """
  out = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  if out['ema_params'] is None:
    del out['ema_params']
  if cfg is not None and init_lib.adapters_only(cfg):
    frozen = set(init_lib.frozen_paths(cfg, out['params']))
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(out['params']), sep='/')
    out['params'] = flax.traverse_util.unflatten_dict(
        {p: v for p, v in flat.items() if p not in frozen}, sep='/')
  return out


def from_checkpoint(tree: dict) -> TrainState:
  return TrainState(**{'ema_params': None, **tree})


@jax.jit
def count_non_finite(tree) -> jax.Array:
  """How many NaN/inf values the floating-point leaves of ``tree`` hold."""
  counts = [jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return sum(counts, jnp.int32(0))


def non_finite_reason(state: TrainState) -> str | None:
  """Why ``state`` must not be saved or trained on, or None."""
  bad = {name: int(count_non_finite(getattr(state, name)))
         for name in ('params', 'opt_state', 'model_state')}
  bad = {k: v for k, v in bad.items() if v}
  if not bad:
    return None
  return 'non-finite values in ' + ', '.join(f'{k} ({v})' for k, v in bad.items())


def restore_or_create(cfg, ckpt, create, shardings, abstract_state, model,
                      workdir):
  """Resume order: workdir checkpoint, then --init_from params, then fresh.

  Returns ``(state, start step, data state)``, the state as global arrays
  laid out by ``shardings``. ``--eval_only --eval_checkpoint=best`` swaps in
  the keep-best checkpoint's params and model state.
  """
  if ckpt.latest_step() is not None:
    # The newest checkpoint that reads and verifies; corrupt ones are moved
    # aside (never deleted) when training, left in place by --eval_only.
    state, data_state, _ = ckpt.restore_latest_good(
        to_checkpoint(abstract_state, cfg), move_aside=not cfg.eval_only,
        check=lambda tree: non_finite_reason(from_checkpoint(tree)))
    state = _with_base(cfg, model, from_checkpoint(state), abstract_state, workdir)
    logging.info('resumed from step %d', data_state['step'])
    if cfg.eval_only and cfg.eval_checkpoint:
      state, step = _eval_checkpoint(cfg, ckpt, state, abstract_state, workdir)
      return _with_base(cfg, model, state, abstract_state, workdir), step, data_state
    return state, data_state['step'], data_state
  state = jax.jit(create, out_shardings=shardings)()
  if cfg.init_from:  # dlresearch/init.py: what loads, what is new, the report
    params, model_state, _ = init_lib.initialize(
        cfg, model, state.params, state.model_state, workdir)
    state = state.replace(params=params, model_state=model_state)
  return state, 0, {}


def _eval_checkpoint(cfg, ckpt, state, abstract_state, workdir):
  """The state of ``--eval_checkpoint`` ('best' or a step number)."""
  if cfg.eval_checkpoint == 'best':
    best = policy.BestCheckpoint(policy.best_checkpoint_dir(workdir))
    try:
      if best.best_step() is None:
        raise ConfigError('eval_checkpoint', f'no keep-best checkpoint in '
                          f'{workdir} (train with --best_metric)')
      variables, info = best.restore({'params': abstract_state.params,
                                      'model_state': abstract_state.model_state})
    finally:
      best.close()
    return state.replace(params=variables['params'],
                         model_state=variables['model_state']), info['step']
  step = int(cfg.eval_checkpoint)
  if step not in ckpt.all_steps():
    raise ConfigError('eval_checkpoint', f'no checkpoint step {step} in '
                      f'{workdir} (steps: {ckpt.all_steps()})')
  state, data_state = ckpt.restore(to_checkpoint(abstract_state, cfg), step)
  return from_checkpoint(state), data_state['step']


def _with_base(cfg, model, state: TrainState, abstract_state, workdir):
  """``state`` restored from an adapters-only checkpoint, with the frozen
  base re-read from ``--init_from`` (``init.complete``) on its shardings."""
  if not init_lib.adapters_only(cfg):
    return state
  return state.replace(params=init_lib.complete(
      cfg, model, state.params, workdir, like=abstract_state.params))
