"""The CPU speed levers keep results: conv option, max-pool, LSTM, attention,
transformer backward.

Each lever is checked against the code path it replaces (values and
gradients), not timed: timings live in benchmarks/ and the README.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dlresearch import logging as log_lib, parallel, tasks, train
from dlresearch.config import Config
from dlresearch.data import pipeline
from dlresearch.models import attention, cnn, cpu_fusion, rnn, transformer

# ----------------------------------------------------- conv compiler option --


def test_jit_strategy_compiles_with_the_cpu_conv_option_and_can_turn_it_off():
  mesh = parallel.make_mesh('data:1')
  on = parallel.JitStrategy(mesh, None)
  off = parallel.JitStrategy(mesh, None, cpu_eigen_convs=False)
  assert on.compiler_options == parallel.CPU_CONV_OPTIONS
  assert off.compiler_options is None
  # The option reaches XLA: it rejects a bad value of the same option.
  with pytest.raises(Exception, match='ynn_fusion_type'):
    jax.jit(lambda x: x + 1, compiler_options={
        'xla_cpu_experimental_ynn_fusion_type': 'NOT_A_FUSION_TYPE'})(1.0)


def test_a_rejected_cpu_option_falls_back_to_xla_defaults(monkeypatch):
  monkeypatch.setattr(parallel, 'CPU_CONV_OPTIONS',
                      {'xla_cpu_experimental_ynn_fusion_type': 'NOT_A_TYPE'})
  parallel._accepted_cpu_options.cache_clear()
  try:
    assert parallel.compiler_options(parallel.make_mesh('data:1')) is None
  finally:
    monkeypatch.undo()
    parallel._accepted_cpu_options.cache_clear()
  assert parallel.compiler_options(parallel.make_mesh('data:1')) == (
      parallel.CPU_CONV_OPTIONS)


def _image_data(n=64, size=12, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {'image': rng.normal(size=(n, size, size, 1)).astype(np.float32),
            'label': rng.integers(0, 10, n).astype(np.int32)}
  return pipeline.Data(pipeline.ArrayDataset(arrays), pipeline.ArrayDataset(arrays),
                       tasks.Classification(), {'num_classes': 10})


def test_cnn_loss_curve_is_the_same_with_and_without_the_conv_option(tmp_path):
  data = _image_data()
  base = Config(model='lenet5', batch_size=16, num_steps=5, log_every=1,
                checkpoint_every=100, optimizer='adam', learning_rate=1e-3,
                mesh='data:1', model_summary=False, plots=False)
  curves = {}
  for eigen in (True, False):
    workdir = str(tmp_path / f'eigen_{eigen}')
    final = train.run(base.replace(cpu_eigen_convs=eigen), workdir, data=data)
    curves[eigen] = [l['loss'] for l in log_lib.read_metrics(workdir, 'train')]
    curves[eigen].append(final['loss'])
  assert len(curves[True]) == 6 and curves[True][4] < curves[True][0]
  np.testing.assert_allclose(curves[True], curves[False], rtol=1e-5)


# ------------------------------------------------------------------ max-pool --


@pytest.mark.parametrize('shape,window', [
    ((2, 8, 8, 3), (2, 2)),
    ((2, 7, 9, 4), (2, 2)),   # odd sizes: VALID drops the last row/column
    ((3, 9, 6, 2), (3, 3)),
    ((2, 6, 9, 2), (2, 3)),
    ((2, 12, 5), (4,)),       # 1-D pooling
])
def test_max_pool_matches_flax_values_and_gradients_with_ties(shape, window):
  rng = np.random.default_rng(0)
  for x in (rng.normal(size=shape),            # no ties
            rng.integers(0, 3, size=shape)):   # many ties within windows
    x = jnp.asarray(x, jnp.float32)
    ours = cnn.max_pool(x, window)
    ref = nn.max_pool(x, window, window)
    np.testing.assert_array_equal(ours, ref)
    weights = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
    g_ours = jax.grad(lambda x: jnp.sum(cnn.max_pool(x, window) * weights))(x)
    g_ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x, window, window) * weights))(x)
    np.testing.assert_array_equal(g_ours, g_ref)
    # One element per window receives the gradient, as in flax.
    assert int(jnp.sum(g_ours != 0)) == int(jnp.sum(weights != 0))


def test_overlapping_or_padded_pools_use_flax():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 9, 3)), jnp.float32)
  np.testing.assert_array_equal(cnn.max_pool(x, (3, 3), (2, 2)),
                                nn.max_pool(x, (3, 3), (2, 2)))
  np.testing.assert_array_equal(cnn.max_pool(x, (2, 2), (2, 2), 'SAME'),
                                nn.max_pool(x, (2, 2), (2, 2), 'SAME'))


# ---------------------------------------------------------------------- LSTM --


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


# ----------------------------------------------------------------- attention --


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


# ------------------------------------------------ transformer backward pass --


def test_materialize_is_the_identity_forward_and_backward():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32).at[0, 1, 2].set(jnp.inf)
  g = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32).at[1, 0, 0].set(-jnp.inf)
  for fn in (cpu_fusion.materialize, cpu_fusion.materialize_gradient):
    out, vjp = jax.vjp(jax.jit(fn), x)
    np.testing.assert_array_equal(out, x)          # infs too
    np.testing.assert_array_equal(vjp(g)[0], g)
  assert cpu_fusion.materialize(jnp.zeros((0, 3))).shape == (0, 3)


def test_materialize_survives_xla_and_writes_its_operand_once():
  # The conditional must reach the compiled program (XLA removes one whose
  # branches it can prove equal, and with it the fusion barrier).
  f = jax.jit(lambda x: jnp.transpose(cpu_fusion.materialize(jax.nn.relu(x * 2.0 + 1.0))))
  hlo = f.lower(jnp.ones((64, 32), jnp.float32)).compile().as_text()
  assert 'conditional(' in hlo


def _grads_with_and_without_materialize(monkeypatch, model, inputs, **apply_kwargs):
  variables = model.init(jax.random.key(0), inputs)

  def loss(params):
    out = model.apply({**variables, 'params': params}, inputs, **apply_kwargs)
    out = out[0] if isinstance(out, tuple) else out
    return -jnp.mean(jax.nn.log_softmax(out)[..., 0])

  grads = {}
  for on in (True, False):
    monkeypatch.setattr(cpu_fusion, 'enabled', lambda on=on: on)
    grads[on] = jax.jit(jax.grad(loss))(variables['params'])
  monkeypatch.undo()
  return grads


def test_transformer_gradients_are_unchanged_by_materialize(monkeypatch):
  model = transformer.TransformerLM(vocab_size=13, num_layers=3, d_model=16,
                                    num_heads=2, max_len=8)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 13, (2, 8)), jnp.int32)
  grads = _grads_with_and_without_materialize(monkeypatch, model, tokens)
  for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
    np.testing.assert_array_equal(a, b)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[True]))


def test_resnet_gradients_are_unchanged_by_materialize(monkeypatch):
  model = cnn.ResNet18(num_classes=10, width=8, stem='small', zero_init_residual=False)
  images = jnp.asarray(np.random.default_rng(2).normal(size=(2, 16, 16, 3)), jnp.float32)
  grads = _grads_with_and_without_materialize(
      monkeypatch, model, images, train=True, mutable=['batch_stats'])
  for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[True]))


def test_materialize_is_on_for_one_cpu_device_only():
  assert cpu_fusion.enabled() == (jax.default_backend() == 'cpu' and jax.device_count() == 1)
