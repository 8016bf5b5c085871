"""Optimizer factory: optax chains built from the config.

Order of the chain: clip by global norm -> (freeze mask) -> optimizer with
weight decay decided by each parameter's role (``decay_role``): weight
matrices and token/entity embedding tables decay; biases, norm scales,
position tables and the ViT class token do not. A frozen parameter's
gradient is zero (stopped in the loss by ``tasks.FrozenBackbone``), so the
global norm is that of the parameters that train.
SGD/Nesterov take ``--momentum``; Adam/AdamW take ``--adam_b1``,
``--adam_b2`` and ``--adam_eps``.
Per-group learning-rate factors: ``--lr_multipliers``.
"""

import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dlresearch.config import Config, ConfigError
from dlresearch.models import lora as lora_lib


class FreezeError(ValueError):
  """The freeze regex is invalid or matches nothing (the CLI names --freeze)."""


def warmup_then(base: float, warmup: int, main: optax.Schedule) -> optax.Schedule:
  """``base * (count + 1) / warmup`` for the first ``warmup`` updates, then
  ``main(count - warmup)``: the first update already moves (lr > 0)."""
  if not warmup:
    return main
  ramp = lambda count: base * jnp.minimum(count + 1, warmup) / warmup
  return optax.join_schedules([ramp, main], [warmup])


def inverse_sqrt(base: float, warmup: int) -> optax.Schedule:
  """The Transformer-base schedule with ``base`` as its peak.

  ``base * min((count + 1) / warmup, sqrt(warmup / (count + 1)))``: linear
  warmup to ``base`` at update ``warmup``, then decay as 1/sqrt(step).
  Vaswani et al. use ``base = d_model^-0.5 * warmup^-0.5``.
  """
  warmup = max(warmup, 1)

  def fn(count):
    t = jnp.asarray(count, jnp.float32) + 1.0
    return base * jnp.minimum(t / warmup, jnp.sqrt(warmup / t))

  return fn


def schedule(cfg: Config, num_steps: int) -> optax.Schedule:
  """Linear warmup, then constant, cosine, step decay; or ``inverse_sqrt``.

  Cosine decays to ``min_lr_ratio * learning_rate`` at the last step.
  """
  base, warmup = cfg.learning_rate, min(cfg.warmup_steps, num_steps)
  if cfg.schedule == 'inverse_sqrt':
    return inverse_sqrt(base, cfg.warmup_steps)
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == 'constant':
    main = optax.constant_schedule(base)
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps,
                                       alpha=cfg.min_lr_ratio)
  else:  # step
    boundaries = {int(f * num_steps) - warmup: cfg.step_decay
                  for f in cfg.step_boundaries if int(f * num_steps) > warmup}
    main = optax.piecewise_constant_schedule(base, boundaries)
  return warmup_then(base, warmup, main)


# Weight decay by role, read from a parameter's name and its module's name
# (never its rank: the q/k/v biases of attention are [heads, head_dim]).
# Decayed: the weights of Dense/Conv/DenseGeneral layers (attention
# projections included), LoRA adapters, recurrent weight matrices, and token
# or entity embedding tables (as BERT, GPT-2 and most LM code do). Not
# decayed: biases (also per-entity bias tables such as ``user_bias``), norm
# scales/offsets, learned position tables and the ViT class token (as timm
# and big_vision).
_DECAY_LEAVES = frozenset({'kernel', 'recurrent_kernel', 'embedding',
                           'lora_a', 'lora_b'})
_NO_DECAY_LEAVES = frozenset({'bias', 'recurrent_bias', 'scale', 'offset',
                              'cls', 'pos_embedding'})
_POSITION_MODULE = re.compile(r'(^|_)pos(ition)?(_|$)|positions?_')
_BIAS_MODULE = re.compile(r'(^|_)bias$')
_EMBED_LEAF = re.compile(r'_(embed|embedding)$')


def decay_role(path: str) -> tuple[bool, str]:
  """(decayed?, which rule decided) for a '/'-joined parameter path."""
  parts = path.split('/')
  leaf, module = parts[-1], (parts[-2] if len(parts) > 1 else '')
  if leaf in _NO_DECAY_LEAVES:
    return False, f'{leaf} parameter'
  if _POSITION_MODULE.search(leaf) or (leaf == 'embedding' and
                                        _POSITION_MODULE.search(module)):
    return False, 'position table'
  if leaf == 'embedding' and _BIAS_MODULE.search(module):
    return False, 'per-entity bias table'
  if leaf in _DECAY_LEAVES:
    return True, f'{leaf} parameter'
  if _EMBED_LEAF.search(leaf):
    return True, 'embedding table'
  return False, 'unknown role (not decayed)'


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def decay_mask(params):
  """True for the parameters weight decay applies to (see ``decay_role``)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decay_role('/'.join(map(_key_name, path)))[0], params)


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
    parts.append(optax.adam(lr, b1=cfg.adam_b1, b2=cfg.adam_b2,
                           eps=cfg.adam_eps))
  else:  # adamw: decoupled weight decay
    parts.append(optax.adamw(lr, b1=cfg.adam_b1, b2=cfg.adam_b2,
                            eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
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
  """The trainable-parameter mask of ``--freeze``/``--probe``/``--lora_rank``;
  None: all train.

  ``--probe`` trains only the parameters matching ``--new_head``; a frozen
  parameter gets no optimizer state (``optax.multi_transform``).
  """
  if not cfg.freeze and not cfg.probe and not cfg.lora_rank:
    return None
  if params is None:
    raise ValueError('freezing parameters needs the params tree')
  mask = trainable_mask(params, cfg.freeze) if cfg.freeze else None
  if cfg.lora_rank:  # LoRA: the adapters train, and a fresh --new_head
    head = re.compile(cfg.new_head) if cfg.new_head else None
    lora = jax.tree.map(lambda n: lora_lib.is_adapter(n) or bool(
        head and head.search(n)), path_names(params))
    mask = lora if mask is None else jax.tree.map(
        lambda a, b: a and b, mask, lora)
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


