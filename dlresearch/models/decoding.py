"""Autoregressive decoding: sampling from LMs, greedy and beam search for seq2seq.

- ``generate`` samples from a ``TransformerLM`` with its KV cache: the
  prompt is fed in one call (prefill), then one token per
  ``lax.fori_loop`` step over a cache sized ``prompt + max_new_tokens``.
- ``sample_rnn`` does the same for ``RNNLanguageModel`` with its carried
  state.
- ``greedy_decode`` and ``beam_search`` decode an ``EncoderDecoder``
  (``lax.while_loop``, stopping early once every sequence has ended).

All of them are jitted (the model and the sizes are static) and return int32
arrays of fixed shape. Prompts in a batch share one length (no padding).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
Params = Any


def init_cache(model: nn.Module, *args: Any, method: Any = None, **kwargs: Any) -> Any:
  """A zero ``'cache'`` collection for ``model.apply(..., decode=True)``.

  ``args`` are example inputs (arrays or ``jax.ShapeDtypeStruct``) with the
  full decode length, e.g. ``init_cache(lm, jax.ShapeDtypeStruct((B, L),
  jnp.int32))``. Shapes come from ``jax.eval_shape`` of ``model.init``, so no
  parameters are materialised.
  """
  init = functools.partial(model.init, method=method, decode=True, **kwargs)
  shapes = jax.eval_shape(init, jax.random.key(0), *args)
  if 'cache' not in shapes:
    raise ValueError(f'{type(model).__name__} made no cache with decode=True')
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])


def _check_sampling(temperature: float, top_k: int | None, greedy: bool,
                    top_p: float = 1.0) -> None:
  if not greedy and not temperature > 0:
    raise ValueError(f'temperature must be > 0 (or use greedy=True); got {temperature}')
  if top_k is not None and top_k < 1:
    raise ValueError(f'top_k must be >= 1 or None; got {top_k}')
  _check_top_p(top_p)


def _check_top_p(top_p: Any) -> None:
  if isinstance(top_p, jax.core.Tracer):
    return  # checked by the caller that made it
  if not 0.0 < float(top_p) <= 1.0:
    raise ValueError(f'top_p must be in (0, 1] (1 = off); got {top_p}')


def _top_p_filter(logits: Array, top_p: float | Array) -> Array:
  """``logits`` with tokens outside the nucleus set to ``-inf``.

  The nucleus is the smallest set of most likely tokens whose probabilities
  sum to at least ``top_p``: tokens are kept in order of probability while
  the mass before them is below ``top_p``, so the token that crosses
  ``top_p`` is kept. Ties with the least likely kept token are kept too.
  """
  probs = jax.nn.softmax(logits, axis=-1)
  desc = -jnp.sort(-probs, axis=-1)
  mass_before = jnp.cumsum(desc, axis=-1) - desc
  keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
  smallest = jnp.take_along_axis(desc, keep - 1, axis=-1)
  return jnp.where(probs < smallest, -jnp.inf, logits)


def sample_logits(
    logits: Array,
    rng: Array,
    temperature: float | Array = 1.0,
    top_k: int | Array | None = None,
    greedy: bool | Array = False,
    top_p: float | Array = 1.0,
) -> Array:
  """Next tokens ``[B]`` from ``logits [B, V]``.

  ``greedy``: the argmax. Otherwise a draw from ``softmax(logits /
  temperature)`` restricted to the ``top_k`` largest logits (ties with the
  k-th largest are kept; ``None`` or 0 keeps all), then to the nucleus of
  ``top_p`` (0 < p <= 1; 1 keeps all): the smallest set of most likely
  tokens, after temperature and top-k, whose probability sums to at least
  ``top_p``, including the token that crosses it (Holtzman et al. 2020). All
  settings may be traced arrays, so one compiled sampler serves every
  setting.
  """
  _check_top_p(top_p)
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  k = vocab if top_k is None else jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  kth = jnp.take(jnp.sort(logits, axis=-1), vocab - k, axis=-1)[..., None]
  filtered = jnp.where(logits < kth, -jnp.inf, logits)
  temperature = jnp.where(greedy, 1.0, temperature)
  scaled = filtered / temperature
  scaled = jnp.where(top_p < 1.0, _top_p_filter(scaled, top_p), scaled)
  sampled = jax.random.categorical(rng, scaled, axis=-1)
  return jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled).astype(jnp.int32)


def _sampling_args(temperature: float, top_k: int | None, greedy: bool,
                   top_p: float) -> tuple[Array, ...]:
  _check_sampling(temperature, top_k, greedy, top_p)
  return jnp.float32(temperature), jnp.int32(top_k or 0), jnp.bool_(greedy), jnp.float32(top_p)


def _check_prompt(prompt: Array) -> Array:
  prompt = jnp.asarray(prompt)
  if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(
        f'prompt must be int [batch, length >= 1]; got {prompt.dtype} {prompt.shape}'
    )
  return prompt.astype(jnp.int32)


def generate(
    model: nn.Module,
    params: Params,
    prompt_tokens: Array,
    max_new_tokens: int,
    rng: Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    top_p: float = 1.0,
) -> Array:
  """Continues ``prompt_tokens [B, P]`` by ``max_new_tokens`` tokens.

  ``model`` is a ``TransformerLM`` (``decode=True`` with a KV cache).
  Returns ``[B, P + max_new_tokens]``, the prompt followed by the new
  tokens. Step ``i`` draws with ``jax.random.fold_in(rng, i)``; the settings
  (``temperature``, ``top_k``, ``top_p``, ``greedy``) are those of
  ``sample_logits``.
  """
  prompt = _check_prompt(prompt_tokens)
  sampling = _sampling_args(temperature, top_k, greedy, top_p)
  total = prompt.shape[1] + max_new_tokens
  max_len = getattr(model, 'max_len', None)
  if getattr(model, 'positions', None) == 'learned' and max_len is not None and total > max_len:
    raise ValueError(
        f'prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) = {total} '
        f'exceeds the model max_len {max_len}'
    )
  if max_new_tokens < 0:
    raise ValueError(f'max_new_tokens must be >= 0; got {max_new_tokens}')
  if max_new_tokens == 0:
    return prompt
  return _generate(model, params, prompt, rng, sampling, max_new_tokens=max_new_tokens)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens'))
def _generate(model, params, prompt, rng, sampling, *, max_new_tokens):
  batch, plen = prompt.shape
  total = plen + max_new_tokens
  cache = init_cache(model, jax.ShapeDtypeStruct((batch, total), jnp.int32))

  def step(tokens, cache, i):
    logits, mutated = model.apply(
        {'params': params, 'cache': cache}, tokens, decode=True, mutable=['cache']
    )
    token = sample_logits(logits[:, -1], jax.random.fold_in(rng, i), *sampling)
    return token, mutated['cache']

  token, cache = step(prompt, cache, 0)
  out = jnp.zeros((batch, total), jnp.int32).at[:, :plen].set(prompt).at[:, plen].set(token)

  def body(i, state):
    out, cache, token = state
    token, cache = step(token[:, None], cache, i)
    return lax.dynamic_update_slice(out, token[:, None], (0, plen + i)), cache, token

  out, _, _ = lax.fori_loop(1, max_new_tokens, body, (out, cache, token))
  return out


def sample_rnn(
    model: nn.Module,
    params: Params,
    prompt: Array,
    max_new_tokens: int,
    rng: Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    top_p: float = 1.0,
) -> Array:
  """Continues ``prompt [B, P]`` with an ``RNNLanguageModel``, carrying its state.

  Returns ``[B, P + max_new_tokens]``; step ``i`` draws with
  ``jax.random.fold_in(rng, i)``.
  """
  prompt = _check_prompt(prompt)
  sampling = _sampling_args(temperature, top_k, greedy, top_p)
  if max_new_tokens < 0:
    raise ValueError(f'max_new_tokens must be >= 0; got {max_new_tokens}')
  if max_new_tokens == 0:
    return prompt
  return _sample_rnn(model, params, prompt, rng, sampling, max_new_tokens=max_new_tokens)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens'))
def _sample_rnn(model, params, prompt, rng, sampling, *, max_new_tokens):
  batch, plen = prompt.shape

  def step(tokens, carry, i):
    logits, carry = model.apply(
        {'params': params}, tokens, carry=carry, return_carry=True
    )
    token = sample_logits(logits[:, -1], jax.random.fold_in(rng, i), *sampling)
    return token, carry

  token, carry = step(prompt, None, 0)
  out = jnp.zeros((batch, plen + max_new_tokens), jnp.int32)
  out = out.at[:, :plen].set(prompt).at[:, plen].set(token)

  def body(i, state):
    out, carry, token = state
    token, carry = step(token[:, None], carry, i)
    return lax.dynamic_update_slice(out, token[:, None], (0, plen + i)), carry, token

  out, _, _ = lax.fori_loop(1, max_new_tokens, body, (out, carry, token))
  return out


# ------------------------------------------------------------ seq2seq --


def _check_src(src: Array, src_mask: Array | None, max_len: int) -> tuple[Array, Array]:
  src = _check_prompt(src)
  if src_mask is None:
    src_mask = jnp.ones(src.shape, bool)
  elif src_mask.shape != src.shape:
    raise ValueError(f'src_mask has shape {src_mask.shape}; expected {src.shape}')
  if max_len < 1:
    raise ValueError(f'max_len must be >= 1; got {max_len}')
  return src, jnp.asarray(src_mask, bool)


def _decoder_step(model, params, encoded, src_mask, tokens, cache):
  """Logits ``[B, V]`` for one new target token per row, and the new cache."""
  logits, mutated = model.apply(
      {'params': params, 'cache': cache}, encoded, tokens[:, None], src_mask,
      decode=True, method='decode', mutable=['cache'],
  )
  return logits[:, -1].astype(jnp.float32), mutated['cache']


def greedy_decode(
    model: nn.Module,
    params: Params,
    src: Array,
    max_len: int,
    bos_id: int,
    eos_id: int,
    src_mask: Array | None = None,
    pad_id: int = 0,
) -> Array:
  """Greedy decoding of an ``EncoderDecoder``: ``src [B, S] -> [B, max_len]``.

  The output starts after ``bos_id`` and includes ``eos_id``; positions after
  a row's EOS hold ``pad_id``. Stops early once every row has ended.
  """
  src, src_mask = _check_src(src, src_mask, max_len)
  ids = jnp.asarray([bos_id, eos_id, pad_id], jnp.int32)
  return _greedy(model, params, src, src_mask, ids, max_len=max_len)


@functools.partial(jax.jit, static_argnames=('model', 'max_len'))
def _greedy(model, params, src, src_mask, ids, *, max_len):
  bos_id, eos_id, pad_id = ids
  batch = src.shape[0]
  encoded = model.apply({'params': params}, src, src_mask, method='encode')
  cache = init_cache(model, encoded, jax.ShapeDtypeStruct((batch, max_len), jnp.int32),
                     src_mask, method='decode')

  def cond(state):
    i, _, _, done, _ = state
    return (i < max_len) & ~jnp.all(done)

  def body(state):
    i, out, last, done, cache = state
    logits, cache = _decoder_step(model, params, encoded, src_mask, last, cache)
    token = jnp.where(done, pad_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
    out = lax.dynamic_update_slice(out, token[:, None], (0, i))
    return i + 1, out, token, done | (token == eos_id), cache

  state = (
      jnp.int32(0), jnp.full((batch, max_len), pad_id, jnp.int32),
      jnp.full((batch,), bos_id, jnp.int32), jnp.zeros((batch,), bool), cache,
  )
  return lax.while_loop(cond, body, state)[1]


def gnmt_length_penalty(length: Array, alpha: float | Array) -> Array:
  """GNMT length penalty (Wu et al. 2016): ``((5 + length) / 6) ** alpha``."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(
    model: nn.Module,
    params: Params,
    src: Array,
    max_len: int,
    bos_id: int,
    eos_id: int,
    beam_size: int,
    length_penalty: float = 0.6,
    src_mask: Array | None = None,
    pad_id: int = 0,
) -> tuple[Array, Array]:
  """Beam search over an ``EncoderDecoder``; returns ``(tokens, scores)``.

  ``tokens`` is ``[B, beam_size, max_len]`` (same layout as
  ``greedy_decode``: after BOS, EOS included, then ``pad_id``) sorted best
  first, ``scores`` ``[B, beam_size]`` is ``log p(y | x) / lp(|y|)`` with the
  GNMT penalty ``lp`` of exponent ``length_penalty`` (``|y|`` counts EOS).

  Each step every live beam proposes all ``V`` next tokens and a finished
  beam proposes only itself (score unchanged); the ``beam_size`` candidates
  with the best length-normalised scores survive. Finished hypotheses thus
  keep their slot while they rank in the top ``beam_size``, so with
  ``beam_size=1`` this is exactly greedy decoding, for any
  ``length_penalty``. Stops when every beam of every row has finished.
  """
  src, src_mask = _check_src(src, src_mask, max_len)
  if beam_size < 1:
    raise ValueError(f'beam_size must be >= 1; got {beam_size}')
  vocab = getattr(model, 'vocab_size', None)
  if vocab is not None and beam_size > vocab:
    raise ValueError(f'beam_size {beam_size} is larger than the vocabulary ({vocab})')
  ids = jnp.asarray([bos_id, eos_id, pad_id], jnp.int32)
  return _beam(model, params, src, src_mask, ids, jnp.float32(length_penalty),
               max_len=max_len, beam_size=beam_size)


@functools.partial(jax.jit, static_argnames=('model', 'max_len', 'beam_size'))
def _beam(model, params, src, src_mask, ids, alpha, *, max_len, beam_size):
  bos_id, eos_id, pad_id = ids
  batch, k = src.shape[0], beam_size
  flat = batch * k
  encoded = model.apply({'params': params}, src, src_mask, method='encode')
  encoded = jnp.repeat(encoded, k, axis=0)  # Row b*k + j is beam j of example b.
  src_mask = jnp.repeat(src_mask, k, axis=0)
  cache = init_cache(model, encoded, jax.ShapeDtypeStruct((flat, max_len), jnp.int32),
                     src_mask, method='decode')

  def reorder(x, rows):
    return x[rows] if x.ndim and x.shape[0] == flat else x

  def cond(state):
    i, finished = state[0], state[3]
    return (i < max_len) & ~jnp.all(finished)

  def body(state):
    i, seqs, logp, finished, lengths, last, cache = state
    logits, cache = _decoder_step(model, params, encoded, src_mask, last.reshape(flat), cache)
    step_logp = jax.nn.log_softmax(logits).reshape(batch, k, -1)
    vocab = step_logp.shape[-1]
    alive_cand = logp[..., None] + step_logp
    # A finished beam's only candidate is itself, parked on the pad token.
    done_cand = jnp.where(jnp.arange(vocab) == pad_id, logp[..., None], -jnp.inf)
    cand = jnp.where(finished[..., None], done_cand, alive_cand)
    cand_len = jnp.where(finished, lengths, i + 1)
    rank = cand / gnmt_length_penalty(cand_len, alpha)[..., None]
    _, idx = lax.top_k(rank.reshape(batch, k * vocab), k)
    beam, token = idx // vocab, (idx % vocab).astype(jnp.int32)
    logp = jnp.take_along_axis(cand.reshape(batch, k * vocab), idx, axis=1)

    def gather(x):  # Per-beam state of the chosen parents.
      return jnp.take_along_axis(x, beam, axis=1)

    was_finished = gather(finished)
    lengths = jnp.where(was_finished, gather(lengths), i + 1)
    token = jnp.where(was_finished, pad_id, token)
    seqs = jnp.take_along_axis(seqs, beam[..., None], axis=1)
    seqs = lax.dynamic_update_slice(seqs, token[..., None], (0, 0, i))
    rows = (jnp.arange(batch)[:, None] * k + beam).reshape(flat)
    cache = jax.tree.map(lambda x: reorder(x, rows), cache)
    return i + 1, seqs, logp, was_finished | (token == eos_id), lengths, token, cache

  # Only beam 0 is live at the start, so the first step does not pick k copies.
  logp = jnp.full((batch, k), -jnp.inf).at[:, 0].set(0.0)
  state = (
      jnp.int32(0), jnp.full((batch, k, max_len), pad_id, jnp.int32), logp,
      jnp.zeros((batch, k), bool), jnp.zeros((batch, k), jnp.int32),
      jnp.full((batch, k), bos_id, jnp.int32), cache,
  )
  _, seqs, logp, _, lengths, _, _ = lax.while_loop(cond, body, state)
  scores = logp / gnmt_length_penalty(lengths, alpha)
  order = jnp.argsort(-scores, axis=1)
  return (
      jnp.take_along_axis(seqs, order[..., None], axis=1),
      jnp.take_along_axis(scores, order, axis=1),
  )
