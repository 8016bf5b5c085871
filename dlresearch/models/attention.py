"""Multi-head dot-product attention with masks, rotary positions and a KV cache.

Masks are bool arrays broadcastable to ``[batch, heads, queries, keys]``,
True where a query may attend to a key (build them with ``padding_mask``,
``causal_mask`` and ``combine_masks``). A query row with no allowed key gets
uniform weights (as in ``jax.nn.dot_product_attention``); models only mask
keys, so this happens only for an all-padding sequence.

Implementations (``implementation=``, the config's ``--attention_impl``),
equal to float32 rounding (tested on CPU for the ones CPU runs):

- ``'explicit'``: ``softmax(q k^T / sqrt(d) + mask) v`` written as two
  einsums (``attention_weights``); runs everywhere. In a step traced with
  ``--cpu_kernels=native`` (``kernels.tracing_native()``) the two batched
  matmuls of float32 operands run on the native GEMM instead: heads folded
  into the batch axis, the query heads that share a key/value head stacked
  as the rows of one GEMM (no repeated keys/values), ``k`` read transposed
  by the kernel;
- ``'xla'``: ``jax.nn.dot_product_attention(implementation='xla')``;
- ``'cudnn'``: ``jax.nn.dot_product_attention(implementation='cudnn')``,
  cuDNN flash attention: NVIDIA GPUs only, bfloat16/float16 compute dtype
  (``--dtype=bfloat16``); a purely causal mask is passed as ``is_causal``;
- ``'auto'`` (default): ``'explicit'`` on CPU (1.4x faster forward+backward
  on nanoGPT's shapes, 1.07x on the benchmark GPT's; README "Speed on
  CPU"), ``'xla'`` on other backends.

Asking for a choice the backend lacks fails with one line
(``check_implementation``). Whatever the choice, the explicit path runs when
the attention weights are asked for (``return_weights=True``, for
explanations) or attention dropout is active.

Grouped-query attention: ``num_kv_heads`` key/value heads (a divisor of
``num_heads``; 1 is multi-query attention, None or ``num_heads`` is ordinary
multi-head attention). Query head ``n`` reads key/value head ``n //
(num_heads // num_kv_heads)`` (as ``jax.nn.dot_product_attention`` and
Hugging Face's ``repeat_kv``); the KV cache holds ``num_kv_heads`` heads.

KV cache (autoregressive decoding): call with ``decode=True`` and a mutable
``'cache'`` collection. The first such call, when the collection does not yet
exist (e.g. under ``model.init`` or ``jax.eval_shape(model.init, ...)``),
creates ``cached_key``/``cached_value`` ``[B, S_max, kv_heads, head_dim]`` and
``cache_index`` sized by that call's input length ``S_max`` and computes
ordinary causal attention. Later calls take a chunk of ``T >= 1`` new
positions, write their keys/values at ``cache_index``, attend causally over
the cache and advance the index by ``T``. Rotary positions start at
``cache_index``, so cached keys carry the rotation of their own position. Writing past ``S_max`` is not
detected under ``jit`` (``dynamic_update_slice`` clamps), so callers size
the cache for the whole sequence.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from dlresearch import kernels

Array = jax.Array


def _big_negative(dtype) -> Array:
  # The masking constant of jax.nn.dot_product_attention, so both paths agree.
  return jnp.asarray(-0.7 * float(jnp.finfo(dtype).max), dtype)


def padding_mask(kv_mask: Array) -> Array:
  """``[B, S]`` key padding mask (True = real) -> ``[B, 1, 1, S]``."""
  return jnp.asarray(kv_mask, bool)[:, None, None, :]


def causal_mask(q_len: int, kv_len: int | None = None, offset: Array | int = 0) -> Array:
  """``[1, 1, T, S]``: query ``t`` (at position ``offset + t``) sees keys ``<= offset + t``."""
  kv_len = q_len if kv_len is None else kv_len
  q_pos = offset + jnp.arange(q_len)
  return (jnp.arange(kv_len)[None, :] <= q_pos[:, None])[None, None]


def combine_masks(*masks: Array | None) -> Array | None:
  """Logical AND of the masks that are not None (None if all are)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def rotary_embedding(x: Array, positions: Array, base: float = 10000.0) -> Array:
  """Rotary position embedding (Su et al. 2021), rotate-half layout.

  ``x`` is ``[B, T, heads, head_dim]`` (``head_dim`` even), ``positions`` is
  ``[T]`` or ``[B, T]``. Channel ``i`` of the first half is rotated with
  channel ``i`` of the second half by angle ``pos * base**(-2i/head_dim)``.
  """
  dim = x.shape[-1]
  if dim % 2:
    raise ValueError(f'rotary positions need an even head dimension; got {dim}')
  half = dim // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / dim)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq  # [(B,) T, half]
  if angles.ndim == 2:
    angles = angles[None]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attention_weights(
    query: Array, key: Array, mask: Array | None = None, dropout: nn.Module | None = None
) -> Array:
  """``softmax(q k^T / sqrt(d))`` over keys, ``[B, heads, T, S]``, in float32.

  ``query`` is ``[B, T, heads, d]``, ``key`` is ``[B, S, kv_heads, d]``
  (``kv_heads`` dividing ``heads``).
  """
  if _native(query, key):
    logits = _native_logits(query, key) / np.sqrt(query.shape[-1]).astype(np.float32)
  else:
    key = _repeat_heads(key, query.shape[2])
    logits = jnp.einsum(
        'btnh,bsnh->bnts', query, key, preferred_element_type=jnp.float32
    ) / np.sqrt(query.shape[-1]).astype(np.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, _big_negative(logits.dtype))
  weights = jax.nn.softmax(logits, axis=-1)
  return weights if dropout is None else dropout(weights)


def explicit_attention() -> bool:
  """True where the explicit softmax path is the faster one: the CPU backend.

  On CPU, XLA runs ``softmax(q k^T) v`` written as two einsums faster than
  ``jax.nn.dot_product_attention`` (same numbers to float32 rounding).
  """
  return jax.default_backend() == 'cpu'


IMPLEMENTATIONS = ('auto', 'explicit', 'xla', 'cudnn')


def check_implementation(name: str, backend: str | None = None) -> str | None:
  """Why attention implementation ``name`` cannot run on ``backend``, or None.

  ``backend`` defaults to ``jax.default_backend()``.
  """
  if name not in IMPLEMENTATIONS:
    return (f'unknown attention implementation {name!r}; choose one of: '
            f'{", ".join(IMPLEMENTATIONS)}')
  backend = backend or jax.default_backend()
  if name == 'cudnn' and backend not in ('gpu', 'cuda'):
    return (f"attention implementation 'cudnn' needs an NVIDIA GPU; this "
            f"backend is {backend!r} (use 'auto', 'explicit' or 'xla')")
  return None


def resolve_implementation(name: str) -> str:
  """``'explicit'``, ``'xla'`` or ``'cudnn'`` for ``name`` on this backend.

  Raises ValueError (one line) where ``name`` cannot run here.
  """
  problem = check_implementation(name)
  if problem:
    raise ValueError(problem)
  if name == 'auto':
    return 'explicit' if explicit_attention() else 'xla'
  return name


def dot_product_attention(
    query: Array, key: Array, value: Array, mask: Array | None = None,
    implementation: str = 'auto', is_causal: bool = False,
) -> Array:
  """``[B, T, heads, d]`` attention output by the chosen implementation.

  ``key``/``value`` are ``[B, S, kv_heads, d]`` with ``kv_heads`` dividing
  ``heads`` (grouped-query attention). ``mask`` is a bool mask (module
  docstring); ``is_causal`` adds the causal mask of ``T == S`` positions.
  """
  implementation = resolve_implementation(implementation)
  if implementation == 'explicit':
    if is_causal:
      mask = combine_masks(mask, causal_mask(query.shape[1], key.shape[1]))
    weights = attention_weights(query, key, mask)
    return grouped_values(weights.astype(value.dtype), value)
  if implementation == 'cudnn' and query.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention implementation 'cudnn' needs a bfloat16 or "
                     f'float16 compute dtype (got {query.dtype}; set '
                     "--dtype=bfloat16 or use 'xla')")
  return jax.nn.dot_product_attention(
      query, key, value, mask=mask, is_causal=is_causal,
      implementation=implementation)


def _group(heads: int, kv_heads: int) -> int:
  """How many query heads read each key/value head."""
  if heads % kv_heads:
    raise ValueError(f'{heads} query heads do not share {kv_heads} key/value '
                     'heads evenly')
  return heads // kv_heads


def _repeat_heads(x: Array, heads: int) -> Array:
  """``[B, S, kv_heads, d]`` -> ``[B, S, heads, d]`` (head n reads n // group)."""
  group = _group(heads, x.shape[2])
  return x if group == 1 else jnp.repeat(x, group, axis=2)


def _native(*operands: Array) -> bool:
  """The explicit path's matmuls go to the native GEMM (module docstring)."""
  return kernels.tracing_native() and all(x.dtype == jnp.float32 for x in operands)


def _native_logits(query: Array, key: Array) -> Array:
  """``q k^T`` ``[B, heads, T, S]`` as one batched GEMM per key/value head.

  Query head ``n = kv * group + g`` reads key head ``kv``: the ``group x T``
  query rows of ``kv`` are the rows of one ``[group*T, d] x [S, d]^T``.
  """
  b, t, heads, d = query.shape
  s, kv_heads = key.shape[1], key.shape[2]
  group = _group(heads, kv_heads)
  q = query.reshape(b, t, kv_heads, group, d).transpose(0, 2, 3, 1, 4)
  k = key.transpose(0, 2, 1, 3)  # [B, kv_heads, S, d]
  logits = kernels.matmul(q.reshape(b, kv_heads, group * t, d), k, trans_b=True)
  return logits.reshape(b, heads, t, s)


def _native_values(weights: Array, value: Array) -> Array:
  """``weights [B, heads, T, S]`` times ``value [B, S, kv_heads, d]``: ``[B, T, heads, d]``."""
  b, heads, t, s = weights.shape
  kv_heads, d = value.shape[2], value.shape[3]
  group = _group(heads, kv_heads)
  out = kernels.matmul(weights.reshape(b, kv_heads, group * t, s),
                       value.transpose(0, 2, 1, 3))  # [B, kv_heads, group*T, d]
  return out.reshape(b, heads, t, d).transpose(0, 2, 1, 3)


def grouped_values(weights: Array, value: Array) -> Array:
  """``weights [B, heads, T, S]`` applied to ``value [B, S, kv_heads, d]``."""
  if _native(weights, value):
    return _native_values(weights, value)
  value = _repeat_heads(value, weights.shape[1])
  return jnp.einsum('bnts,bsnh->btnh', weights, value)


class MultiHeadAttention(nn.Module):
  """Multi-head attention: ``inputs_q [B,T,D]`` (and ``inputs_kv [B,S,D']``) -> ``[B,T,D]``.

  Parameters: ``query`` (DenseGeneral ``D -> heads x head_dim``), ``key``,
  ``value`` (``D -> kv_heads x head_dim``; ``kv_heads = num_kv_heads or
  num_heads``), with biases unless ``use_bias=False``, and ``out`` (``heads
  x head_dim -> D``). With ``inputs_kv=None`` this is self-attention.
  ``rotary=True`` rotates queries and keys by their positions with base
  ``rotary_base`` (self-attention only). ``dropout_rate`` drops attention
  weights when ``train=True``. ``implementation``: see the module docstring.

  Call arguments: ``mask`` (see the module docstring), ``causal`` (adds a
  causal mask), ``train``, ``decode`` (KV cache, self-attention only) and
  ``return_weights`` (also return ``[B, heads, T, S]`` weights).
  """

  num_heads: int
  qkv_features: int | None = None
  out_features: int | None = None
  dropout_rate: float = 0.0
  rotary: bool = False
  rotary_base: float = 10000.0
  use_bias: bool = True
  num_kv_heads: int | None = None  # None: num_heads
  implementation: str = 'auto'
  kernel_init: Any = nn.initializers.xavier_uniform()
  dtype: Any = jnp.float32

  def __post_init__(self):
    kv_heads = self.num_kv_heads or self.num_heads
    if kv_heads < 1 or self.num_heads % kv_heads:
      raise ValueError(f'num_kv_heads={self.num_kv_heads} must divide '
                       f'num_heads={self.num_heads}')
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(check_implementation(self.implementation))
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      inputs_q: Array,
      inputs_kv: Array | None = None,
      mask: Array | None = None,
      causal: bool = False,
      train: bool = False,
      decode: bool = False,
      return_weights: bool = False,
  ) -> Array | tuple[Array, Array]:
    self_attention = inputs_kv is None
    if not self_attention and (decode or self.rotary):
      raise ValueError('decode=True and rotary positions are for self-attention only')
    inputs_kv = inputs_q if self_attention else inputs_kv
    features = self.qkv_features or inputs_q.shape[-1]
    if features % self.num_heads:
      raise ValueError(f'{features} features do not split into {self.num_heads} heads')
    head_dim = features // self.num_heads
    dense = functools.partial(
        nn.DenseGeneral, use_bias=self.use_bias, dtype=self.dtype,
        kernel_init=self.kernel_init,
    )
    kv_features = (self.num_kv_heads or self.num_heads, head_dim)
    query = dense((self.num_heads, head_dim), name='query')(inputs_q)
    key = dense(kv_features, name='key')(inputs_kv)
    value = dense(kv_features, name='value')(inputs_kv)

    q_len = query.shape[1]
    offset = 0
    cached = decode and self.has_variable('cache', 'cached_key')
    if decode:
      cache_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
      cache_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
      if cached:
        offset = cache_index.value
    if self.rotary:
      positions = offset + jnp.arange(q_len)
      query = rotary_embedding(query, positions, self.rotary_base)
      key = rotary_embedding(key, positions, self.rotary_base)
    if cached:
      if mask is not None:
        raise ValueError('an extra mask is not supported while decoding from the cache')
      key = lax.dynamic_update_slice(cache_key.value, key, (0, offset, 0, 0))
      value = lax.dynamic_update_slice(cache_value.value, value, (0, offset, 0, 0))
      cache_key.value, cache_value.value = key, value
      cache_index.value = offset + q_len
      mask = causal_mask(q_len, key.shape[1], offset)
    # A causal mask alone goes to the kernel as is_causal (cuDNN skips the
    # masked blocks); with a padding mask or a cache offset it is a mask.
    is_causal = (causal or decode) and not cached and mask is None
    if (causal or decode) and not cached and not is_causal:
      mask = combine_masks(mask, causal_mask(q_len, key.shape[1]))
    if mask is not None:
      mask = jnp.asarray(mask, bool)
      if mask.ndim != 4:
        raise ValueError(f'attention masks must be 4-D [batch, heads, q, kv]; got {mask.shape}')

    drop = train and self.dropout_rate > 0.0
    if return_weights or drop:
      if is_causal:
        mask = causal_mask(q_len, key.shape[1])
      dropout = nn.Dropout(self.dropout_rate, deterministic=not train) if drop else None
      weights = attention_weights(query, key, mask, dropout)
      out = grouped_values(weights.astype(value.dtype), value)
    else:
      weights = None
      out = dot_product_attention(query, key, value, mask, self.implementation,
                                  is_causal=is_causal)
    out = nn.DenseGeneral(
        self.out_features or inputs_q.shape[-1], axis=(-2, -1), use_bias=self.use_bias,
        dtype=self.dtype, kernel_init=self.kernel_init, name='out',
    )(out)
    return (out, weights) if return_weights else out
