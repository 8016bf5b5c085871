"""Optimizer factory: optax chains built from the config.

Order of the chain: clip by global norm -> (freeze mask) -> optimizer with
weight decay on kernels only (biases and norm scales/offsets are skipped) ->
per-group learning-rate factors (``--lr_multipliers``).
"""

import re
from typing import Any

import flax
import jax
import optax

from dlresearch.config import Config, ConfigError


class FreezeError(ValueError):
  """The freeze regex is invalid or matches nothing (the CLI names --freeze)."""


def schedule(cfg: Config, num_steps: int) -> optax.Schedule:
  """Linear warmup, then constant, cosine to zero, or step decay."""
  base, warmup = cfg.learning_rate, min(cfg.warmup_steps, num_steps)
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == 'constant':
    main = optax.constant_schedule(base)
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps)
  else:  # step
    boundaries = {int(f * num_steps) - warmup: cfg.step_decay
                  for f in cfg.step_boundaries if int(f * num_steps) > warmup}
    main = optax.piecewise_constant_schedule(base, boundaries)
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base, warmup), main], [warmup])


def decay_mask(params):
  """True for parameters that get weight decay: kernels and embeddings."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def path_names(params) -> dict:
  """The same tree with each leaf replaced by its '/'-joined path."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  return flax.traverse_util.unflatten_dict({k: k for k in flat}, sep='/')


def trainable_mask(params, freeze: str):
  """False for parameters whose path matches the ``freeze`` regex."""
  try:
    pattern = re.compile(freeze)
  except re.error as e:
    raise FreezeError(f'not a valid regular expression: {e}') from None
  names = path_names(params)
  mask = jax.tree.map(lambda n: not pattern.search(n), names)
  if all(jax.tree.leaves(mask)):
    raise FreezeError(f'{freeze!r} matches no parameter')
  return mask


def make(cfg: Config, num_steps: int, params=None) -> tuple[
    optax.GradientTransformation, optax.Schedule]:
  """Returns (transformation, learning-rate schedule)."""
  lr = schedule(cfg, num_steps)
  parts = []
  if cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.optimizer in ('sgd', 'nesterov'):
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, decay_mask))
    parts.append(optax.sgd(lr, momentum=cfg.momentum or None,
                           nesterov=cfg.optimizer == 'nesterov'))
  elif cfg.optimizer == 'adam':
    if cfg.weight_decay:  # L2 regularisation, as in classic Adam
      parts.append(optax.add_decayed_weights(cfg.weight_decay, decay_mask))
    parts.append(optax.adam(lr, b1=cfg.momentum))
  else:  # adamw: decoupled weight decay
    parts.append(optax.adamw(lr, b1=cfg.momentum, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
  tx = optax.chain(*parts)
  mask = trainable(cfg, params)
  if mask is not None:
    labels = jax.tree.map(lambda t: 'train' if t else 'freeze', mask)
    tx = optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)
  if cfg.lr_multipliers:
    tx = optax.chain(tx, scale_by_multipliers(params, cfg.lr_multipliers))
  return tx, lr


# ---------------------------------------------------------------------------
# Fine-tuning: what trains (--freeze, --probe), per-group learning rates.


def trainable(cfg: Config, params) -> Any:
  """The trainable-parameter mask of ``--freeze``/``--probe``; None: all train.

  ``--probe`` trains only the parameters matching ``--new_head``; a frozen
  parameter gets no optimizer state (``optax.multi_transform``).
  """
  if not cfg.freeze and not cfg.probe:
    return None
  if params is None:
    raise ValueError('freezing parameters needs the params tree')
  mask = trainable_mask(params, cfg.freeze) if cfg.freeze else None
  if cfg.probe:
    head = trainable_mask(params, cfg.new_head)  # False on the head
    head = jax.tree.map(lambda t: not t, head)
    mask = head if mask is None else jax.tree.map(
        lambda a, b: a and b, mask, head)
  return mask


def parse_multipliers(spec: str) -> list[tuple[re.Pattern, float]]:
  """``'REGEX=FACTOR,...'`` -> [(pattern, factor)]; ConfigError if malformed."""
  out = []
  for part in spec.split(','):
    regex, sep, factor = part.rpartition('=')
    try:
      if not sep or not regex:
        raise ValueError(f'{part!r} is not REGEX=FACTOR')
      value = float(factor)
      if not value >= 0 or value == float('inf'):
        raise ValueError(f'factor {factor!r} must be a finite number >= 0')
      out.append((re.compile(regex), value))
    except (ValueError, re.error) as e:
      raise ConfigError('lr_multipliers', f'{e} (in {spec!r})') from None
  return out


def multipliers(params, spec: str):
  """The tree of learning-rate factors: the first matching regex's, else 1."""
  rules = parse_multipliers(spec)
  names = path_names(params)
  used = set()

  def factor(name):
    for i, (pattern, value) in enumerate(rules):
      if pattern.search(name):
        used.add(i)
        return value
    return 1.0

  tree = jax.tree.map(factor, names)
  unused = [rules[i][0].pattern for i in range(len(rules)) if i not in used]
  if unused:
    raise ConfigError('lr_multipliers', f'{unused[0]!r} matches no parameter '
                      '(or only ones an earlier rule took)')
  return tree


def scale_by_multipliers(params, spec: str) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its ``--lr_multipliers`` factor.

  Placed after the optimizer, so the factor scales the step exactly as a
  per-group learning rate (decoupled weight decay included); stateless.
  """
  if params is None:
    raise ValueError('--lr_multipliers needs the params tree')
  factors = multipliers(params, spec)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u * f, updates, factors), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


