"""Transformers: encoder classifier, decoder-only LM, encoder-decoder, BERT, ViT.

All are built from ``TransformerBlock`` (attention + MLP, each a residual
branch with dropout) stacked by ``TransformerStack``. ``norm_first=True`` is
the pre-LayerNorm block (``x + f(LN(x))``, plus a final LayerNorm
``ln_final``); ``norm_first=False`` is the post-LN block of Vaswani et al.
2017 and BERT (``LN(x + f(x))``, no final norm). Positions are ``'learned'``
(a ``[max_len, d]`` table), ``'sinusoidal'`` (Vaswani et al. 2017, sin on
even and cos on odd channels) or ``'rotary'`` (applied to queries and keys in
every self-attention; nothing is added to the embeddings).

Sequence inputs: int tokens ``[B, T]`` are embedded; the classifier also
takes float features ``[B, T, F]`` (or ``[B, T]`` = one feature per step),
projected by the Dense ``input_proj``. ``mask`` is a bool ``[B, T]``
padding mask (True = real token; None = all real).

KV cache (``TransformerLM`` and ``EncoderDecoder.decode``): pass
``decode=True`` with a ``'cache'`` collection made by
``decoding.init_cache`` (``jax.eval_shape`` of ``init`` with ``decode=True``
and the full length, then zeros) and ``mutable=['cache']``. Each call feeds
the next chunk of tokens (a whole prompt, then one token at a time) and
returns logits for those positions; the cache holds every layer's keys and
values plus the model's ``position_index``. Cached logits equal the
uncached full-sequence logits (tested).

Parameter counts (``jax.eval_shape``, tested in ``tests/unit/test_models_transformer.py``):

=====================  ===========  ==============================================
gpt2_small             124,439,808  = GPT-2 small / HF GPT2Model (tied head)
bert_base              109,482,240  = HF BertModel incl. pooler (num_classes=None)
vit_s16 (1000 cls)      22,050,664  = timm vit_small_patch16_224 (224x224 input)
transformer_base        63,082,496  post-LN, shared 37000 vocab, no output bias
=====================  ===========  ==============================================

transformer_base vs the paper's "65M" (Vaswani et al. 2017, Table 3): the
shared 37000 x 512 embedding (source, target and pre-softmax) is 18,944,000,
each encoder layer 3,152,384 and each decoder layer 4,204,032, so 6+6 layers
give 63,082,496. The paper gives no breakdown of its rounded figure. With
``norm_first=True`` the two final LayerNorms add 2,048.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlresearch.models import cpu_fusion, registry
from dlresearch.models.attention import IMPLEMENTATIONS, MultiHeadAttention
from dlresearch.models.attention import check_implementation, padding_mask
from dlresearch.models.mlp import ACTIVATIONS, get_activation

Array = jax.Array

POSITIONS = ('learned', 'sinusoidal', 'rotary')
_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def _activation(name: str):
  """``mlp.ACTIVATIONS`` plus ``'gelu_tanh'`` (GPT-2's tanh approximation)."""
  if name == 'gelu_tanh':
    return functools.partial(nn.gelu, approximate=True)
  return get_activation(name)


def _check_activation(name: str) -> None:
  if name != 'gelu_tanh' and name not in ACTIVATIONS:
    raise ValueError(
        f'unknown activation {name!r}; choose gelu_tanh or one of: {", ".join(ACTIVATIONS)}'
    )


def _check_positions(kind: str) -> None:
  if kind not in POSITIONS:
    raise ValueError(f'unknown positions {kind!r}; choose one of: {", ".join(POSITIONS)}')


def _check_heads(width_name: str, width: int, num_heads: int) -> None:
  if width % num_heads:
    raise ValueError(f'{width_name}={width} is not divisible by num_heads={num_heads}')


def _check_common(positions: str, activation: str, d_model: int, num_heads: int) -> None:
  _check_positions(positions)
  _check_activation(activation)
  _check_heads('d_model', d_model, num_heads)


def sinusoidal_positions(positions: Array, dim: int) -> Array:
  """``[..., dim]`` table: ``sin(p / 10000**(2i/dim))`` at ``2i``, ``cos`` at ``2i+1``."""
  if dim % 2:
    raise ValueError(f'sinusoidal positions need an even width; got {dim}')
  inv_freq = 10000.0 ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], dim)


class AddPositions(nn.Module):
  """Adds position information to ``x [B, T, d]`` at integer ``positions [T]``.

  ``'learned'`` owns the parameter ``embedding [max_len, d]``; ``'rotary'``
  returns ``x`` unchanged (the attention layers rotate queries and keys).
  """

  kind: str = 'learned'
  max_len: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, positions: Array) -> Array:
    _check_positions(self.kind)
    if self.kind == 'rotary':
      return x
    if self.kind == 'sinusoidal':
      return x + sinusoidal_positions(positions, x.shape[-1]).astype(x.dtype)
    if x.shape[1] > self.max_len:
      raise ValueError(
          f'{x.shape[1]} positions exceed the {self.max_len} learned positions; '
          'shorten the input or build the model with a larger max_len'
      )
    table = self.param('embedding', _EMBED_INIT, (self.max_len, x.shape[-1]))
    return x + jnp.asarray(table, self.dtype)[positions]


class DecodePositions(nn.Module):
  """Positions ``arange(length)``, offset by a cached counter when decoding.

  With ``decode=True`` the counter ``position_index`` lives in the ``'cache'``
  collection: the call that creates it (cache initialisation) returns
  ``arange(length)``; later calls return ``index + arange(length)`` and
  advance the index by ``length``.
  """

  @nn.compact
  def __call__(self, length: int, decode: bool = False) -> Array:
    if not decode:
      return jnp.arange(length)
    cached = self.has_variable('cache', 'position_index')
    index = self.variable('cache', 'position_index', lambda: jnp.zeros((), jnp.int32))
    if not cached:
      return jnp.arange(length)
    start = index.value
    index.value = start + length
    return start + jnp.arange(length)


class MlpBlock(nn.Module):
  """``fc2(act(fc1(x)))`` with ``fc1: d -> mlp_dim``, ``fc2: mlp_dim -> d``."""

  mlp_dim: int
  activation: str = 'gelu'
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dense = functools.partial(
        nn.Dense, use_bias=self.use_bias, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform()
    )
    y = _activation(self.activation)(dense(self.mlp_dim, name='fc1')(x))
    return dense(x.shape[-1], name='fc2')(y)


class GatedMlpBlock(nn.Module):
  """``down(act(gate(x)) * up(x))``: SwiGLU with ``activation='silu'``
  (Shazeer 2020; Llama's MLP), GeGLU with ``'gelu'``.

  ``gate``, ``up``: ``d -> mlp_dim``; ``down``: ``mlp_dim -> d`` (Hugging
  Face's ``gate_proj``, ``up_proj``, ``down_proj``).
  """

  mlp_dim: int
  activation: str = 'silu'
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dense = functools.partial(
        nn.Dense, use_bias=self.use_bias, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform()
    )
    gate = _activation(self.activation)(dense(self.mlp_dim, name='gate')(x))
    return dense(x.shape[-1], name='down')(gate * dense(self.mlp_dim, name='up')(x))


NORMS = ('layer', 'rms')


def make_norm(kind: str, epsilon: float, dtype: Any, name: str) -> nn.Module:
  """``'layer'``: LayerNorm (exact variance); ``'rms'``: RMSNorm (Zhang &
  Sennrich 2019; ``x / sqrt(mean(x^2) + eps) * scale``, statistics in float32)."""
  if kind == 'rms':
    return nn.RMSNorm(epsilon=epsilon, dtype=dtype, name=name)
  # use_fast_variance=False: E[(x - mean)^2], exact on offset inputs
  # (flax's default E[x^2] - E[x]^2 loses 0.1 at offset 1000).
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, use_fast_variance=False,
                      name=name)


def _check_norm(kind: str) -> None:
  if kind not in NORMS:
    raise ValueError(f'unknown norm {kind!r}; choose one of: {", ".join(NORMS)}')


class TransformerBlock(nn.Module):
  """Self-attention (``attn``), optional cross-attention (``cross_attn``), MLP (``mlp``).

  Norms are ``ln_attn``, ``ln_cross``, ``ln_mlp`` (LayerNorm, or RMSNorm
  with ``norm='rms'``); ``gated_mlp`` swaps ``MlpBlock`` for
  ``GatedMlpBlock``; ``num_kv_heads``, ``rotary_base``, ``use_bias`` and
  ``attention_impl`` go to the attention layers. Dropout ``dropout_rate``
  is applied to each branch output before the residual add;
  ``attention_dropout_rate`` to the attention weights. Returns ``(x,
  weights)`` where ``weights`` is ``{'self': [B,h,T,T], 'cross': [B,h,T,S]}``
  when ``return_weights`` and else empty.
  """

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  norm_first: bool = True
  causal: bool = False
  cross_attention: bool = False
  rotary: bool = False
  activation: str = 'gelu'
  layer_norm_epsilon: float = 1e-6
  norm: str = 'layer'
  gated_mlp: bool = False
  num_kv_heads: int | None = None
  rotary_base: float = 10000.0
  use_bias: bool = True
  attention_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: Array,
      mask: Array | None = None,
      encoded: Array | None = None,
      encoded_mask: Array | None = None,
      train: bool = False,
      decode: bool = False,
      return_weights: bool = False,
  ) -> tuple[Array, dict[str, Array]]:
    weights = {}
    # On CPU a pre-LN branch's output gradient is materialized too
    # (cpu_fusion): 1.05x on the gpt_small step, no change on nanoGPT's.
    materialize = cpu_fusion.enabled()

    def residual(x, branch, norm_name):
      norm = make_norm(self.norm, self.layer_norm_epsilon, self.dtype, norm_name)
      drop = nn.Dropout(self.dropout_rate, deterministic=not train)
      if self.norm_first:
        out = drop(branch(norm(x)))
        return x + (cpu_fusion.materialize_gradient(out) if materialize else out)
      return norm(x + drop(branch(x)))

    attention = functools.partial(
        MultiHeadAttention, self.num_heads, dropout_rate=self.attention_dropout_rate,
        use_bias=self.use_bias, implementation=self.attention_impl, dtype=self.dtype,
    )

    def self_attention(y):
      out = attention(rotary=self.rotary, rotary_base=self.rotary_base,
                      num_kv_heads=self.num_kv_heads, name='attn')(
          y, mask=mask, causal=self.causal, train=train, decode=decode,
          return_weights=return_weights,
      )
      if return_weights:
        out, weights['self'] = out
      return out

    def cross_attention(y):
      out = attention(name='cross_attn')(
          y, encoded, mask=encoded_mask, train=train, return_weights=return_weights
      )
      if return_weights:
        out, weights['cross'] = out
      return out

    x = residual(x, self_attention, 'ln_attn')
    if self.cross_attention:
      if encoded is None:
        raise ValueError('a cross-attention block needs the encoder output `encoded`')
      x = residual(x, cross_attention, 'ln_cross')
    mlp_cls = GatedMlpBlock if self.gated_mlp else MlpBlock
    mlp = mlp_cls(self.mlp_dim, self.activation, self.use_bias, self.dtype, name='mlp')
    x = residual(x, mlp, 'ln_mlp')
    return x, weights


class TransformerStack(nn.Module):
  """``num_layers`` blocks ``block_0..`` (+ ``ln_final`` when ``norm_first``).

  On CPU (``cpu_fusion.enabled()``) each block's input passes through
  ``cpu_fusion.materialize_gradient`` (same values and gradients, a faster
  backward pass).

  Returns ``(x, weights)``; ``weights`` is a tuple of per-block weight dicts
  (empty dicts unless ``return_weights``).
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  norm_first: bool = True
  causal: bool = False
  cross_attention: bool = False
  rotary: bool = False
  activation: str = 'gelu'
  layer_norm_epsilon: float = 1e-6
  remat: bool = False  # recompute each block's activations in the backward pass
  norm: str = 'layer'
  gated_mlp: bool = False
  num_kv_heads: int | None = None
  rotary_base: float = 10000.0
  use_bias: bool = True
  attention_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: Array,
      mask: Array | None = None,
      encoded: Array | None = None,
      encoded_mask: Array | None = None,
      train: bool = False,
      decode: bool = False,
      return_weights: bool = False,
  ) -> tuple[Array, tuple[dict[str, Array], ...]]:
    all_weights = []
    # Under remat the flags are static (positional indices count ``self``).
    block_cls = (nn.remat(TransformerBlock, static_argnums=(5, 6, 7))
                 if self.remat else TransformerBlock)
    materialize = cpu_fusion.enabled()
    for i in range(self.num_layers):
      if materialize:
        x = cpu_fusion.materialize_gradient(x)
      x, weights = block_cls(
          num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate, norm_first=self.norm_first,
          causal=self.causal, cross_attention=self.cross_attention, rotary=self.rotary,
          activation=self.activation, layer_norm_epsilon=self.layer_norm_epsilon,
          norm=self.norm, gated_mlp=self.gated_mlp, num_kv_heads=self.num_kv_heads,
          rotary_base=self.rotary_base, use_bias=self.use_bias,
          attention_impl=self.attention_impl, dtype=self.dtype, name=f'block_{i}',
      )(x, mask, encoded, encoded_mask, train, decode, return_weights)
      all_weights.append(weights)
    if self.norm_first:
      x = make_norm(self.norm, self.layer_norm_epsilon, self.dtype, 'ln_final')(x)
    return x, tuple(all_weights)


def _features_out(logits, feats, return_features):
  return (logits, feats) if return_features else logits


def _attention_dropout(model) -> float:
  """``model.attention_dropout_rate``, where None means ``model.dropout_rate``."""
  rate = model.attention_dropout_rate
  return model.dropout_rate if rate is None else rate


def _self_attention_weights(weights) -> tuple[Array, ...]:
  return tuple(w['self'] for w in weights)


def _check_mask(mask: Array | None, batch: int, length: int) -> Array:
  if mask is None:
    return jnp.ones((batch, length), bool)
  if mask.shape != (batch, length):
    raise ValueError(f'mask has shape {mask.shape}; expected [batch, time] = {(batch, length)}')
  return jnp.asarray(mask, bool)


# ------------------------------------------------------------ classifier --


class TransformerClassifier(nn.Module):
  """Pre-LN Transformer encoder over a sequence, pooled, then ``head``.

  ``pooling='mean'`` averages the final tokens over real positions;
  ``'cls'`` prepends a learned ``cls`` token and uses its final state.
  Features: ``tokens`` (final token states), ``pre_logits`` (pooled), and
  with ``return_attention=True`` ``attention_weights`` (a tuple over layers
  of ``[B, heads, T, T]``; T includes the class token).
  """

  num_classes: int
  vocab_size: int | None = None
  num_layers: int = 2
  d_model: int = 128
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 * d_model
  max_len: int = 512
  positions: str = 'learned'
  pooling: str = 'mean'
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  activation: str = 'gelu'
  layer_norm_epsilon: float = 1e-6
  remat: bool = False
  attention_impl: str = 'auto'  # attention.IMPLEMENTATIONS
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_common(self.positions, self.activation, self.d_model, self.num_heads)
    if self.pooling not in ('mean', 'cls'):
      raise ValueError(f"unknown pooling {self.pooling!r}; choose 'mean' or 'cls'")
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      x: Array,
      train: bool = False,
      return_features: bool = False,
      mask: Array | None = None,
      return_attention: bool = False,
  ) -> Array | tuple[Array, dict[str, Array]]:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
      if x.ndim != 2:
        raise ValueError(f'token inputs must be [batch, time]; got shape {x.shape}')
      if self.vocab_size is None:
        raise ValueError('integer token inputs need vocab_size; build the model with vocab_size=')
      x = nn.Embed(self.vocab_size, self.d_model, embedding_init=_EMBED_INIT,
                   dtype=self.dtype, name='token_embed')(x)
    else:
      if x.ndim == 2:
        x = x[..., None]
      if x.ndim != 3:
        raise ValueError(f'float inputs must be [batch, time, features]; got shape {x.shape}')
      x = nn.Dense(self.d_model, dtype=self.dtype, name='input_proj')(jnp.asarray(x, self.dtype))
    batch, length = x.shape[:2]
    mask = _check_mask(mask, batch, length)
    if self.pooling == 'cls':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, self.d_model))
      cls = jnp.broadcast_to(jnp.asarray(cls, self.dtype), (batch, 1, self.d_model))
      x = jnp.concatenate([cls, x], axis=1)
      mask = jnp.concatenate([jnp.ones((batch, 1), bool), mask], axis=1)
    x = AddPositions(self.positions, self.max_len, self.dtype, name='pos_embed')(
        x, jnp.arange(x.shape[1])
    )
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x, weights = TransformerStack(
        remat=self.remat, num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim or 4 * self.d_model, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        norm_first=True, rotary=self.positions == 'rotary', activation=self.activation,
        layer_norm_epsilon=self.layer_norm_epsilon, attention_impl=self.attention_impl,
        dtype=self.dtype, name='encoder',
    )(x, padding_mask(mask), train=train, return_weights=return_attention)
    if self.pooling == 'cls':
      pooled = x[:, 0]
    else:
      m = mask[..., None].astype(x.dtype)
      pooled = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    feats = {'tokens': x, 'pre_logits': pooled}
    if return_attention:
      feats['attention_weights'] = _self_attention_weights(weights)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(pooled)
    return _features_out(logits, feats, return_features)


# ---------------------------------------------------------- decoder-only --


class TransformerLM(nn.Module):
  """Decoder-only (GPT-style) pre-LN causal LM: ``tokens [B,T] -> logits [B,T,V]``.

  Embedding ``token_embed`` (N(0, 0.02)), positions ``pos_embed``, embedding
  dropout, causal ``transformer`` stack, output = ``token_embed`` transposed
  (``tie_embeddings``) or the bias-free Dense ``lm_head``. Features:
  ``pre_logits`` = the final-norm hidden states ``[B, T, d]``. ``decode=True``
  uses the KV cache (module docstring).

  The Llama family (``llama_*`` below) is this model with ``positions=
  'rotary'`` (base ``rotary_base``), ``norm='rms'``, ``gated_mlp=True``
  with ``activation='silu'`` (SwiGLU), ``use_bias=False`` and
  ``num_kv_heads`` key/value heads (grouped-query attention; the KV cache
  holds that many heads).
  """

  vocab_size: int
  num_layers: int = 4
  d_model: int = 256
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 * d_model
  max_len: int = 512
  positions: str = 'learned'
  dropout_rate: float = 0.0
  attention_dropout_rate: float | None = 0.0  # None: dropout_rate
  tie_embeddings: bool = True
  activation: str = 'gelu'
  layer_norm_epsilon: float = 1e-5
  remat: bool = False
  norm: str = 'layer'  # 'rms': RMSNorm
  gated_mlp: bool = False  # True: down(act(gate(x)) * up(x))
  num_kv_heads: int | None = None  # None: num_heads (grouped-query attention)
  rotary_base: float = 10000.0  # theta of positions='rotary'
  use_bias: bool = True  # biases of the attention and MLP projections
  attention_impl: str = 'auto'  # attention.IMPLEMENTATIONS
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_common(self.positions, self.activation, self.d_model, self.num_heads)
    _check_norm(self.norm)
    kv_heads = self.num_kv_heads or self.num_heads
    if kv_heads < 1 or self.num_heads % kv_heads:
      raise ValueError(f'num_kv_heads={self.num_kv_heads} must divide '
                       f'num_heads={self.num_heads}')
    if self.attention_impl not in IMPLEMENTATIONS:
      raise ValueError(check_implementation(self.attention_impl))
    if (self.d_model // self.num_heads) % 2 and self.positions == 'rotary':
      raise ValueError(f'rotary positions need an even head dimension; got '
                       f'd_model/num_heads = {self.d_model // self.num_heads}')
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      tokens: Array,
      train: bool = False,
      return_features: bool = False,
      decode: bool = False,
  ) -> Array | tuple[Array, dict[str, Array]]:
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer) or tokens.ndim != 2:
      raise ValueError(f'tokens must be int [batch, time]; got {tokens.dtype} {tokens.shape}')
    embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=_EMBED_INIT,
                     dtype=self.dtype, name='token_embed')
    x = embed(tokens)
    positions = DecodePositions(name='decode_positions')(tokens.shape[1], decode)
    x = AddPositions(self.positions, self.max_len, self.dtype, name='pos_embed')(x, positions)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x, _ = TransformerStack(
        remat=self.remat, num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim or 4 * self.d_model, dropout_rate=self.dropout_rate,
        attention_dropout_rate=_attention_dropout(self), norm_first=True, causal=True,
        rotary=self.positions == 'rotary',
        activation=self.activation, layer_norm_epsilon=self.layer_norm_epsilon,
        norm=self.norm, gated_mlp=self.gated_mlp, num_kv_heads=self.num_kv_heads,
        rotary_base=self.rotary_base, use_bias=self.use_bias,
        attention_impl=self.attention_impl, dtype=self.dtype, name='transformer',
    )(x, train=train, decode=decode)
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype, name='lm_head')(x)
    return _features_out(logits, {'pre_logits': x}, return_features)


# -------------------------------------------------------- encoder-decoder --


class EncoderDecoder(nn.Module):
  """Encoder-decoder Transformer (Vaswani et al. 2017) with cross-attention.

  Embeddings start at N(0, 1/d) and are multiplied by sqrt(d) on input
  (section 3.4). ``tie_embeddings=True`` shares one ``embed`` matrix between
  source, target and the pre-softmax projection (a shared vocabulary);
  otherwise ``src_embed``, ``tgt_embed`` and a bias-free Dense
  ``logits``. ``src_mask`` is the source padding mask; target
  padding needs no mask (causal attention never looks ahead, and the loss
  ignores padded targets).

  Methods: ``encode(src, src_mask=None, train=False) -> [B, S, d]``;
  ``decode(encoded, tgt_in, src_mask=None, train=False, decode=False) ->
  logits [B, T, V]`` (``decode=True`` uses the KV cache in the decoder
  self-attention; cross-attention reads ``encoded`` each call).
  """

  vocab_size: int
  num_layers: int = 2
  num_decoder_layers: int | None = None
  d_model: int = 128
  num_heads: int = 4
  mlp_dim: int | None = None  # None: 4 * d_model
  max_len: int = 256
  positions: str = 'sinusoidal'
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  norm_first: bool = True
  tie_embeddings: bool = True
  activation: str = 'relu'
  layer_norm_epsilon: float = 1e-6
  remat: bool = False
  attention_impl: str = 'auto'  # attention.IMPLEMENTATIONS
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_common(self.positions, self.activation, self.d_model, self.num_heads)
    super().__post_init__()

  def setup(self):
    embed = functools.partial(
        nn.Embed, self.vocab_size, self.d_model, dtype=self.dtype,
        embedding_init=nn.initializers.normal(self.d_model**-0.5),
    )
    if self.tie_embeddings:
      self.embed = embed()
    else:
      self.src_embed = embed()
      self.tgt_embed = embed()
      self.logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype)
    positions = functools.partial(AddPositions, self.positions, self.max_len, self.dtype)
    self.encoder_pos_embed = positions()
    self.decoder_pos_embed = positions()
    self.decode_positions = DecodePositions()
    stack = functools.partial(
        TransformerStack, num_heads=self.num_heads, mlp_dim=self.mlp_dim or 4 * self.d_model,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        norm_first=self.norm_first, rotary=self.positions == 'rotary',
        activation=self.activation, layer_norm_epsilon=self.layer_norm_epsilon,
        remat=self.remat, attention_impl=self.attention_impl, dtype=self.dtype,
    )
    self.encoder = stack(self.num_layers)
    self.decoder = stack(
        self.num_decoder_layers or self.num_layers, causal=True, cross_attention=True
    )
    self.dropout = nn.Dropout(self.dropout_rate)

  def _embed(self, tokens: Array, what: str) -> Array:
    if self.tie_embeddings:
      embed = self.embed
    else:
      embed = self.src_embed if what == 'src' else self.tgt_embed
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer) or tokens.ndim != 2:
      raise ValueError(
          f'{what} must be int tokens [batch, time]; got {tokens.dtype} {tokens.shape}'
      )
    return embed(tokens) * math.sqrt(self.d_model)

  def encode(self, src: Array, src_mask: Array | None = None, train: bool = False) -> Array:
    x = self._embed(src, 'src')
    src_mask = _check_mask(src_mask, *x.shape[:2])
    x = self.encoder_pos_embed(x, jnp.arange(x.shape[1]))
    x = self.dropout(x, deterministic=not train)
    x, _ = self.encoder(x, padding_mask(src_mask), train=train)
    return x

  def decode(
      self,
      encoded: Array,
      tgt_in: Array,
      src_mask: Array | None = None,
      train: bool = False,
      decode: bool = False,
  ) -> Array:
    src_mask = _check_mask(src_mask, *encoded.shape[:2])
    y = self._embed(tgt_in, 'tgt_in')
    y = self.decoder_pos_embed(y, self.decode_positions(y.shape[1], decode))
    y = self.dropout(y, deterministic=not train)
    y, _ = self.decoder(
        y, None, encoded, padding_mask(src_mask), train=train, decode=decode
    )
    if self.tie_embeddings:
      return self.embed.attend(y)
    return self.logits(y)

  def __call__(
      self, src: Array, tgt_in: Array, train: bool = False, src_mask: Array | None = None
  ) -> Array:
    encoded = self.encode(src, src_mask, train)
    return self.decode(encoded, tgt_in, src_mask, train)


# ------------------------------------------------------------------- BERT --


class BERT(nn.Module):
  """BERT encoder (Devlin et al. 2019): embeddings, encoder stack, pooler.

  Embeddings: ``token_embed`` + learned ``pos_embed`` + ``token_type_embed``,
  then ``embed_norm`` and dropout. Post-LN blocks by default (as BERT);
  ``norm_first=True`` gives pre-LN blocks with a final norm. The pooler is
  ``tanh(Dense(h[:, 0]))`` (``pooler``). With ``num_classes`` a ``head``
  Dense on the dropped-out pooled vector gives logits (the classifier
  contract); with ``num_classes=None`` the model is HF ``BertModel`` and
  returns the pooled vector ``[B, d]`` in place of logits. ``pooling='mean'``
  replaces the pooler by the mean of the real tokens' final states (as
  sentence-transformers embed; no ``pooler`` parameters).

  Features: ``sequence_output`` ``[B, T, d]``, ``pooled_output``,
  ``pre_logits`` (pooled after dropout), ``attention_weights`` on request.
  """

  num_classes: int | None = None
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_len: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float | None = None  # None: dropout_rate
  norm_first: bool = False
  activation: str = 'gelu'
  layer_norm_epsilon: float = 1e-12
  pooling: str = 'cls'  # 'cls': tanh pooler on [CLS]; 'mean': mean of real tokens
  remat: bool = False
  attention_impl: str = 'auto'  # attention.IMPLEMENTATIONS
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_activation(self.activation)
    _check_heads('hidden_size', self.hidden_size, self.num_heads)
    if self.pooling not in ('cls', 'mean'):
      raise ValueError(f"pooling must be 'cls' or 'mean'; got {self.pooling!r}")
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      tokens: Array,
      train: bool = False,
      return_features: bool = False,
      mask: Array | None = None,
      token_type_ids: Array | None = None,
      return_attention: bool = False,
  ) -> Array | tuple[Array, dict[str, Array]]:
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer) or tokens.ndim != 2:
      raise ValueError(f'tokens must be int [batch, time]; got {tokens.dtype} {tokens.shape}')
    batch, length = tokens.shape
    mask = _check_mask(mask, batch, length)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(tokens)
    embed = functools.partial(nn.Embed, embedding_init=_EMBED_INIT, dtype=self.dtype)
    x = embed(self.vocab_size, self.hidden_size, name='token_embed')(tokens)
    x = AddPositions('learned', self.max_len, self.dtype, name='pos_embed')(x, jnp.arange(length))
    x = x + embed(self.type_vocab_size, self.hidden_size, name='token_type_embed')(token_type_ids)
    x = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                     use_fast_variance=False, name='embed_norm')(x)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    x = drop(x)
    x, weights = TransformerStack(
        remat=self.remat, num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        dropout_rate=self.dropout_rate, attention_dropout_rate=_attention_dropout(self),
        norm_first=self.norm_first, activation=self.activation,
        layer_norm_epsilon=self.layer_norm_epsilon, attention_impl=self.attention_impl,
        dtype=self.dtype, name='encoder',
    )(x, padding_mask(mask), train=train, return_weights=return_attention)
    if self.pooling == 'mean':  # sentence-transformers: mean of real tokens
      m = jnp.ones(x.shape[:2], x.dtype) if mask is None else jnp.asarray(mask, x.dtype)
      pooled = (x * m[..., None]).sum(1) / jnp.maximum(m.sum(1), 1.0)[:, None]
    else:
      pooled = jnp.tanh(nn.Dense(self.hidden_size, dtype=self.dtype, name='pooler')(x[:, 0]))
    feats = {'sequence_output': x, 'pooled_output': pooled, 'pre_logits': drop(pooled)}
    if return_attention:
      feats['attention_weights'] = _self_attention_weights(weights)
    if self.num_classes is None:
      return _features_out(pooled, feats, return_features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(feats['pre_logits'])
    return _features_out(logits, feats, return_features)


# -------------------------------------------------------------------- ViT --


class ViT(nn.Module):
  """Vision Transformer (Dosovitskiy et al. 2021): images ``[B,H,W,C]`` -> logits.

  ``patch_embed`` (conv, kernel = stride = patch), a learned ``cls`` token,
  learned ``pos_embedding`` ``[1, 1 + num_patches, d]`` (sized by the input
  at init), pre-LN ``encoder`` with final norm, ``head`` on the class token
  (zero-initialised). Features: ``pre_logits`` (final class token),
  ``tokens``, and ``attention_weights`` (tuple over layers of ``[B, heads,
  1+N, 1+N]``) with ``return_attention=True``.
  """

  num_classes: int
  patch_size: int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  remat: bool = False
  attention_impl: str = 'auto'  # attention.IMPLEMENTATIONS
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_heads('hidden_size', self.hidden_size, self.num_heads)
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      x: Array,
      train: bool = False,
      return_features: bool = False,
      return_attention: bool = False,
  ) -> Array | tuple[Array, dict[str, Array]]:
    if x.ndim != 4:
      raise ValueError(f'ViT takes NHWC images; got shape {x.shape}')
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f'image size {x.shape[1:3]} is not a multiple of the patch size {p}')
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding='VALID',
                dtype=self.dtype, name='patch_embed')(jnp.asarray(x, self.dtype))
    batch = x.shape[0]
    x = x.reshape(batch, -1, self.hidden_size)
    cls = self.param('cls', nn.initializers.zeros, (1, 1, self.hidden_size))
    x = jnp.concatenate(
        [jnp.broadcast_to(jnp.asarray(cls, self.dtype), (batch, 1, self.hidden_size)), x], axis=1
    )
    pos = self.param('pos_embedding', _EMBED_INIT, (1, x.shape[1], self.hidden_size))
    x = x + jnp.asarray(pos, self.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x, weights = TransformerStack(
        remat=self.remat, num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        norm_first=True, activation='gelu', layer_norm_epsilon=self.layer_norm_epsilon,
        attention_impl=self.attention_impl, dtype=self.dtype, name='encoder',
    )(x, train=train, return_weights=return_attention)
    feats = {'tokens': x, 'pre_logits': x[:, 0]}
    if return_attention:
      feats['attention_weights'] = _self_attention_weights(weights)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                      name='head')(feats['pre_logits'])
    return _features_out(logits, feats, return_features)


# --------------------------------------------------------------- registry --

registry.register('transformer_classifier', TransformerClassifier)
registry.register('transformer_lm', TransformerLM)
# GPT-2 small (Radford et al. 2019): 12 x 768, 12 heads, tied, gelu (tanh).
registry.register('gpt2_small', functools.partial(
    TransformerLM, vocab_size=50257, num_layers=12, d_model=768, num_heads=12,
    mlp_dim=3072, max_len=1024, dropout_rate=0.1, attention_dropout_rate=None,
    activation='gelu_tanh'))
# Llama (Touvron et al. 2023): rotary positions, RMSNorm, SwiGLU, no biases,
# grouped-query attention. 'llama' takes any sizes (default: the module's,
# with 2 key/value heads); llama_tiny is for tests and CPU runs; llama_100m is
# 100,092,672 parameters with a 32000 vocabulary (tied; checked by eval_shape).
LLAMA = dict(positions='rotary', norm='rms', gated_mlp=True, activation='silu',
             use_bias=False, tie_embeddings=False, layer_norm_epsilon=1e-5,
             rotary_base=10000.0)
registry.register('llama', functools.partial(TransformerLM, **LLAMA, num_kv_heads=2))
registry.register('llama_tiny', functools.partial(
    TransformerLM, **LLAMA, num_layers=2, d_model=64, num_heads=4,
    num_kv_heads=2, mlp_dim=176))
registry.register('llama_100m', functools.partial(
    TransformerLM, **{**LLAMA, 'tie_embeddings': True}, vocab_size=32000,
    num_layers=12, d_model=768, num_heads=12, num_kv_heads=4, mlp_dim=2048,
    max_len=2048))
registry.register('transformer_seq2seq', EncoderDecoder)
# Transformer base (Vaswani et al. 2017): 6+6 x 512, 8 heads, FF 2048, post-LN.
registry.register('transformer_base', functools.partial(
    EncoderDecoder, vocab_size=37000, num_layers=6, num_decoder_layers=6,
    d_model=512, num_heads=8, mlp_dim=2048, norm_first=False))
# BERT-base (the module defaults); num_classes=None is HF BertModel.
registry.register('bert_base', BERT)
# ViT-S/16: 12 x 384, 6 heads, MLP 1536, 16x16 patches.
registry.register('vit_s16', functools.partial(
    ViT, patch_size=16, hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536))
# A small ViT for 28x28 / 32x32 inputs (patch 4) and tests.
registry.register('vit_tiny', functools.partial(
    ViT, patch_size=4, hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128))
