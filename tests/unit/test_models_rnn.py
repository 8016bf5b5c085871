"""Tests for the recurrent family (rnn.py) and RNN sampling (decoding.sample_rnn);
the fast LSTM against the masked layer (values and gradients).

Cell equations are checked against hand-written NumPy steps (float64) with
the same weights; padding against running each sequence alone.
"""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from dlresearch.models import decoding
from dlresearch.models import registry
from dlresearch.models import rnn

CELLS = ['rnn', 'lstm', 'gru']
MY_MODELS = [
    'rnn_classifier', 'lstm_classifier', 'gru_classifier', 'rnn_lm', 'lstm_lm', 'gru_lm',
]


def _rand(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _params(model, *args, seed=0, **kwargs) -> dict:
  """Random N(0, 0.5) params with the structure of ``model.init``.

  Shapes come from ``jax.eval_shape`` (no compile), which keeps the tests
  fast; initialisers are checked separately.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args, **kwargs)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_recurrent(cell, params, x):
  """Hand-written recurrence over ``x [B, T, F]`` in float64: (outputs, carry)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  w_x, b, w_h = p['input']['kernel'], p['input']['bias'], p['recurrent_kernel']
  hidden = w_h.shape[0]
  h = np.zeros((x.shape[0], hidden))
  c = np.zeros_like(h)
  outs = []
  for t in range(x.shape[1]):
    xt = np.asarray(x[:, t], np.float64)
    if cell == 'rnn':
      h = np.tanh(xt @ w_x + b + h @ w_h)
    elif cell == 'lstm':
      gates = [slice(k * hidden, (k + 1) * hidden) for k in range(4)]
      pre = xt @ w_x + b + h @ w_h
      i, f, g, o = (pre[:, s] for s in gates)
      c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
      h = _sigmoid(o) * np.tanh(c)
    else:
      wxr, wxz, wxn = np.split(w_x, 3, axis=1)
      br, bz, bn = np.split(b, 3)
      whr, whz, whn = np.split(w_h, 3, axis=1)
      r = _sigmoid(xt @ wxr + br + h @ whr)
      z = _sigmoid(xt @ wxz + bz + h @ whz)
      n = np.tanh(xt @ wxn + bn + r * (h @ whn + p['recurrent_bias']))
      h = (1 - z) * n + z * h
    outs.append(h)
  carry = (c, h) if cell == 'lstm' else h
  return np.stack(outs, axis=1), carry


@pytest.mark.parametrize('cell', CELLS)
def test_cell_matches_numpy(cell):
  layer = rnn.RecurrentLayer(cell, hidden_size=4)
  x = _rand((2, 5, 3))
  mask = jnp.ones((2, 5), bool)
  params = _params(layer, x, mask)
  outputs, carry = jax.jit(layer.apply)({'params': params}, x, mask)
  ref_out, ref_carry = np_recurrent(cell, params, x)
  np.testing.assert_allclose(outputs, ref_out, atol=1e-5)
  for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry)):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_initialisers():
  x = jnp.ones((1, 2, 3))
  mask = jnp.ones((1, 2), bool)
  p = jax.jit(rnn.RecurrentLayer('lstm', 4).init)(jax.random.key(0), x, mask)['params']
  np.testing.assert_array_equal(p['input']['bias'], [0] * 4 + [1] * 4 + [0] * 8)
  w = np.asarray(p['recurrent_kernel'])
  for g in range(4):  # Each gate's recurrent block starts orthogonal.
    block = w[:, 4 * g:4 * (g + 1)]
    np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-5)


def test_reverse_padded():
  x = jnp.arange(2 * 4).reshape(2, 4)[..., None]
  out = rnn.reverse_padded(x, jnp.array([4, 2]))[..., 0]
  np.testing.assert_array_equal(out, [[3, 2, 1, 0], [5, 4, 6, 7]])


@pytest.mark.parametrize('cell,bidirectional', [('lstm', False), ('gru', True)])
def test_padding_equals_unpadded(cell, bidirectional):
  model = registry.build(
      f'{cell}_classifier', num_classes=3, hidden_size=6, num_layers=2,
      bidirectional=bidirectional,
  )
  lengths = [6, 4, 1]
  x = _rand((3, 6, 2), seed=3)
  mask = np.arange(6)[None, :] < np.array(lengths)[:, None]
  x_padded = np.where(mask[..., None], x, 9.0)  # Garbage in the padding.
  variables = {'params': _params(model, x_padded)}
  apply = jax.jit(model.apply, static_argnames='return_features')
  logits, feats = apply(variables, x_padded, mask=mask, return_features=True)
  outputs = np.asarray(feats['outputs'])
  assert outputs.shape == (3, 6, 12 if bidirectional else 6)
  np.testing.assert_array_equal(outputs[~mask], 0.0)
  # Each sequence alone, unpadded (a batch of one, with its own length).
  for b, n in enumerate(lengths):
    alone, alone_feats = apply(variables, x[b:b + 1, :n], return_features=True)
    np.testing.assert_allclose(logits[b], alone[0], atol=1e-5)
    np.testing.assert_allclose(feats['final_state'][b], alone_feats['final_state'][0], atol=1e-5)
    np.testing.assert_allclose(outputs[b, :n], alone_feats['outputs'][0], atol=1e-5)


def test_backward_direction_reads_the_reversed_sequence():
  # The backward layer on x equals a forward layer (same weights) on x reversed.
  x = _rand((1, 5, 2), seed=4)
  mask = jnp.ones((1, 5), bool)
  fwd = rnn.RecurrentLayer('gru', 3)
  params = {'params': _params(fwd, x, mask)}
  out_rev, _ = rnn.RecurrentLayer('gru', 3, reverse=True).apply(params, x, mask)
  out_fwd, _ = fwd.apply(params, x[:, ::-1], mask)
  np.testing.assert_allclose(out_rev, out_fwd[:, ::-1], atol=1e-6)


def test_bidirectional_rejects_left_padding():
  model = registry.build('gru_classifier', num_classes=2, hidden_size=4, bidirectional=True)
  x = jnp.ones((1, 4, 1))
  with pytest.raises(ValueError, match='right-padded'):
    model.apply({'params': _params(model, x)}, x, mask=jnp.array([[False, True, True, True]]))


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_lm_carried_state_matches_full_sequence(cell):
  model = registry.build(f'{cell}_lm', vocab_size=11, embed_dim=8, hidden_size=8,
                         num_layers=2, tie_embeddings=(cell == 'gru'))
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, 11)
  params = {'params': _params(model, tokens)}
  apply = jax.jit(model.apply, static_argnames='return_carry')
  full = apply(params, tokens)
  assert full.shape == (2, 7, 11)
  logits, carry = apply(params, tokens[:, :3], return_carry=True)
  pieces = [logits]
  for t in range(3, 7):
    logits, carry = apply(params, tokens[:, t:t + 1], carry=carry, return_carry=True)
    pieces.append(logits)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)


def test_sample_rnn_greedy_topk_and_sampling():
  model = registry.build('lstm_lm', vocab_size=13, embed_dim=8, hidden_size=16)
  prompt = jax.random.randint(jax.random.key(1), (2, 3), 0, 13)
  params = _params(model, prompt)
  greedy = decoding.sample_rnn(model, params, prompt, 5, jax.random.key(7), greedy=True)
  assert greedy.shape == (2, 8) and greedy.dtype == jnp.int32
  np.testing.assert_array_equal(greedy[:, :3], prompt)
  # Reference: the full model (no carried state) on the output; its logits at
  # step t see only tokens <= t, so their argmax must be token t + 1.
  logits = model.apply({'params': params}, greedy[:, :-1])
  np.testing.assert_array_equal(greedy[:, 3:], np.argmax(logits[:, 2:], axis=-1))
  top1 = decoding.sample_rnn(model, params, prompt, 5, jax.random.key(3), top_k=1)
  np.testing.assert_array_equal(top1, greedy)
  hot = [decoding.sample_rnn(model, params, prompt, 5, jax.random.key(3), temperature=5.0)
         for _ in range(2)]
  np.testing.assert_array_equal(hot[0], hot[1])
  assert np.all((np.asarray(hot[0]) >= 0) & (np.asarray(hot[0]) < 13))
  assert not np.array_equal(hot[0], greedy)  # 10 draws at T=5 from 13 tokens.
  with pytest.raises(ValueError, match='temperature'):
    decoding.sample_rnn(model, params, prompt, 5, jax.random.key(3), temperature=0.0)


def test_dropout_only_in_training():
  model = registry.build('lstm_classifier', num_classes=3, vocab_size=10, embed_dim=8,
                         hidden_size=8, num_layers=2, dropout_rate=0.5)
  tokens = jnp.arange(12).reshape(2, 6) % 10
  variables = {'params': _params(model, tokens)}
  apply = jax.jit(model.apply, static_argnames='train')
  eval_a = apply(variables, tokens)
  np.testing.assert_array_equal(eval_a, apply(variables, tokens))
  train_a = apply(variables, tokens, train=True, rngs={'dropout': jax.random.key(1)})
  train_b = apply(variables, tokens, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, train_b)


@pytest.mark.parametrize('name', MY_MODELS)
def test_registered_models_build_and_run(name):
  assert name in registry.names()
  if name.endswith('_lm'):
    model = registry.build(name, vocab_size=9, embed_dim=4, hidden_size=6, num_layers=2)
    tokens = jnp.zeros((2, 5), jnp.int32)
    assert jax.eval_shape(model.init, jax.random.key(0), tokens)['params']
    logits = model.apply({'params': _params(model, tokens)}, tokens)
    assert logits.shape == (2, 5, 9) and np.all(np.isfinite(logits))
    return
  model = registry.build(name, num_classes=10, hidden_size=8, vocab_size=20, embed_dim=4)
  signals = _rand((3, 40, 1))  # MNIST-1D shaped float features.
  variables = {'params': _params(model, signals)}
  logits, feats = jax.jit(model.apply, static_argnames='return_features')(
      variables, signals, return_features=True
  )
  assert logits.shape == (3, 10) and feats['pre_logits'].shape == (3, 8)
  assert feats['outputs'].shape == (3, 40, 8) and np.all(np.isfinite(logits))
  assert jax.eval_shape(model.apply, variables, signals[..., 0]).shape == (3, 10)
  tokens = jax.ShapeDtypeStruct((3, 7), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), tokens)
  assert variables['params']['embed']['embedding'].shape == (20, 4)
  assert jax.eval_shape(model.apply, variables, tokens).shape == (3, 10)


@pytest.mark.parametrize('name', ['lstm_classifier', 'gru_lm'])
def test_bfloat16_computation_keeps_float32_params(name):
  kwargs = {'num_classes': 3} if name.endswith('classifier') else {'vocab_size': 7}
  model = registry.build(name, dtype=jnp.bfloat16, hidden_size=8, embed_dim=4, **kwargs)
  x = jax.ShapeDtypeStruct((2, 5, 3), jnp.float32) if 'num_classes' in kwargs else (
      jax.ShapeDtypeStruct((2, 5), jnp.int32))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  assert jax.eval_shape(model.apply, variables, x).dtype == jnp.bfloat16


def test_bad_inputs_fail_clearly():
  model = registry.build('gru_classifier', num_classes=2)
  with pytest.raises(ValueError, match='vocab_size'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 3), jnp.int32))
  with pytest.raises(ValueError, match='hidden_size == embed_dim'):
    registry.build('lstm_lm', vocab_size=5, embed_dim=4, hidden_size=8, tie_embeddings=True)
  with pytest.raises(ValueError, match='mask has shape'):
    jax.eval_shape(
        registry.build('rnn_classifier', num_classes=2).init, jax.random.key(0),
        jnp.ones((1, 3, 1)), mask=jnp.ones((1, 4), bool),
    )
  with pytest.raises(ValueError, match='unknown cell'):
    jax.eval_shape(rnn.RecurrentLayer('elman', 3).init, jax.random.key(0),
                   jnp.ones((1, 2, 1)), jnp.ones((1, 2), bool))


@pytest.mark.parametrize('reverse', [False, True])
def test_fast_lstm_equals_the_masked_layer_values_and_gradients(reverse):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 7, 5)), jnp.float32)
  layer = rnn.RecurrentLayer('lstm', 6, reverse=reverse)
  params = layer.init(jax.random.key(0), x)
  carry = None if reverse else tuple(
      jnp.asarray(rng.normal(size=(3, 6)), jnp.float32) for _ in range(2))
  out_w = jnp.asarray(rng.normal(size=(3, 7, 6)), jnp.float32)
  ones = jnp.ones((3, 7), bool)

  def loss(params, x, carry, mask):
    out, (c, h) = layer.apply(params, x, mask, carry)
    return jnp.sum(out * out_w) + jnp.sum(c * h)

  # mask=None takes lstm_scan; an all-True mask takes the per-step masked scan.
  fast = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, carry, None)
  masked = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, carry, ones)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(masked)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  grads = jax.tree.leaves(fast[1][0])
  assert all(float(jnp.abs(g).max()) > 0 for g in grads)


def test_lstm_scan_gradients_against_finite_differences():
  rng = np.random.default_rng(1)
  f_in, size = 3, 4
  args = [rng.normal(size=s) * 0.5 for s in
          ((5, 2, f_in), (2, size), (2, size), (f_in + size, 4 * size), (4 * size,))]
  with jax.enable_x64():
    args = [jnp.asarray(a, jnp.float64) for a in args]
    check_grads(lambda *a: rnn.lstm_scan(*a), args, order=1, modes=['rev'],
                atol=1e-6, rtol=1e-6)


def test_lstm_lm_keeps_its_parameter_names_and_shapes():
  model = rnn.RNNLanguageModel('lstm', vocab_size=11, embed_dim=5, hidden_size=6,
                               num_layers=2)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((2, 3), jnp.int32))['params']['rnn']
  assert jax.tree.map(lambda s: s.shape, shapes) == {
      'layer_0': {'input': {'kernel': (5, 24), 'bias': (24,)},
                  'recurrent_kernel': (6, 24)},
      'layer_1': {'input': {'kernel': (6, 24), 'bias': (24,)},
                  'recurrent_kernel': (6, 24)}}
