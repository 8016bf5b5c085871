"""Tests for attention.py (the explicit CPU path included), transformer.py and
the Transformer paths of decoding.py.

Numerics are checked against hand-written NumPy (float64); full-size models
only through ``jax.eval_shape``. Tiny models get random parameters with the
structure of ``init`` (via ``eval_shape``) so few programs are compiled.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch.models import attention
from dlresearch.models import decoding
from dlresearch.models import registry
from dlresearch.models import transformer

MY_MODELS = [
    'transformer_classifier', 'transformer_lm', 'gpt2_small', 'transformer_seq2seq',
    'transformer_base', 'bert_base', 'vit_s16', 'vit_tiny',
]


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _rand(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _abstract(model, *args, **kwargs):
  return jax.eval_shape(model.init, jax.random.key(0), *args, **kwargs)


def _params(model, *args, seed=0, scale=0.3, method=None, **kwargs) -> dict:
  """Random N(0, scale) params with the structure of ``model.init`` (no compile)."""
  shapes = jax.eval_shape(
      lambda k, *a: model.init(k, *a, method=method, **kwargs), jax.random.key(0), *args
  )['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes)


def _tokens(shape, vocab, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, size=shape), jnp.int32)


# ------------------------------------------------------------ NumPy references --


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_attention(p, xq, xkv, mask):
  """softmax(QK^T/sqrt(d)) V with the params of MultiHeadAttention; mask [B,1|N,T,S]."""
  p = _f64(p)

  def proj(x, name):
    return np.einsum('btd,dnh->btnh', x, p[name]['kernel']) + p[name]['bias']

  q, k, v = proj(xq, 'query'), proj(xkv, 'key'), proj(xkv, 'value')
  logits = np.einsum('btnh,bsnh->bnts', q, k) / math.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(mask, logits, -1e30)
  w = np_softmax(logits)
  out = np.einsum('bnts,bsnh->btnh', w, v)
  return np.einsum('btnh,nhd->btd', out, p['out']['kernel']) + p['out']['bias'], w


def np_layer_norm(p, x, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def np_block(p, x, norm_first, mask, eps=1e-6):
  """One encoder TransformerBlock with the exact-erf GELU MLP."""
  p = _f64(p)
  erf = np.vectorize(math.erf)

  def mlp(y):
    h = y @ p['mlp']['fc1']['kernel'] + p['mlp']['fc1']['bias']
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    return h @ p['mlp']['fc2']['kernel'] + p['mlp']['fc2']['bias']

  attn = lambda y: np_attention(p['attn'], y, y, mask)[0]  # noqa: E731
  for branch, norm in ((attn, 'ln_attn'), (mlp, 'ln_mlp')):
    if norm_first:
      x = x + branch(np_layer_norm(p[norm], x, eps))
    else:
      x = np_layer_norm(p[norm], x + branch(x), eps)
  return x


# -------------------------------------------------------------- attention --


@pytest.mark.parametrize('causal,padded', [(False, False), (True, True)])
def test_attention_matches_numpy(causal, padded):
  mha = attention.MultiHeadAttention(num_heads=2)
  x = _rand((2, 5, 8))
  params = _params(mha, x, scale=0.5)
  lengths = np.array([5, 3]) if padded else np.array([5, 5])
  kv_mask = np.arange(5)[None, :] < lengths[:, None]
  mask = attention.padding_mask(kv_mask) if padded else None
  apply = jax.jit(mha.apply, static_argnames=('causal', 'return_weights'))
  fused = apply({'params': params}, x, mask=mask, causal=causal)
  out, weights = apply({'params': params}, x, mask=mask, causal=causal, return_weights=True)
  full_mask = np.broadcast_to(kv_mask[:, None, None, :], (2, 1, 5, 5))
  if causal:
    full_mask = full_mask & np.tril(np.ones((5, 5), bool))
  ref, ref_w = np_attention(params, x, x, full_mask)
  np.testing.assert_allclose(fused, ref, atol=1e-5)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  np.testing.assert_allclose(weights, ref_w, atol=1e-5)
  assert weights.shape == (2, 2, 5, 5)
  np.testing.assert_array_equal(np.asarray(weights)[~np.broadcast_to(full_mask, (2, 2, 5, 5))], 0.0)


def test_cross_attention_matches_numpy():
  mha = attention.MultiHeadAttention(num_heads=2, qkv_features=8, out_features=6)
  xq, xkv = _rand((2, 3, 6), seed=1), _rand((2, 4, 5), seed=2)
  params = _params(mha, xq, xkv, scale=0.5)
  kv_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
  out, w = jax.jit(mha.apply, static_argnames='return_weights')(
      {'params': params}, xq, xkv, mask=attention.padding_mask(kv_mask), return_weights=True
  )
  ref, ref_w = np_attention(params, xq, xkv, kv_mask[:, None, None, :])
  np.testing.assert_allclose(out, ref, atol=1e-5)
  np.testing.assert_allclose(w, ref_w, atol=1e-5)


def test_rotary_depends_on_relative_position_only():
  q, k = _rand((1, 1, 2, 8), seed=1), _rand((1, 1, 2, 8), seed=2)
  def score(m, n):
    rq = attention.rotary_embedding(q, jnp.array([m]))
    rk = attention.rotary_embedding(k, jnp.array([n]))
    return np.asarray(jnp.sum(rq * rk, -1))
  np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-4)
  assert not np.allclose(score(7, 3), score(3, 7))
  np.testing.assert_allclose(attention.rotary_embedding(q, jnp.array([0])), q)
  rotated = attention.rotary_embedding(q, jnp.array([5]))
  np.testing.assert_allclose(
      np.linalg.norm(rotated, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-5
  )
  # Channel i pairs with channel i + 4 and turns by 5 * 10000**(-2i/8).
  angle = 5 * 10000.0 ** (-2 * 1 / 8)
  want = q[..., 1] * math.cos(angle) - q[..., 5] * math.sin(angle)
  np.testing.assert_allclose(rotated[..., 1], want, rtol=1e-5)


def test_sinusoidal_positions_match_the_paper():
  table = np.asarray(transformer.sinusoidal_positions(jnp.arange(6), 8))
  pos, i = np.arange(6)[:, None], np.arange(4)[None, :]
  np.testing.assert_allclose(table[:, 0::2], np.sin(pos / 10000 ** (2 * i / 8)), atol=1e-6)
  np.testing.assert_allclose(table[:, 1::2], np.cos(pos / 10000 ** (2 * i / 8)), atol=1e-6)


@pytest.mark.parametrize('norm_first', [True, False])
def test_block_matches_numpy(norm_first):
  block = transformer.TransformerBlock(num_heads=2, mlp_dim=12, norm_first=norm_first)
  x = _rand((2, 4, 8))
  kv_mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
  params = _params(block, x, scale=0.5)
  out, _ = jax.jit(block.apply)({'params': params}, x, attention.padding_mask(kv_mask))
  ref = np_block(params, x, norm_first, kv_mask[:, None, None, :])
  np.testing.assert_allclose(out, ref, atol=1e-5)


# -------------------------------------------------------------- decoder LM --


def _tiny_lm(positions='learned', num_layers=2):
  return registry.build('transformer_lm', vocab_size=19, num_layers=num_layers, d_model=16,
                        num_heads=2, max_len=16, positions=positions)


def test_lm_is_causal_and_drops_out_in_training():
  # Eval-mode causality is also implied by the KV-cache test below.
  lm = registry.build('transformer_lm', vocab_size=19, num_layers=1, d_model=16, num_heads=2,
                      positions='sinusoidal', dropout_rate=0.2, attention_dropout_rate=0.2)
  tokens = _tokens((2, 8), 19)
  params = {'params': _params(lm, tokens)}
  apply = jax.jit(lambda t, key: lm.apply(params, t, train=True, rngs={'dropout': key}))
  logits = apply(tokens, jax.random.key(0))
  assert logits.shape == (2, 8, 19)
  changed = apply(tokens.at[:, 5].set((tokens[:, 5] + 1) % 19), jax.random.key(0))
  np.testing.assert_allclose(changed[:, :5], logits[:, :5], atol=1e-6)
  assert not np.allclose(changed[:, 5:], logits[:, 5:], atol=1e-3)
  assert not np.allclose(apply(tokens, jax.random.key(1)), logits, atol=1e-3)


@pytest.mark.parametrize('positions,num_layers', [('learned', 2), ('rotary', 1)])
def test_kv_cache_matches_full_recomputation(positions, num_layers):
  lm = _tiny_lm(positions, num_layers)
  tokens = _tokens((2, 9), 19, seed=1)
  params = _params(lm, tokens)
  full = jax.jit(lm.apply)({'params': params}, tokens)
  cache = decoding.init_cache(lm, jax.ShapeDtypeStruct((2, 9), jnp.int32))
  step = jax.jit(lambda c, t: lm.apply({'params': params, 'cache': c}, t, decode=True,
                                       mutable=['cache']))
  logits, mutated = step(cache, tokens[:, :4])  # Prefill, then one token at a time.
  pieces = [logits]
  for t in range(4, 9):
    logits, mutated = step(mutated['cache'], tokens[:, t:t + 1])
    pieces.append(logits)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)
  assert int(mutated['cache']['decode_positions']['position_index']) == 9


def test_generate_greedy_topk_and_sampling():
  lm = _tiny_lm()
  prompt = _tokens((2, 3), 19, seed=2)
  params = _params(lm, prompt)
  greedy = decoding.generate(lm, params, prompt, 6, jax.random.key(0), greedy=True)
  assert greedy.shape == (2, 9) and greedy.dtype == jnp.int32
  np.testing.assert_array_equal(greedy[:, :3], prompt)
  again = decoding.generate(lm, params, prompt, 6, jax.random.key(5), greedy=True)
  np.testing.assert_array_equal(again, greedy)
  # The uncached model, step by step: causal, so its logits at t on the final
  # sequence are those it had when token t + 1 was chosen.
  logits = jax.jit(lm.apply)({'params': params}, greedy[:, :-1])
  np.testing.assert_array_equal(greedy[:, 3:], np.argmax(logits[:, 2:], axis=-1))
  top1 = decoding.generate(lm, params, prompt, 6, jax.random.key(1), top_k=1)
  np.testing.assert_array_equal(top1, greedy)
  hot = decoding.generate(lm, params, prompt, 6, jax.random.key(1), temperature=5.0, top_k=10)
  np.testing.assert_array_equal(
      hot, decoding.generate(lm, params, prompt, 6, jax.random.key(1), temperature=5.0, top_k=10)
  )
  assert not np.array_equal(hot, greedy)
  with pytest.raises(ValueError, match='max_len'):
    decoding.generate(lm, params, prompt, 14, jax.random.key(1))


def test_sample_logits_top_k_keeps_only_the_k_largest():
  logits = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]]))
  keys = jax.random.split(jax.random.key(0), 400)
  draws = jax.jit(jax.vmap(lambda k: decoding.sample_logits(logits, k, top_k=2)))(keys)
  assert set(np.unique(draws)) == {1, 3}


# --------------------------------------------------------- encoder-decoder --


@pytest.fixture(scope='module')
def seq2seq():
  model = registry.build('transformer_seq2seq', vocab_size=11, num_layers=1, d_model=16,
                         num_heads=2, mlp_dim=32, dropout_rate=0.1)
  src = _tokens((3, 6), 11, seed=3)
  params = _params(model, src, src[:, :4], scale=0.5)
  return model, params, src


@functools.cache
def _jit_apply(model):
  return jax.jit(model.apply)


def _teacher_forced_logp(model, params, src, seqs, bos_id, src_mask=None):
  """log p(seqs | src) per position [B, L] with the full (uncached) decoder."""
  tgt_in = jnp.concatenate([jnp.full((seqs.shape[0], 1), bos_id, jnp.int32), seqs[:, :-1]], 1)
  logits = _jit_apply(model)({'params': params}, src, tgt_in, src_mask=src_mask)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return np.take_along_axis(np.asarray(logp), np.asarray(seqs)[..., None], -1)[..., 0], logits


def test_seq2seq_methods_cache_and_source_padding(seq2seq):
  model, params, src = seq2seq
  tgt = _tokens((3, 5), 11, seed=4)
  apply = jax.jit(model.apply, static_argnames=('train', 'method', 'decode', 'mutable'))
  full = apply({'params': params}, src, tgt)
  assert full.shape == (3, 5, 11)
  encoded = apply({'params': params}, src, method='encode')
  cache = decoding.init_cache(model, encoded, jax.ShapeDtypeStruct((3, 5), jnp.int32),
                              method='decode')
  pieces = []
  for t in range(5):
    logits, mutated = apply({'params': params, 'cache': cache}, encoded, tgt[:, t:t + 1],
                            method='decode', decode=True, mutable=('cache',))
    cache = mutated['cache']
    pieces.append(logits)
  np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-5)
  # Padding the source (with a mask) changes nothing.
  padded = jnp.concatenate([src, jnp.full((3, 2), 7, jnp.int32)], axis=1)
  mask = jnp.broadcast_to(jnp.arange(8)[None, :] < 6, (3, 8))
  np.testing.assert_allclose(apply({'params': params}, padded, tgt, src_mask=mask), full, atol=1e-5)


def test_greedy_decode_and_beam_search(seq2seq):
  model, params, src = seq2seq
  bos, max_len = 1, 7
  free = decoding.greedy_decode(model, params, src, max_len, bos, eos_id=-1)  # Never ends.
  src3 = jnp.repeat(src, 3, axis=0)  # One teacher-forcing shape for the whole test.
  _, logits = _teacher_forced_logp(model, params, src3, jnp.repeat(free, 3, axis=0), bos)
  np.testing.assert_array_equal(jnp.repeat(free, 3, axis=0), np.argmax(logits, -1))
  eos = int(free[0, 2])
  greedy = np.asarray(decoding.greedy_decode(model, params, src, max_len, bos, eos, pad_id=0))
  for row, path in zip(greedy, np.asarray(free)):
    hits = np.flatnonzero(path == eos)
    end = hits[0] + 1 if hits.size else max_len
    np.testing.assert_array_equal(row[:end], path[:end])
    np.testing.assert_array_equal(row[end:], 0)
  assert (greedy[0] == eos).any()
  for alpha in (0.6, 0.0):
    beam1, _ = decoding.beam_search(model, params, src, max_len, bos, eos, beam_size=1,
                                    length_penalty=alpha)
    np.testing.assert_array_equal(beam1[:, 0], greedy)
  beams, scores = decoding.beam_search(model, params, src, max_len, bos, eos, beam_size=3)
  assert beams.shape == (3, 3, max_len) and scores.shape == (3, 3)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)  # Best first.
  # Each score is the teacher-forced log-probability over the penalised length.
  flat = beams.reshape(9, max_len)
  logp, _ = _teacher_forced_logp(model, params, src3, flat, bos)
  for b in range(9):
    hits = np.flatnonzero(np.asarray(flat[b]) == eos)
    n = hits[0] + 1 if hits.size else max_len
    np.testing.assert_array_equal(flat[b, n:], 0)
    want = logp[b, :n].sum() / ((5 + n) / 6) ** 0.6
    np.testing.assert_allclose(scores.reshape(-1)[b], want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ classifiers --


@pytest.mark.parametrize('pooling,positions', [('mean', 'learned'), ('cls', 'rotary')])
def test_classifier_padding_equals_unpadded(pooling, positions):
  model = registry.build('transformer_classifier', num_classes=3, vocab_size=13,
                         num_layers=2, d_model=16, num_heads=2, pooling=pooling,
                         positions=positions)
  tokens = _tokens((2, 6), 13, seed=5)
  mask = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
  params = {'params': _params(model, tokens)}
  apply = jax.jit(model.apply, static_argnames=('return_features', 'return_attention'))
  logits, feats = apply(params, tokens, mask=mask, return_features=True, return_attention=True)
  np.testing.assert_allclose(logits[1], apply(params, tokens[1:, :4])[0], atol=1e-5)
  weights = feats['attention_weights']
  extra = 1 if pooling == 'cls' else 0
  assert len(weights) == 2 and weights[0].shape == (2, 2, 6 + extra, 6 + extra)  # 2 layers.
  np.testing.assert_allclose(np.sum(weights[1], -1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(weights[0])[1, :, :, 4 + extra:], 0.0)
  assert feats['pre_logits'].shape == (2, 16)


def test_classifier_on_float_features():
  model = registry.build('transformer_classifier', num_classes=10, num_layers=1,
                         d_model=16, num_heads=2, max_len=40)
  x = _rand((3, 40, 1))  # MNIST-1D shaped signals.
  params = {'params': _params(model, x)}
  assert 'input_proj' in params['params'] and 'token_embed' not in params['params']
  logits = jax.jit(model.apply)(params, x)
  assert logits.shape == (3, 10) and np.all(np.isfinite(logits))
  assert jax.eval_shape(model.apply, params, x[..., 0]).shape == (3, 10)  # [B, T] floats.
  with pytest.raises(ValueError, match='vocab_size'):
    _abstract(model, jnp.ones((3, 40), jnp.int32))
  with pytest.raises(ValueError, match='learned positions'):
    _abstract(model, jnp.ones((1, 41, 1)))


def test_vit_tiny():
  model = registry.build('vit_tiny', num_classes=10)
  x = _rand((2, 28, 28, 1))
  params = {'params': _params(model, x)}
  apply = jax.jit(model.apply, static_argnames=('return_features', 'return_attention'))
  logits, feats = apply(params, x, return_features=True, return_attention=True)
  assert logits.shape == (2, 10) and feats['pre_logits'].shape == (2, 64)
  assert params['params']['pos_embedding'].shape == (1, 50, 64)
  assert [w.shape for w in feats['attention_weights']] == [(2, 4, 50, 50)] * 2
  np.testing.assert_allclose(np.sum(feats['attention_weights'][0], -1), 1.0, atol=1e-5)
  assert not np.allclose(logits[0], logits[1])
  cifar = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = _abstract(model, cifar)
  assert variables['params']['pos_embedding'].shape == (1, 65, 64)
  assert jax.eval_shape(model.apply, variables, cifar).shape == (2, 10)


def test_bert_tiny_padding_and_token_types():
  model = transformer.BERT(num_classes=2, vocab_size=20, hidden_size=16, num_layers=1,
                           num_heads=2, mlp_dim=32, max_len=8)
  tokens = _tokens((2, 6), 20, seed=6)
  mask = jnp.array([[True] * 6, [True] * 3 + [False] * 3])
  params = {'params': _params(model, tokens)}
  apply = jax.jit(model.apply, static_argnames='return_features')
  logits, feats = apply(params, tokens, mask=mask, return_features=True,
                        token_type_ids=jnp.zeros_like(tokens))
  assert logits.shape == (2, 2) and feats['sequence_output'].shape == (2, 6, 16)
  assert feats['pooled_output'].shape == (2, 16)
  alone, _ = apply(params, tokens[1:, :3], return_features=True,
                   token_type_ids=jnp.zeros((1, 3), jnp.int32))
  np.testing.assert_allclose(logits[1], alone[0], atol=1e-5)
  typed, _ = apply(params, tokens, mask=mask, return_features=True,
                   token_type_ids=jnp.ones_like(tokens))
  assert not np.allclose(typed, logits)


# ----------------------------------------------------------- param counts --


_TOKENS = jax.ShapeDtypeStruct((2, 5), jnp.int32)
_IMAGE = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
# name -> (factory kwargs, example inputs, expected output shape)
_BUILD_CASES = {
    'transformer_classifier': ({'num_classes': 4, 'vocab_size': 23}, (_TOKENS,), (2, 4)),
    'transformer_lm': ({'vocab_size': 23}, (_TOKENS,), (2, 5, 23)),
    'gpt2_small': ({}, (_TOKENS,), (2, 5, 50257)),
    'transformer_seq2seq': ({'vocab_size': 23}, (_TOKENS, _TOKENS), (2, 5, 23)),
    'transformer_base': ({}, (_TOKENS, _TOKENS), (2, 5, 37000)),
    'bert_base': ({}, (_TOKENS,), (2, 768)),  # BertModel: the pooled vector.
    'vit_s16': ({'num_classes': 1000}, (_IMAGE,), (2, 1000)),
    'vit_tiny': ({'num_classes': 7}, (jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),), (2, 7)),
}


@functools.cache
def _built(name: str):
  """(model, abstract variables, abstract output) for a ``_BUILD_CASES`` entry."""
  kwargs, inputs, _ = _BUILD_CASES[name]
  model = registry.build(name, **kwargs)
  variables = _abstract(model, *inputs)
  return model, variables, jax.eval_shape(model.apply, variables, *inputs)


@pytest.mark.parametrize('name', MY_MODELS)
def test_registered_models_build(name):
  assert name in registry.names()
  _, _, out = _built(name)
  assert out.shape == _BUILD_CASES[name][2]


def test_param_counts():
  gpt2 = _built('gpt2_small')[1]['params']
  assert _count(gpt2) == 124_439_808
  assert gpt2['pos_embed']['embedding'].shape == (1024, 768)
  assert 'lm_head' not in gpt2  # Tied to token_embed.
  assert _count(_built('bert_base')[1]['params']) == 109_482_240
  with_head = _abstract(registry.build('bert_base', num_classes=2), _TOKENS)['params']
  assert _count(with_head) == 109_482_240 + 768 * 2 + 2
  assert _count(_built('vit_s16')[1]['params']) == 22_050_664
  base = _built('transformer_base')[1]['params']
  assert _count(base) == 63_082_496
  assert base['embed']['embedding'].shape == (37000, 512)
  pre_ln = _abstract(registry.build('transformer_base', norm_first=True), _TOKENS, _TOKENS)
  assert _count(pre_ln['params']) == 63_082_496 + 2 * 2 * 512


@pytest.mark.parametrize('name', ['transformer_lm', 'transformer_seq2seq', 'vit_tiny'])
def test_bfloat16_computation_keeps_float32_params(name):
  kwargs, inputs, shape = _BUILD_CASES[name]
  model = registry.build(name, dtype=jnp.bfloat16, **kwargs)
  variables = _abstract(model, *inputs)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  out = jax.eval_shape(model.apply, variables, *inputs)
  assert out.shape == shape and out.dtype == jnp.bfloat16


def test_bad_configs_fail_clearly():
  with pytest.raises(ValueError, match='unknown positions'):
    registry.build('transformer_lm', vocab_size=5, positions='alibi')
  with pytest.raises(ValueError, match='divisible'):
    registry.build('transformer_classifier', num_classes=2, d_model=10, num_heads=4)
  with pytest.raises(ValueError, match='activation'):
    registry.build('transformer_seq2seq', vocab_size=5, activation='swish2')
  with pytest.raises(ValueError, match='patch size'):
    _abstract(registry.build('vit_tiny', num_classes=2), jnp.zeros((1, 30, 30, 1)))


@pytest.mark.parametrize('name,kwargs,make_inputs', [
    ('transformer_lm', dict(vocab_size=11, num_layers=2, d_model=16, num_heads=2),
     lambda: (np.arange(12).reshape(2, 6) % 11,)),
])
def test_remat_gives_the_same_values_and_gradients(name, kwargs, make_inputs):
  from dlresearch.models import registry
  inputs = make_inputs()
  plain = registry.build(name, **kwargs)
  remat = registry.build(name, remat=True, **kwargs)
  params = plain.init(jax.random.PRNGKey(0), *inputs)['params']

  def loss(model, p):
    return jnp.sum(model.apply({'params': p}, *inputs) ** 2)

  np.testing.assert_allclose(loss(remat, params), loss(plain, params), rtol=1e-6)
  g_plain = jax.grad(lambda p: loss(plain, p))(params)
  g_remat = jax.grad(lambda p: loss(remat, p))(params)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('causal,padded', [(True, False), (False, True)])
def test_explicit_attention_equals_dot_product_attention(monkeypatch, causal, padded):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 7, 16)), jnp.float32)
  mask = None
  if padded:  # the last sequence is all padding: uniform weights on both paths
    real = np.array([[1] * 7, [1] * 4 + [0] * 3, [0] * 7], bool)
    mask = attention.padding_mask(jnp.asarray(real))
  layer = attention.MultiHeadAttention(4)
  params = layer.init(jax.random.key(0), x, mask=mask, causal=causal)
  out_w = jnp.asarray(rng.normal(size=(3, 7, 16)), jnp.float32)

  def loss(params, x):
    return jnp.sum(layer.apply(params, x, mask=mask, causal=causal) * out_w)

  results = {}
  for explicit in (True, False):
    monkeypatch.setattr(attention, 'explicit_attention', lambda e=explicit: e)
    results[explicit] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
  for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  assert float(jnp.abs(results[True][1][1]).max()) > 0


def test_cpu_runs_the_explicit_attention_path():
  assert attention.explicit_attention() == (jax.default_backend() == 'cpu')
