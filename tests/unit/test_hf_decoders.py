"""``--init_from=hf:DIR`` for Hugging Face Llama and GPT-2 directories.

Always: a directory written here in HF's names and layouts (random NumPy
tensors) loads into ``llama``/``transformer_lm`` and gives the logits of a
NumPy forward pass written from HF's modeling code (``x @ W.T``,
``rotate_half``, ``repeat_kv``, ``Conv1D``). With ``HF_PYTHON`` set to a
Python that has ``torch`` and ``transformers`` (kept out of this project's
dependencies, e.g. ``python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip
install torch transformers``), the checkpoints are made by ``transformers``
itself and our logits and KV-cache greedy decode must equal its own.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _weights_files as files  # tests/: the safetensors writer
from dlresearch import init as init_lib
from dlresearch.config import Config, ConfigError
from dlresearch.models import decoding, registry
from dlresearch.weights.errors import WeightsError

LLAMA = {'model_type': 'llama', 'vocab_size': 37, 'hidden_size': 32,
         'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2,
         'intermediate_size': 48, 'rms_norm_eps': 1e-5, 'rope_theta': 5000.0,
         'tie_word_embeddings': False, 'max_position_embeddings': 64}
GPT2 = {'model_type': 'gpt2', 'vocab_size': 41, 'n_embd': 32, 'n_layer': 2,
        'n_head': 4, 'n_positions': 16, 'layer_norm_epsilon': 1e-5,
        'activation_function': 'gelu_new'}
LLAMA_KWARGS = dict(vocab_size=37, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    mlp_dim=48, layer_norm_epsilon=1e-5, rotary_base=5000.0)
GPT2_KWARGS = dict(vocab_size=41, num_layers=2, d_model=32, num_heads=4, max_len=16,
                   activation='gelu_tanh', layer_norm_epsilon=1e-5)


def _write(directory, config, state):
  directory.mkdir(exist_ok=True)
  (directory / 'config.json').write_text(json.dumps(config))
  (directory / 'model.safetensors').write_bytes(files.safetensors_bytes(state))
  return f'hf:{directory}'


def _load(spec, name, **kwargs):
  model = registry.build(name, **kwargs)
  source, variables = init_lib.foreign_model(Config(model=name, init_from=spec), model)
  return source, variables


def _rand(rng, *shape, scale=0.2):
  return (scale * rng.normal(size=shape)).astype(np.float32)


# ------------------------------------------------------------------ Llama --


def llama_state(seed=0):
  rng = np.random.default_rng(seed)
  d, h, kv, hd, f, v = 32, 4, 2, 8, 48, 37
  state = {'model.embed_tokens.weight': _rand(rng, v, d, scale=1.0),
           'model.norm.weight': 1 + _rand(rng, d), 'lm_head.weight': _rand(rng, v, d)}
  for i in range(2):
    p = f'model.layers.{i}.'
    state.update({
        p + 'self_attn.q_proj.weight': _rand(rng, h * hd, d),
        p + 'self_attn.k_proj.weight': _rand(rng, kv * hd, d),
        p + 'self_attn.v_proj.weight': _rand(rng, kv * hd, d),
        p + 'self_attn.o_proj.weight': _rand(rng, d, h * hd),
        p + 'mlp.gate_proj.weight': _rand(rng, f, d),
        p + 'mlp.up_proj.weight': _rand(rng, f, d),
        p + 'mlp.down_proj.weight': _rand(rng, d, f),
        p + 'input_layernorm.weight': 1 + _rand(rng, d),
        p + 'post_attention_layernorm.weight': 1 + _rand(rng, d)})
  return state


def np_hf_llama(state, tokens, cfg=LLAMA):
  """HF ``LlamaForCausalLM.forward`` in NumPy float64 (no cache)."""
  s = {k: np.float64(v) for k, v in state.items()}
  d, h = cfg['hidden_size'], cfg['num_attention_heads']
  kv, hd, eps = cfg['num_key_value_heads'], d // h, cfg['rms_norm_eps']
  T = tokens.shape[1]

  def rms(x, w):
    return w * (x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps))

  inv_freq = 1.0 / cfg['rope_theta'] ** (np.arange(0, hd, 2) / hd)
  freqs = np.arange(T)[:, None] * inv_freq[None]
  emb = np.concatenate([freqs, freqs], -1)
  cos, sin = np.cos(emb)[None, None], np.sin(emb)[None, None]

  def rotate_half(x):
    return np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)

  x = s['model.embed_tokens.weight'][tokens]
  causal = np.tril(np.ones((T, T), bool))
  for i in range(cfg['num_hidden_layers']):
    p = f'model.layers.{i}.'
    y = rms(x, s[p + 'input_layernorm.weight'])
    heads = lambda w, n: (y @ w.T).reshape(*y.shape[:2], n, hd).transpose(0, 2, 1, 3)  # noqa: E731
    q = heads(s[p + 'self_attn.q_proj.weight'], h)
    k = heads(s[p + 'self_attn.k_proj.weight'], kv)
    v = heads(s[p + 'self_attn.v_proj.weight'], kv)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)  # repeat_kv
    att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    att = np.where(causal, att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    out = (att @ v).transpose(0, 2, 1, 3).reshape(*x.shape[:2], d)
    x = x + out @ s[p + 'self_attn.o_proj.weight'].T
    y = rms(x, s[p + 'post_attention_layernorm.weight'])
    gate = y @ s[p + 'mlp.gate_proj.weight'].T
    x = x + ((gate / (1 + np.exp(-gate))) * (y @ s[p + 'mlp.up_proj.weight'].T)
             ) @ s[p + 'mlp.down_proj.weight'].T
  return rms(x, s['model.norm.weight']) @ s['lm_head.weight'].T


def test_hf_llama_directory_loads_and_matches_the_hf_forward(tmp_path):
  state = llama_state()
  spec = _write(tmp_path / 'llama', LLAMA, state)
  model, variables = _load(spec, 'llama', **LLAMA_KWARGS)
  tokens = np.random.default_rng(1).integers(0, 37, size=(2, 9))
  logits = model.apply(variables, jnp.asarray(tokens, jnp.int32))
  np.testing.assert_allclose(logits, np_hf_llama(state, tokens), rtol=1e-4, atol=1e-4)
  # Sizes must agree; a missing tensor is named.
  with pytest.raises(ConfigError, match='num_kv_heads=2 but the model has 4'):
    _load(spec, 'llama', **{**LLAMA_KWARGS, 'num_kv_heads': 4})
  del state['model.layers.1.mlp.up_proj.weight']
  broken = _write(tmp_path / 'broken', LLAMA, state)
  with pytest.raises(WeightsError, match=r"'model.layers.1.mlp.up_proj.weight'.*missing"):
    _load(broken, 'llama', **LLAMA_KWARGS)


# ------------------------------------------------------------------ GPT-2 --


def gpt2_state(seed=0):
  rng = np.random.default_rng(seed)
  d, v, n = 32, 41, 16
  state = {'transformer.wte.weight': _rand(rng, v, d, scale=1.0),
           'transformer.wpe.weight': _rand(rng, n, d),
           'transformer.ln_f.weight': 1 + _rand(rng, d), 'transformer.ln_f.bias': _rand(rng, d)}
  for i in range(2):
    p = f'transformer.h.{i}.'
    state.update({
        p + 'ln_1.weight': 1 + _rand(rng, d), p + 'ln_1.bias': _rand(rng, d),
        p + 'attn.c_attn.weight': _rand(rng, d, 3 * d), p + 'attn.c_attn.bias': _rand(rng, 3 * d),
        p + 'attn.c_proj.weight': _rand(rng, d, d), p + 'attn.c_proj.bias': _rand(rng, d),
        p + 'ln_2.weight': 1 + _rand(rng, d), p + 'ln_2.bias': _rand(rng, d),
        p + 'mlp.c_fc.weight': _rand(rng, d, 4 * d), p + 'mlp.c_fc.bias': _rand(rng, 4 * d),
        p + 'mlp.c_proj.weight': _rand(rng, 4 * d, d), p + 'mlp.c_proj.bias': _rand(rng, d)})
  return state


def np_hf_gpt2(state, tokens, cfg=GPT2):
  """HF ``GPT2LMHeadModel.forward`` in NumPy float64 (Conv1D: ``x @ W + b``)."""
  s = {k: np.float64(v) for k, v in state.items()}
  d, h, eps = cfg['n_embd'], cfg['n_head'], cfg['layer_norm_epsilon']
  hd, T = d // h, tokens.shape[1]

  def ln(x, p):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * s[
        p + '.weight'] + s[p + '.bias']

  def gelu_new(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

  x = s['transformer.wte.weight'][tokens] + s['transformer.wpe.weight'][:T]
  causal = np.tril(np.ones((T, T), bool))
  for i in range(cfg['n_layer']):
    p = f'transformer.h.{i}.'
    qkv = ln(x, p + 'ln_1') @ s[p + 'attn.c_attn.weight'] + s[p + 'attn.c_attn.bias']
    q, k, v = (a.reshape(*x.shape[:2], h, hd).transpose(0, 2, 1, 3)
               for a in np.split(qkv, 3, -1))
    att = np.where(causal, q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd), -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    out = (att @ v).transpose(0, 2, 1, 3).reshape(*x.shape[:2], d)
    x = x + out @ s[p + 'attn.c_proj.weight'] + s[p + 'attn.c_proj.bias']
    y = gelu_new(ln(x, p + 'ln_2') @ s[p + 'mlp.c_fc.weight'] + s[p + 'mlp.c_fc.bias'])
    x = x + y @ s[p + 'mlp.c_proj.weight'] + s[p + 'mlp.c_proj.bias']
  return ln(x, 'transformer.ln_f') @ s['transformer.wte.weight'].T


def test_hf_gpt2_directory_loads_and_matches_the_hf_forward(tmp_path):
  state = gpt2_state()
  spec = _write(tmp_path / 'gpt2', GPT2, state)
  model, variables = _load(spec, 'transformer_lm', **GPT2_KWARGS)
  tokens = np.random.default_rng(2).integers(0, 41, size=(2, 11))
  logits = model.apply(variables, jnp.asarray(tokens, jnp.int32))
  np.testing.assert_allclose(logits, np_hf_gpt2(state, tokens), rtol=1e-4, atol=1e-4)
  with pytest.raises(ConfigError, match='max_len=16 but the model has 32'):
    _load(spec, 'transformer_lm', **{**GPT2_KWARGS, 'max_len': 32})


# ---------------------------------------- parity with transformers itself --

_HF_SCRIPT = r'''
import json, sys, numpy as np, torch, transformers
kind, directory, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
torch.manual_seed(0)
cls = {'llama': (transformers.LlamaConfig, transformers.LlamaForCausalLM),
       'gpt2': (transformers.GPT2Config, transformers.GPT2LMHeadModel)}[kind]
cfg = {k: v for k, v in config.items() if k != 'model_type'}
model = cls[1](cls[0](**cfg)).float().eval()
with torch.no_grad():  # random init is small; widen it so the test has teeth
  for p in model.parameters():
    p.add_(0.05 * torch.randn_like(p))
model.save_pretrained(directory, safe_serialization=True)
tokens = torch.tensor(np.random.default_rng(3).integers(0, cfg['vocab_size'], (2, 7)))
with torch.no_grad():
  logits = model(tokens).logits.numpy()
  out = model.generate(tokens[:, :4], max_new_tokens=5, do_sample=False, use_cache=True,
                       pad_token_id=0).numpy()
np.savez(directory + '/expected.npz', tokens=tokens.numpy(), logits=logits, generated=out)
'''


@pytest.mark.skipif(not os.path.isfile(os.environ.get('HF_PYTHON', '')),
                    reason='HF_PYTHON (a Python with torch and transformers) not set')
@pytest.mark.parametrize('kind', ['llama', 'gpt2'])
def test_logits_and_cached_decode_equal_transformers(tmp_path, kind):
  config, name, kwargs = {'llama': (LLAMA, 'llama', LLAMA_KWARGS),
                          'gpt2': (GPT2, 'transformer_lm', GPT2_KWARGS)}[kind]
  directory = tmp_path / kind
  subprocess.run([os.environ['HF_PYTHON'], '-c', _HF_SCRIPT, kind, str(directory),
                  json.dumps(config)], check=True, stdout=sys.stderr)
  expected = np.load(directory / 'expected.npz')
  model, variables = _load(f'hf:{directory}', name, **kwargs)
  tokens = jnp.asarray(expected['tokens'], jnp.int32)
  logits = np.asarray(model.apply(variables, tokens))
  scale = np.abs(expected['logits']).max()
  np.testing.assert_allclose(logits, expected['logits'], rtol=1e-4, atol=1e-4 * scale)
  generated = decoding.generate(model, variables['params'], tokens[:, :4], 5,
                                jax.random.key(0), greedy=True)
  np.testing.assert_array_equal(np.asarray(generated), expected['generated'])


def test_restore_of_an_hf_directory_predicts_logits(tmp_path):
  import dlresearch  # pylint: disable=g-import-not-at-top
  state = llama_state(seed=4)
  _write(tmp_path / 'llama', LLAMA, state)
  run = dlresearch.restore(f'hf:{tmp_path / "llama"}')
  assert run.config.model == 'llama' and run.model.num_kv_heads == 2
  assert run.tokenizer is None  # no tokenizer.json written
  tokens = np.random.default_rng(5).integers(0, 37, size=(1, 6))
  logits = run.predict(jnp.asarray(tokens, jnp.int32))
  assert logits.shape == (1, 6, 37)
  np.testing.assert_allclose(logits, np_hf_llama(state, tokens), rtol=1e-4, atol=1e-4)
  with pytest.raises(WeightsError, match='no config.json'):
    dlresearch.restore(f'hf:{tmp_path}')
