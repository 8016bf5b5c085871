"""The Llama building blocks: RoPE, grouped-query attention, RMSNorm, SwiGLU,
the registered ``llama_*`` models and the attention implementations.

Numerics are checked against hand-written NumPy (float64); the 100M config
only through ``jax.eval_shape``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch.models import attention, decoding, registry, transformer

from _text_corpora import write_shakespeare


def _rand(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _tokens(shape, vocab, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, size=shape), jnp.int32)


def _params(model, *args, seed=0, scale=0.3, **kwargs) -> dict:
  """Random N(0, scale) params with the structure of ``model.init`` (no compile)."""
  shapes = jax.eval_shape(lambda k, *a: model.init(k, *a, **kwargs),
                          jax.random.key(0), *args)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes)


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ------------------------------------------------------------ NumPy references --


def np_rms_norm(x, scale, eps):
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * scale


def np_silu(x):
  return x / (1 + np.exp(-x))


def np_swiglu(p, x):
  return (np_silu(x @ p['gate']['kernel']) * (x @ p['up']['kernel'])) @ p['down']['kernel']


def np_rotary(x, positions, base):
  """Rotate-half RoPE on ``[B, T, heads, d]`` (Hugging Face Llama's layout)."""
  d = x.shape[-1]
  inv_freq = base ** (-np.arange(0, d, 2) / d)
  angles = positions[:, None] * inv_freq[None, :]  # [T, d/2]
  cos = np.concatenate([np.cos(angles)] * 2, -1)[None, :, None, :]
  sin = np.concatenate([np.sin(angles)] * 2, -1)[None, :, None, :]
  rotated = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
  return x * cos + rotated * sin


def np_gqa_attention(p, x, mask, base=None):
  """Bias-free grouped-query self-attention; ``mask [B, 1, T, S]`` or None."""
  q = np.einsum('btd,dnh->btnh', x, p['query']['kernel'])
  k = np.einsum('btd,dnh->btnh', x, p['key']['kernel'])
  v = np.einsum('btd,dnh->btnh', x, p['value']['kernel'])
  if base is not None:
    pos = np.arange(x.shape[1], dtype=np.float64)
    q, k = np_rotary(q, pos, base), np_rotary(k, pos, base)
  group = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  logits = np.einsum('btnh,bsnh->bnts', q, k) / math.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(mask, logits, -1e30)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum('bnts,bsnh->btnh', w, v)
  return np.einsum('btnh,nhd->btd', out, p['out']['kernel'])


# ------------------------------------------------------------------ pieces --


def test_rms_norm_and_swiglu_match_numpy():
  x = _rand((2, 5, 8)) * 3 + 1
  norm = transformer.make_norm('rms', 1e-5, jnp.float32, 'n')
  scale = _rand((8,), seed=1)
  out = norm.apply({'params': {'scale': scale}}, x)
  np.testing.assert_allclose(out, np_rms_norm(np.float64(x), np.float64(scale), 1e-5),
                             rtol=1e-5, atol=1e-5)
  mlp = transformer.GatedMlpBlock(mlp_dim=12)
  params = _params(mlp, x, scale=0.5)
  assert set(params) == {'gate', 'up', 'down'} and 'bias' not in params['gate']
  np.testing.assert_allclose(mlp.apply({'params': params}, x),
                             np_swiglu(_f64(params), np.float64(x)), rtol=1e-5, atol=1e-5)


def test_rotary_base_relative_position_and_numpy_layout():
  q, k = _rand((1, 1, 2, 8), seed=1), _rand((1, 1, 2, 8), seed=2)

  def score(m, n, base):
    rq = attention.rotary_embedding(q, jnp.array([m]), base)
    rk = attention.rotary_embedding(k, jnp.array([n]), base)
    return np.asarray(jnp.sum(rq * rk, -1))

  for base in (10000.0, 500000.0):
    np.testing.assert_allclose(score(9, 2, base), score(1009, 1002, base), rtol=2e-4)
  assert not np.allclose(score(9, 2, 10000.0), score(9, 2, 500000.0), rtol=1e-3)
  x = _rand((2, 6, 3, 8), seed=3)
  np.testing.assert_allclose(
      attention.rotary_embedding(x, jnp.arange(6), 500000.0),
      np_rotary(np.float64(x), np.arange(6.0), 500000.0), atol=1e-5)


def test_gqa_equals_mha_with_repeated_key_value_heads():
  x = _rand((2, 5, 16))
  gqa = attention.MultiHeadAttention(num_heads=4, num_kv_heads=2, use_bias=False)
  params = _params(gqa, x, scale=0.4)
  assert params['key']['kernel'].shape == (16, 2, 4)
  mha = attention.MultiHeadAttention(num_heads=4, use_bias=False)
  repeated = {**params, **{n: {'kernel': np.repeat(params[n]['kernel'], 2, axis=1)}
                           for n in ('key', 'value')}}
  # num_kv_heads == num_heads is plain multi-head attention, same parameters.
  same = attention.MultiHeadAttention(num_heads=4, num_kv_heads=4, use_bias=False)
  assert jax.tree.map(np.shape, _params(same, x)) == jax.tree.map(np.shape, repeated)
  kv_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  mask = attention.padding_mask(kv_mask)
  for causal in (False, True):
    out = gqa.apply({'params': params}, x, mask=mask, causal=causal)
    np.testing.assert_allclose(
        out, mha.apply({'params': repeated}, x, mask=mask, causal=causal), atol=1e-5)
    np.testing.assert_allclose(
        out, same.apply({'params': repeated}, x, mask=mask, causal=causal), atol=1e-5)
    ref_mask = kv_mask[:, None, None, :]
    if causal:
      ref_mask = ref_mask & np.tril(np.ones((5, 5), bool))[None, None]
    np.testing.assert_allclose(out, np_gqa_attention(_f64(params), np.float64(x), ref_mask),
                               atol=1e-5)
  with pytest.raises(ValueError, match='num_kv_heads=3 must divide num_heads=4'):
    attention.MultiHeadAttention(num_heads=4, num_kv_heads=3)


def test_llama_block_matches_numpy():
  block = transformer.TransformerBlock(
      num_heads=4, mlp_dim=24, causal=True, rotary=True, rotary_base=500.0,
      norm='rms', gated_mlp=True, activation='silu', num_kv_heads=2,
      use_bias=False, layer_norm_epsilon=1e-5)
  x = _rand((2, 6, 16))
  params = _params(block, x, scale=0.4)
  out, _ = jax.jit(block.apply)({'params': params}, x)
  p, y = _f64(params), np.float64(x)
  causal = np.tril(np.ones((6, 6), bool))[None, None]
  y = y + np_gqa_attention(p['attn'], np_rms_norm(y, p['ln_attn']['scale'], 1e-5),
                           causal, base=500.0)
  y = y + np_swiglu(p['mlp'], np_rms_norm(y, p['ln_mlp']['scale'], 1e-5))
  np.testing.assert_allclose(out, y, atol=2e-5)


# ------------------------------------------------------------------ models --


def test_llama_100m_parameter_count_and_names():
  model = registry.build('llama_100m')
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 8), jnp.int32))['params']
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == 100_092_672
  block = shapes['transformer']['block_0']
  assert block['attn']['query']['kernel'].shape == (768, 12, 64)
  assert block['attn']['key']['kernel'].shape == (768, 4, 64)
  assert set(block['mlp']) == {'gate', 'up', 'down'}
  assert set(block['ln_attn']) == {'scale'}  # RMSNorm, no bias
  assert 'pos_embed' not in shapes and 'lm_head' not in shapes  # rotary, tied
  untied = registry.build('llama_tiny', vocab_size=11)
  tiny = jax.eval_shape(untied.init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, 4), jnp.int32))['params']
  assert tiny['lm_head']['kernel'].shape == (64, 11)


def test_existing_models_keep_their_parameter_names():
  gpt = registry.build('transformer_lm', vocab_size=11, num_layers=1, d_model=16, num_heads=2)
  params = jax.eval_shape(gpt.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 4), jnp.int32))['params']
  block = params['transformer']['block_0']
  assert set(block) == {'attn', 'ln_attn', 'ln_mlp', 'mlp'}
  assert set(block['mlp']) == {'fc1', 'fc2'} and set(block['ln_attn']) == {'scale', 'bias'}
  assert set(block['attn']['key']) == {'kernel', 'bias'}
  assert block['attn']['key']['kernel'].shape == (16, 2, 8)


@pytest.mark.parametrize('implementation', ['explicit', 'xla'])
def test_llama_cache_decode_equals_full_forward(implementation):
  lm = registry.build('llama_tiny', vocab_size=23, rotary_base=1000.0,
                      attention_impl=implementation)
  tokens = _tokens((2, 9), 23, seed=1)
  params = _params(lm, tokens, scale=0.2)
  full = jax.jit(lm.apply)({'params': params}, tokens)
  cache = decoding.init_cache(lm, jax.ShapeDtypeStruct((2, 9), jnp.int32))
  block = cache['transformer']['block_0']['attn']
  # The cache holds num_kv_heads = 2 heads of head_dim 16.
  assert block['cached_key'].shape == block['cached_value'].shape == (2, 9, 2, 16)
  step = jax.jit(lambda c, t: lm.apply({'params': params, 'cache': c}, t, decode=True,
                                       mutable=['cache']))
  logits, mutated = step(cache, tokens[:, :3])  # Prefill, then one token at a time.
  pieces = [logits]
  for t in range(3, 9):
    logits, mutated = step(mutated['cache'], tokens[:, t:t + 1])
    pieces.append(logits)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)
  assert int(mutated['cache']['transformer']['block_1']['attn']['cache_index']) == 9
  # Greedy generation with the cache continues as the full forward's argmax.
  out = decoding.generate(lm, params, tokens[:, :4], 3, jax.random.key(0), greedy=True)
  for t in range(4, 7):
    want = jnp.argmax(lm.apply({'params': params}, out[:, :t])[:, -1], -1)
    np.testing.assert_array_equal(out[:, t], want)


# -------------------------------------------------------- implementations --


def test_attention_implementations_agree_on_cpu():
  q = jnp.asarray(_rand((2, 6, 4, 8), seed=1))
  k = jnp.asarray(_rand((2, 6, 2, 8), seed=2))
  v = jnp.asarray(_rand((2, 6, 2, 8), seed=3))
  pad = attention.padding_mask(np.array([[1] * 6, [1, 1, 1, 1, 0, 0]], bool))
  for mask, causal in ((None, True), (pad, False), (pad, True), (None, False)):
    explicit = attention.dot_product_attention(q, k, v, mask, 'explicit', is_causal=causal)
    xla = attention.dot_product_attention(q, k, v, mask, 'xla', is_causal=causal)
    np.testing.assert_allclose(explicit, xla, atol=1e-5)
    assert explicit.shape == (2, 6, 4, 8)
  # Through a model: padding + causal + GQA, every implementation CPU runs.
  lm = {impl: registry.build('llama_tiny', vocab_size=13, attention_impl=impl)
        for impl in ('auto', 'explicit', 'xla')}
  tokens = _tokens((2, 7), 13)
  params = _params(lm['auto'], tokens)
  out = {impl: m.apply({'params': params}, tokens) for impl, m in lm.items()}
  np.testing.assert_allclose(out['explicit'], out['xla'], atol=1e-5)
  np.testing.assert_allclose(out['auto'], out['explicit'], atol=1e-5)


def test_unavailable_implementation_is_one_clear_line():
  assert attention.check_implementation('xla', 'cpu') is None
  assert attention.check_implementation('cudnn', 'gpu') is None
  problem = attention.check_implementation('cudnn', 'cpu')
  assert 'cudnn' in problem and 'NVIDIA GPU' in problem and '\n' not in problem
  assert 'unknown attention implementation' in attention.check_implementation('flash')
  if jax.default_backend() == 'cpu':
    with pytest.raises(ValueError, match='needs an NVIDIA GPU'):
      attention.resolve_implementation('cudnn')
  with pytest.raises(ValueError, match='unknown attention implementation'):
    registry.build('llama_tiny', vocab_size=5, attention_impl='flash')


# ----------------------------------------------------------- a char-LM run --



def test_llama_tiny_trains_a_char_lm_through_the_lm_problem(tmp_path):
  # The in-process form of
  #   python -m experiments.transformer_lm --tiny --model=llama_tiny
  from dlresearch import config as config_lib, logging as log_lib, train  # pylint: disable=g-import-not-at-top
  from experiments import transformer_lm  # pylint: disable=g-import-not-at-top
  texts = tmp_path / 'shakespeare'
  texts.mkdir()
  write_shakespeare(texts, 600)
  preset = transformer_lm.PRESETS['shakespeare_char']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'model': 'llama_tiny',
      'model_kwargs': {'num_layers': 2, 'd_model': 64, 'num_heads': 4},
      'data_dir': str(tmp_path / 'tfds'), 'manual_dir': str(texts), 'sample': True,
      'model_summary': False, 'plots': False})
  result = train.run(cfg, str(tmp_path / 'run'))
  lines = log_lib.read_metrics(str(tmp_path / 'run'))
  losses = [l['loss'] for l in lines if l['split'] == 'train']
  assert len(losses) >= 2 and losses[-1] < losses[0], losses
  assert result['bits_per_char'] < math.log2(40)  # below the uniform over ~40 chars
  assert result['sample'].startswith(cfg.prompt)


def test_attention_impl_config_field_reaches_the_model():
  from dlresearch import assemble  # pylint: disable=g-import-not-at-top
  from dlresearch.config import Config, ConfigError  # pylint: disable=g-import-not-at-top
  cfg = Config(model='llama_tiny', attention_impl='xla')
  assert assemble.build_model(cfg, {'vocab_size': 7}).attention_impl == 'xla'
  assert assemble.build_model(cfg.replace(attention_impl='auto'),
                              {'vocab_size': 7}).attention_impl == 'auto'
  bert = assemble.build_model(cfg.replace(model='bert_base'), {'num_classes': 2})
  assert bert.attention_impl == 'xla'
  with pytest.raises(ConfigError, match='no attention layers'):
    assemble.build_model(cfg.replace(model='lenet5'), {'num_classes': 2})
  if jax.default_backend() == 'cpu':
    with pytest.raises(ConfigError, match="attention_impl.*'cudnn' needs an NVIDIA GPU"):
      assemble.build_model(cfg.replace(attention_impl='cudnn'), {'vocab_size': 7})
