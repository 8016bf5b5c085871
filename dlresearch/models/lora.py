"""LoRA (Hu et al. 2021) on any registry model: low-rank adapters on Dense kernels.

``--lora_rank=r`` wraps the built model in ``LoRA`` (``assemble.build_model``).
The design, chosen to need no change in any model:

- **Where the adapters live**: two extra parameters next to the kernel they
  adapt, ``lora_a [in, r]`` and ``lora_b [r, out]`` (``in``/``out``: the
  kernel's input and output sizes, flattened, e.g. ``d_model`` and ``heads x
  head_dim`` for an attention query), so
  ``params/.../attn/query/{kernel, bias, lora_a, lora_b}``. They checkpoint,
  shard (``parallel.state_shardings``), restore and ``--init_from`` like any
  parameter; the model's own parameter paths do not change.
- **What they adapt**: the kernels of ``nn.Dense`` and ``nn.DenseGeneral``
  (the attention projections ``query``/``key``/``value``/``out`` are
  DenseGeneral) whose ``'/'``-joined path matches ``--lora_targets``
  (``re.search``, e.g. ``block_0/attn/query/kernel``). Convolutions and
  embedding tables are never adapted.
- **How they act**: ``LoRA.apply`` runs the model under a flax method
  interceptor (``nn.intercept_methods``): every Dense/DenseGeneral whose
  params hold ``lora_a`` returns ``W x + b + (alpha / r) * B A dropout(x)``
  (dropout ``--lora_dropout`` in training only). ``LoRA.init`` adds the
  adapters to the model's fresh params: ``A ~ N(0, 1/in)``, ``B = 0``, so a
  new LoRA model computes exactly the base model.
- **What trains**: ``optim.trainable`` masks everything but the adapters (and
  the ``--new_head`` parameters, a fresh head that has to learn), so the
  base weights get no optimizer state, as with ``--freeze``.

``merge(params, scale)`` folds the adapters into their kernels (``W + scale
* A B`` reshaped to the kernel), giving the plain model's params: its outputs
  equal the adapted model's (tested).
"""

import dataclasses
import math
import re
import zlib
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlresearch.config import ConfigError

ADAPTER_LEAVES = ('lora_a', 'lora_b')
_DENSE = (nn.Dense, nn.DenseGeneral)


def _input_axes(module: nn.Module, ndim: int) -> tuple[int, ...]:
  """The input axes a Dense/DenseGeneral contracts, as non-negative ints."""
  axis = module.axis if isinstance(module, nn.DenseGeneral) else -1
  axis = (axis,) if isinstance(axis, int) else tuple(axis)
  return tuple(a % ndim for a in axis)


def _delta(module: nn.Module, x: jax.Array, a: jax.Array, b: jax.Array,
           out_shape: tuple[int, ...], dtype) -> jax.Array:
  """``B A x`` of one Dense/DenseGeneral call, shaped as its output."""
  axes = _input_axes(module, x.ndim)
  x = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
  x = x.reshape(*x.shape[:x.ndim - len(axes)], -1).astype(dtype)
  return ((x @ a.astype(dtype)) @ b.astype(dtype)).reshape(out_shape)


def _module_path(module: nn.Module) -> str:
  return '/'.join(module.path)


@dataclasses.dataclass(frozen=True)
class LoRA:
  """``model`` with low-rank adapters (module docstring).

  Quacks like the flax module it wraps: ``init``, ``apply`` (any ``method``)
  and every other attribute (``vocab_size``, ``tabulate``, ...) are the
  model's, with the adapters added and applied. Hashable, so jitted
  functions may take it as a static argument as they take the model.
  """

  model: nn.Module
  rank: int
  alpha: float = 8.0
  dropout: float = 0.0
  targets: str = 'attn/(query|value)/kernel'

  def __post_init__(self):
    if self.rank <= 0:
      raise ConfigError('lora_rank', f'must be > 0 to use LoRA (got {self.rank})')
    if not self.alpha > 0:
      raise ConfigError('lora_alpha', f'must be > 0 (got {self.alpha})')
    if not 0 <= self.dropout < 1:
      raise ConfigError('lora_dropout', f'must be in [0, 1) (got {self.dropout})')
    try:
      re.compile(self.targets)
    except re.error as e:
      raise ConfigError('lora_targets', f'not a valid regular expression: {e}') from None

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def __getattr__(self, name):
    # Only reached for what LoRA itself lacks: the model's fields and methods.
    if name == 'model':
      raise AttributeError(name)
    return getattr(self.model, name)

  # ------------------------------------------------------------- init --

  def kernels(self, *args, **kwargs) -> dict[str, tuple[int, int]]:
    """``{kernel path: (in, out)}`` of every Dense/DenseGeneral the model
    calls on example inputs ``model.init(rng, *args, **kwargs)`` (abstractly)."""
    found = {}

    def record(next_fun, a, kw, context):
      out = next_fun(*a, **kw)
      m = context.module
      if context.method_name == '__call__' and isinstance(m, _DENSE):
        kernel = m.get_variable('params', 'kernel')
        n_in = len(_input_axes(m, jnp.ndim(a[0])))
        shape = tuple(kernel.shape)
        found[_module_path(m) + '/kernel'] = (int(np.prod(shape[:n_in])),
                                              int(np.prod(shape[n_in:])))
      return out

    def is_array(x):
      return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))

    arrays = {k: v for k, v in kwargs.items() if is_array(v)}
    static = {k: v for k, v in kwargs.items() if not is_array(v)}
    with nn.intercept_methods(record):
      jax.eval_shape(lambda a, kw: self.model.init(jax.random.key(0), *a, **kw, **static),
                     args, arrays)
    return found

  def targeted(self, *args, **kwargs) -> dict[str, tuple[int, int]]:
    """The ``kernels`` that ``targets`` selects; ConfigError if none."""
    kernels = self.kernels(*args, **kwargs)
    name = type(self.model).__name__
    if not kernels:
      raise ConfigError('lora_rank', f'{name} has no Dense kernels to adapt')
    pattern = re.compile(self.targets)
    chosen = {p: s for p, s in kernels.items() if pattern.search(p)}
    if not chosen:
      some = ', '.join(sorted(kernels)[:4])
      raise ConfigError('lora_targets', f'{self.targets!r} matches no Dense '
                        f'kernel of {name} (they are e.g. {some})')
    return chosen

  def add_adapters(self, params: dict, targets: dict[str, tuple[int, int]],
                   key: jax.Array) -> dict:
    """``params`` with ``lora_a ~ N(0, 1/in)`` and ``lora_b = 0`` beside each
    targeted kernel (the draw for a kernel depends on its path only)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
    for path, (n_in, n_out) in targets.items():
      module = path.rsplit('/', 1)[0]
      k = jax.random.fold_in(key, zlib.crc32(path.encode()))
      flat[module + '/lora_a'] = (jax.random.normal(k, (n_in, self.rank), jnp.float32)
                                  / math.sqrt(n_in))
      flat[module + '/lora_b'] = jnp.zeros((self.rank, n_out), jnp.float32)
    return flax.traverse_util.unflatten_dict(flat, sep='/')

  def init(self, rngs, *args, **kwargs):
    """The model's ``init`` plus the adapters."""
    targets = self.targeted(*args, **kwargs)
    variables = flax.core.unfreeze(self.model.init(rngs, *args, **kwargs))
    key = rngs['params'] if isinstance(rngs, dict) else rngs
    key = jax.random.fold_in(key, 0x10a)
    variables['params'] = self.add_adapters(variables['params'], targets, key)
    return variables

  # ------------------------------------------------------------ apply --

  def _interceptor(self, train: bool):
    def adapt(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      m = context.module
      if (context.method_name != '__call__' or not isinstance(m, _DENSE)
          or not m.has_variable('params', 'lora_a')):
        return out
      x = args[0] if args else kwargs['inputs']
      if train and self.dropout > 0:
        keep = jax.random.bernoulli(m.make_rng('dropout'), 1.0 - self.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
      delta = _delta(m, x, m.get_variable('params', 'lora_a'),
                     m.get_variable('params', 'lora_b'), out.shape, out.dtype)
      return out + jnp.asarray(self.scale, out.dtype) * delta
    return adapt

  def apply(self, variables, *args, **kwargs):
    """The model's ``apply`` with every adapter acting on its layer."""
    with nn.intercept_methods(self._interceptor(bool(kwargs.get('train', False)))):
      return self.model.apply(variables, *args, **kwargs)


def merge(params: Any, scale: float) -> dict:
  """``params`` with each adapter folded into its kernel and removed.

  ``kernel + scale * (lora_a @ lora_b)`` reshaped to the kernel's shape: the
  plain model with these params computes what the LoRA model computes.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  out = {p: v for p, v in flat.items() if p.rsplit('/', 1)[-1] not in ADAPTER_LEAVES}
  for path, a in flat.items():
    if path.endswith('/lora_a'):
      module = path[:-len('/lora_a')]
      kernel = flat[module + '/kernel']
      delta = (a @ flat[module + '/lora_b']).reshape(kernel.shape)
      out[module + '/kernel'] = kernel + jnp.asarray(scale, kernel.dtype) * delta.astype(kernel.dtype)
  return flax.traverse_util.unflatten_dict(out, sep='/')


def is_adapter(path: str) -> bool:
  """Whether a '/'-joined parameter path names a LoRA adapter."""
  return path.rsplit('/', 1)[-1] in ADAPTER_LEAVES
