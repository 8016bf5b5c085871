"""dlresearch.kernels: the native GEMM (an FFI target) equals XLA's dots.

Values and gradients against XLA's ``dot_general`` for odd sizes, both
transposes, batch axes and zero sizes, under jit, grad, vmap and remat; the
flax Dense interceptor on a Transformer; the explicit attention's two
batched matmuls and ``lstm_scan``'s native time loops (or, without them,
its gate matmuls) in a native trace, and untouched outside one; the 8-device mesh (right values,
and the strategy keeps XLA's dots there); the fallback (one warning, XLA's
results) without the extension; train runs with kernels on equal off to the
conv option's tolerance, and resume stays bit-identical with them on.
"""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dlresearch import kernels, logging as log_lib, parallel, tasks, train
from dlresearch.config import Config
from dlresearch.data import pipeline
from dlresearch.kernels import native
from dlresearch.models import attention, lora, registry, rnn


@pytest.fixture(scope='module')
def on(tmp_path_factory):
  """The native path loaded (built here if the install did not build it)."""
  ext = native.built_extension()
  if ext is None:
    ext = native.build(str(tmp_path_factory.mktemp('ext') / 'gemm.so'))
  assert kernels.configure('native', extension=ext), 'the native GEMM did not load'
  yield
  kernels.configure('xla')


def _uses_kernel(fn, *args):
  return f'custom_call @{native.TARGET}(' in jax.jit(fn).lower(*args).as_text()


def _arrays(*shapes, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]


CASES = [  # a shape, b shape, trans_a, trans_b
    ((5, 7), (7, 3), False, False), ((7, 5), (7, 3), True, False),
    ((5, 7), (3, 7), False, True), ((7, 5), (3, 7), True, True),
    ((33, 129), (129, 65), False, False), ((3, 17, 9), (3, 9, 11), False, False),
    ((2, 3, 9, 17), (2, 3, 11, 9), True, True), ((0, 7), (7, 3), False, False),
    ((5, 0), (0, 3), False, False), ((4, 6), (6, 0), False, False),
]


# Large enough (>= 2^21 multiply-adds) for gemm.cc to cut the call into parts
# run on XLA's intra-op pool: along rows, columns and batches (gradients too).
# Sums of ~260 products: absolute rounding differences up to ~4e-5.
LARGE = [((300, 257), (257, 129), False, False), ((257, 40), (257, 300), True, False),
         ((5, 64, 96), (5, 80, 96), False, True)]


def test_large_call_too_narrow_to_cut_equals_xla(on):
  # >= 2^21 multiply-adds but a batch of 3 and 20x20 outputs: too few batches,
  # rows or columns to cut, so one part computes every batch whole. Integer
  # values: every sum is exact, so both must agree to the bit.
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.integers(-2, 3, size=s), jnp.float32)
          for s in ((3, 20, 1800), (3, 1800, 20)))
  np.testing.assert_array_equal(jax.jit(kernels.matmul)(a, b),
                                kernels._xla(a, b, False, False))  # pylint: disable=protected-access


@pytest.mark.parametrize('sa,sb,ta,tb', CASES + LARGE)
def test_values_and_gradients_equal_xla(on, sa, sb, ta, tb):
  atol = 1e-4 if (sa, sb, ta, tb) in LARGE else 1e-5
  a, b = _arrays(sa, sb)
  w = _arrays((*sa[:-2], sb[-2] if tb else sb[-1], sa[-1] if ta else sa[-2]), seed=1)[0]

  def loss(mm):
    return lambda a, b: (mm(a, b, ta, tb) * jnp.swapaxes(w, -1, -2)).sum()

  def xla(a, b, ta, tb):
    return kernels._xla(a, b, ta, tb)  # pylint: disable=protected-access

  got = jax.jit(kernels.matmul, static_argnums=(2, 3))(a, b, ta, tb)
  want = xla(a, b, ta, tb)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)
  for g, h in zip(jax.jit(jax.grad(loss(kernels.matmul), (0, 1)))(a, b),
                  jax.grad(loss(xla), (0, 1))(a, b)):
    assert g.shape == h.shape
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=atol)
  if a.size and b.size:
    assert _uses_kernel(lambda a, b: kernels.matmul(a, b, ta, tb), a, b)


def test_vmap_and_remat_equal_xla(on):
  x, kernel = _arrays((4, 3, 10), (10, 6))
  got = jax.jit(jax.vmap(lambda x: kernels.dense(x, kernel)))(x)
  np.testing.assert_allclose(got, x @ kernel, rtol=1e-5, atol=1e-5)
  assert _uses_kernel(jax.vmap(lambda x: kernels.dense(x, kernel)), x)
  f = lambda k: jnp.tanh(jax.checkpoint(kernels.dense)(x, k)).sum()
  np.testing.assert_allclose(jax.jit(jax.grad(f))(kernel),
                             jax.grad(lambda k: jnp.tanh(x @ k).sum())(kernel),
                             rtol=1e-5, atol=1e-5)


def test_dense_layers_of_a_transformer_run_on_the_kernel(on):
  model = registry.build('transformer_lm', vocab_size=31, num_layers=2, d_model=24,
                         num_heads=3, mlp_dim=40, max_len=9)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 31, (2, 9)), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), tokens)['params']

  def loss(params):
    return jnp.square(model.apply({'params': params}, tokens)).mean()

  native_loss = kernels.traced_with_native(jax.value_and_grad(loss))
  assert _uses_kernel(native_loss, params)
  (got, got_g), (want, want_g) = jax.jit(native_loss)(params), jax.value_and_grad(loss)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda g, h: np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-6),
               got_g, want_g)


def _jaxpr(fn, *args) -> str:
  return str(jax.make_jaxpr(fn)(*args))


def _native_equals_xla(fn, *args, rtol=1e-5, atol=1e-6):
  """``fn`` traced natively: no XLA dot left, the FFI call in the HLO, XLA's numbers."""
  native_fn = kernels.traced_with_native(fn)
  assert 'dot_general' in _jaxpr(fn, *args)
  assert 'dot_general' not in _jaxpr(native_fn, *args)  # every matmul on the kernel
  assert _uses_kernel(native_fn, *args) and not _uses_kernel(fn, *args)
  got, want = jax.jit(native_fn)(*args), jax.jit(fn)(*args)
  jax.tree.map(lambda g, h: np.testing.assert_allclose(g, h, rtol=rtol, atol=atol),
               got, want)


@pytest.mark.parametrize('kv_heads', [None, 1])
def test_attention_matmuls_run_on_the_kernel(on, kv_heads):
  layer = attention.MultiHeadAttention(num_heads=3, qkv_features=15, num_kv_heads=kv_heads,
                                       implementation='explicit')
  x = _arrays((2, 7, 11))[0]
  mask = attention.padding_mask(jnp.arange(7)[None] < jnp.asarray([[7], [5]]))
  params = layer.init(jax.random.PRNGKey(0), x)['params']

  def loss(params, x):  # padding and causal masks, weights returned too
    out, weights = layer.apply({'params': params}, x, mask=mask, causal=True,
                               return_weights=True)
    return jnp.square(out).mean() + jnp.square(weights).mean()

  _native_equals_xla(jax.value_and_grad(loss, (0, 1)), params, x)
  # The default path (return_weights=False) and the layer's forward alone.
  _native_equals_xla(lambda p, x: layer.apply({'params': p}, x, causal=True), params, x)


def _lstm_loss(layer):
  def loss(params, x):  # mask=None: every layer and direction runs lstm_scan
    out, carries = layer.apply({'params': params}, x)
    return jnp.square(out).mean() + sum(jnp.square(v).sum() for v in jax.tree.leaves(carries))
  return loss


def _calls(fn, *args):
  text = jax.jit(fn).lower(*args).as_text()
  return {t: text.count(f'custom_call @{t}(') for t in (native.TARGET, *native.LSTM_TARGETS)}


def test_lstm_scan_runs_its_loops_natively(on):
  """Both time loops are one native call each; the input projection and the
  weight and input gradients are GEMMs over all steps."""
  assert kernels.lstm_loops()
  layer = rnn.RNN('lstm', hidden_size=6, num_layers=2, bidirectional=True)
  x = _arrays((3, 5, 7))[0]
  params = layer.init(jax.random.PRNGKey(0), x)['params']
  loss = _lstm_loss(layer)
  _native_equals_xla(jax.value_and_grad(loss, (0, 1)), params, x)
  # Per layer and direction: the projection, dW and dx GEMMs, one forward
  # and one backward loop.
  grad = kernels.traced_with_native(jax.grad(loss, (0, 1)))
  assert _calls(grad, params, x) == {native.TARGET: 12, 'dlr_lstm_fwd': 4, 'dlr_lstm_bwd': 4}


@pytest.mark.parametrize('batch,size,scale', [(16, 64, 1.0), (11, 80, 1.0), (4, 32, 30.0)])
def test_lstm_loops_equal_xla_when_cut_into_parts_and_saturated(on, batch, size, scale):
  """Sizes where a step is cut into parts (by hidden unit, on XLA's pool;
  80 units: parts of 48 and 32) and pre-activations far into saturation
  (the kernel's own exp/tanh clamp there)."""
  layer = rnn.RNN('lstm', hidden_size=size, num_layers=1)
  x = _arrays((batch, 7, 11))[0] * scale
  params = layer.init(jax.random.PRNGKey(1), x)['params']
  params = jax.tree.map(lambda p: p * scale, params)
  loss = _lstm_loss(layer)
  # Products over a few hundred terms and seven steps: XLA's and the
  # kernel's exp/tanh and summation orders differ in the last bits.
  _native_equals_xla(jax.value_and_grad(loss, (0, 1)), params, x, rtol=2e-5, atol=2e-6)


def test_lstm_loops_under_vmap_and_remat(on):
  """vmap runs the loops once per mapped index ('sequential'); remat
  recomputes the forward loop in the backward pass. Both equal XLA."""
  layer = rnn.RNN('lstm', hidden_size=6, num_layers=1)
  xs = _arrays((2, 3, 5, 7))[0]
  params = layer.init(jax.random.PRNGKey(0), xs[0])['params']
  loss = _lstm_loss(layer)
  mapped = lambda p, xs: jax.vmap(lambda x: loss(p, x))(xs).sum()
  _native_equals_xla(jax.value_and_grad(mapped, (0, 1)), params, xs)
  # A fresh function per trace: jax.checkpoint caches its trace by function.
  remat = lambda p, x: jax.grad(jax.checkpoint(lambda *a: loss(*a)), (0, 1))(p, x)
  _native_equals_xla(remat, params, xs[0])


def test_lstm_loops_propagate_nan_like_xla(on):
  """A NaN input reaches the outputs and gradients (so --nan_stop sees it)."""
  layer = rnn.RNN('lstm', hidden_size=6, num_layers=1)
  x = _arrays((3, 5, 7))[0].at[1, 2, 3].set(jnp.nan)
  params = layer.init(jax.random.PRNGKey(0), x)['params']
  grad = jax.value_and_grad(_lstm_loss(layer))
  (got, got_g), (want, want_g) = jax.jit(kernels.traced_with_native(grad))(params, x), grad(params, x)
  assert np.isnan(got) and np.isnan(want)
  jax.tree.map(lambda g, w: np.testing.assert_array_equal(np.isnan(g), np.isnan(w)), got_g, want_g)


def test_lstm_without_the_loop_targets_runs_its_matmuls_on_the_kernel(on, monkeypatch):
  """An extension built before the loops existed: the scan, its gate
  matmuls on the GEMM (forward gates, backward recurrent product, dW, dx)."""
  monkeypatch.setattr(kernels, 'lstm_loops', lambda: False)
  layer = rnn.RNN('lstm', hidden_size=6, num_layers=2, bidirectional=True)
  x = _arrays((3, 5, 7))[0]
  params = layer.init(jax.random.PRNGKey(0), x)['params']
  loss = _lstm_loss(layer)
  _native_equals_xla(jax.value_and_grad(loss, (0, 1)), params, x)
  grad = kernels.traced_with_native(jax.grad(loss, (0, 1)))
  assert _calls(grad, params, x) == {native.TARGET: 16, 'dlr_lstm_fwd': 0, 'dlr_lstm_bwd': 0}


def test_lora_adapters_act_and_train_in_a_native_trace(on):
  """LoRA's interceptor sits inside the kernel's: the adapted layers keep
  XLA's dot so the adapters still add to them (the kernel's interceptor
  used to answer first and skip them: zero adapter gradients); every other
  Dense takes the kernel. Values and gradients equal XLA's."""
  base = registry.build('transformer_classifier', num_classes=2, vocab_size=50,
                        num_layers=1, d_model=16, num_heads=2)
  model = lora.LoRA(base, rank=4)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 8)), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), x)
  # Non-zero B, so that the adapters change the outputs.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.1 if 'lora_b' in jax.tree_util.keystr(p) else v, variables['params'])

  def loss(p, x):
    return jnp.square(model.apply({**variables, 'params': p}, x)).sum()

  grad = jax.value_and_grad(loss)
  native_grad = kernels.traced_with_native(grad)
  assert _uses_kernel(native_grad, params, x)
  (got, got_g), (want, want_g) = jax.jit(native_grad)(params, x), jax.jit(grad)(params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5), got_g, want_g)
  assert float(jnp.abs(got_g['encoder']['block_0']['attn']['query']['lora_b']).max()) > 0
  # The adapters act: with B = 0 again the loss is another.
  assert not np.isclose(got, jax.jit(kernels.traced_with_native(loss))(variables['params'], x),
                        rtol=1e-3)


def test_outside_a_native_trace_models_trace_as_before(on):
  """Loaded but not tracing natively (``--cpu_kernels=xla``, meshes): the same
  program as with the kernels switched off, and no custom call."""
  layer = attention.MultiHeadAttention(num_heads=3, qkv_features=15, implementation='explicit')
  lm = registry.build('lstm_lm', vocab_size=13, embed_dim=7, hidden_size=6)
  x = _arrays((2, 7, 11))[0]
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 13, (3, 5)), jnp.int32)
  cases = [(lambda p, x: jnp.square(layer.apply(p, x, causal=True)).sum(),
            layer.init(jax.random.PRNGKey(0), x), x),
           (lambda p, t: jnp.square(lm.apply(p, t)).sum(), lm.init(jax.random.PRNGKey(0), tokens),
            tokens)]
  for loss, params, inputs in cases:
    grad = jax.value_and_grad(loss)
    loaded = _jaxpr(grad, params, inputs), jax.jit(grad)(params, inputs)
    assert not _uses_kernel(grad, params, inputs)
    kernels.configure('xla')
    try:
      off = _jaxpr(grad, params, inputs), jax.jit(grad)(params, inputs)
    finally:
      assert kernels.configure('native')
    assert loaded[0] == off[0]
    jax.tree.map(np.testing.assert_array_equal, loaded[1], off[1])


def test_conv_probe_rows_check_im2col_against_xla(on):
  # pylint: disable-next=import-outside-toplevel
  from benchmarks import kernels as probe, workloads
  for name in probe.CONVS:  # the table holds every convolution the model traces
    w = workloads.get(name)
    model = registry.build(w.model, **w.model_kwargs)
    x = jax.ShapeDtypeStruct((w.batch_size, *w.shape), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    eqns = jax.make_jaxpr(model.apply)(params, x).eqns
    traced = sorted((e.invars[0].aval.shape, e.invars[1].aval.shape,
                     e.params['window_strides'], e.params['padding'])
                    for e in eqns if e.primitive.name == 'conv_general_dilated')
    table = sorted(((n, h, wd, c), (k, k, c, o), (s, s), ((p, p), (p, p)))
                   for _, count, (n, h, wd, c, o, k, s, p), _ in probe.CONVS[name]
                   for _ in range(count))
    assert traced == table and len(table) == {'lenet': 2, 'resnet18_cifar': 20}[name]
  rows = list(probe.conv_shapes(['lenet', 'resnet18_cifar']))
  assert len(rows) == 2 * 2 + 1 + 11 * 3 - 1  # no dX for a first layer
  options = probe.step_options()
  for spec in [(2, 9, 9, 3, 5, 3, 2, 1), (2, 8, 7, 4, 6, 1, 2, 0), (3, 6, 5, 2, 4, 3, 1, 0)]:
    for which in ('fwd', 'dX', 'dW'):  # conv_row asserts the values equal XLA's
      gf = probe.conv_row('resnet18_cifar', spec, which, {'openblas': native.TARGET},
                          rounds=1, options=options)
      assert set(gf) == {'xla', 'openblas'} and all(np.isfinite(v) and v > 0
                                                    for v in gf.values())


def test_eight_device_mesh_values_and_the_strategy_keeps_xla(on, caplog):
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  x, kernel = _arrays((16, 12), (12, 5))
  xs = jax.device_put(x, NamedSharding(mesh, P('data')))
  got = jax.jit(kernels.dense)(xs, kernel)  # the partitioner gathers x
  np.testing.assert_allclose(got, x @ kernel, rtol=1e-5, atol=1e-5)
  mesh2 = Mesh(np.array(jax.devices()[:8]).reshape(8, 1), parallel.AXES)
  with caplog.at_level(logging.WARNING):
    strategy = parallel.JitStrategy(mesh2, None, cpu_kernels='native')
  assert not strategy._native  # pylint: disable=protected-access
  assert 'one-device CPU mesh' in caplog.text


def test_missing_extension_warns_once_and_runs_xla(monkeypatch, caplog):
  monkeypatch.setattr(native, 'built_extension', lambda: None)
  monkeypatch.setattr(native, '_LOADED', {})
  monkeypatch.setattr(kernels, '_state', {'mode': 'xla', 'target': None, 'warned': False})
  with caplog.at_level(logging.WARNING):
    assert not kernels.configure('native')
    assert not kernels.configure('native')
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and 'was not built' in warnings[0].getMessage()
  a, b = _arrays((5, 7), (7, 3))
  assert not _uses_kernel(kernels.matmul, a, b)
  np.testing.assert_array_equal(kernels.matmul(a, b), jax.lax.dot(a, b))


def _image_data(n=64, size=12, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {'image': rng.normal(size=(n, size, size, 1)).astype(np.float32),
            'label': rng.integers(0, 10, n).astype(np.int32)}
  return pipeline.Data(pipeline.ArrayDataset(arrays), pipeline.ArrayDataset(arrays),
                       tasks.Classification(), {'num_classes': 10})


def _lm_data(n=48, length=16, vocab=29, seed=0):
  t = np.random.default_rng(seed).integers(0, vocab, (n, length + 1)).astype(np.int32)
  arrays = {'inputs': t[:, :-1], 'targets': t[:, 1:]}
  return pipeline.Data(pipeline.ArrayDataset(arrays), pipeline.ArrayDataset(arrays),
                       tasks.LanguageModel(), {'vocab_size': vocab})


RUNS = {
    'lenet5': (dict(model='lenet5', optimizer='adam'), _image_data),
    'lstm': (dict(model='lstm_lm', optimizer='adam', learning_rate=1e-2, model_kwargs={
        'embed_dim': 16, 'hidden_size': 24}), _lm_data),
    'gpt': (dict(model='transformer_lm', optimizer='adamw', model_kwargs={
        'num_layers': 2, 'd_model': 32, 'num_heads': 2, 'mlp_dim': 64,
        'max_len': 16}), _lm_data),
}


def _curve(cfg, workdir, data):
  final = train.run(cfg, workdir, data=data)
  return [l['loss'] for l in log_lib.read_metrics(workdir, 'train')] + [final['loss']]


@pytest.mark.parametrize('name', sorted(RUNS))
def test_loss_curve_with_kernels_equals_xla_and_resume_is_exact(on, tmp_path, name,
                                                               monkeypatch):
  traced = []  # Dense calls the interceptor routed to the kernel (at trace time)
  dense = kernels.dense
  monkeypatch.setattr(kernels, 'dense', lambda *a: traced.append(1) or dense(*a))
  extra, make_data = RUNS[name]
  data = make_data()
  base = Config(**dict(batch_size=16, num_steps=6, log_every=1, checkpoint_every=3,
                       learning_rate=1e-3, mesh='data:1', model_summary=False,
                       plots=False, cpu_kernels='xla') | extra)
  xla = _curve(base, str(tmp_path / 'xla'), data)
  assert not traced
  on_ = base.replace(cpu_kernels='native')
  straight = _curve(on_, str(tmp_path / 'native'), data)
  assert traced
  assert len(straight) == 7 and straight[5] < straight[0]
  np.testing.assert_allclose(straight, xla, rtol=1e-5)
  resumed = str(tmp_path / 'resumed')
  train.run(on_.replace(num_steps=3), resumed, data=data)
  again = _curve(on_, resumed, data)
  assert again == straight  # bit-identical: the same kernel, the same order


@pytest.mark.parametrize('name,native', [('lenet5', False), ('lstm', True), ('gpt', True)])
def test_auto_takes_native_for_models_without_convolutions(on, tmp_path, name, native,
                                                          monkeypatch, caplog):
  caplog.set_level(logging.INFO)
  traced = []
  dense = kernels.dense
  monkeypatch.setattr(kernels, 'dense', lambda *a: traced.append(1) or dense(*a))
  extra, make_data = RUNS[name]
  cfg = Config(**dict(batch_size=16, num_steps=1, learning_rate=1e-3, mesh='data:1',
                      model_summary=False, plots=False) | extra)
  assert cfg.cpu_kernels == 'auto'  # the default
  train.run(cfg, str(tmp_path / name), data=make_data())
  assert bool(traced) == native
  assert ('take the native GEMM' in caplog.text) == native  # said once, at start


def test_has_convolution_finds_a_conv_inside_nested_jaxprs():
  conv = nn.Conv(4, (3, 3))
  x = jnp.ones((1, 8, 8, 1))
  init = jax.make_jaxpr(lambda: conv.init(jax.random.PRNGKey(0), x))()
  assert kernels.has_convolution(init)
  nested = jax.make_jaxpr(lambda: jax.lax.scan(
      lambda c, _: (c + jax.jit(lambda: conv.apply(conv.init(jax.random.PRNGKey(0), x),
                                                    x))().sum(), None),
      0.0, None, length=2))()
  assert kernels.has_convolution(nested)
  dense = nn.Dense(3)
  assert not kernels.has_convolution(
      jax.make_jaxpr(lambda: dense.init(jax.random.PRNGKey(0), jnp.ones((2, 5))))())
