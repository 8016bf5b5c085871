"""Tests for the MLP and convolutional families (mlp.py, cnn.py), and cnn.py's
max-pool against flax's (values and gradients, ties included).

Full-size models are only traced with ``jax.eval_shape``; real inits use the
tiny variants. Numerical checks compare against hand-written NumPy code in
float64.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch.models import cnn
from dlresearch.models import mlp
from dlresearch.models import registry

MY_MODELS = [
    'mlp',
    'logreg',
    'lenet5',
    'alexnet',
    'alexnet_tiny',
    'resnet18',
    'resnet34',
    'resnet50',
    'resnet101',
    'resnet152',
    'resnet_tiny',
]


def _key(seed: int) -> jax.Array:
  # 'rbg' keys: on XLA:CPU every new shape drawn with the default threefry
  # costs 1-8 s of compilation here, rbg ~0.3 s; the models don't care.
  return jax.random.key(seed, impl='rbg')


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_params(model: nn.Module, shape) -> dict:
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(model.init, _key(0), x)['params']


def _rand(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------- NumPy references --


def np_conv(x, w, b=None, stride=1, padding='SAME', groups=1):
  """Direct convolution, NHWC x HWIO, float64; 'SAME' or ((t, b), (l, r))."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  kh, kw, cin_g, cout = w.shape
  if padding == 'SAME':
    pads = []
    for size, k in ((x.shape[1], kh), (x.shape[2], kw)):
      out = -(-size // stride)
      total = max((out - 1) * stride + k - size, 0)
      pads.append((total // 2, total - total // 2))
  else:
    pads = padding
  xp = np.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  ho = (xp.shape[1] - kh) // stride + 1
  wo = (xp.shape[2] - kw) // stride + 1
  cout_g = cout // groups
  y = np.zeros((x.shape[0], ho, wo, cout))
  # Sum over kernel taps: each tap is a strided slice times a weight matrix.
  for di in range(kh):
    for dj in range(kw):
      tap = xp[
          :,
          di : di + stride * (ho - 1) + 1 : stride,
          dj : dj + stride * (wo - 1) + 1 : stride,
      ]
      for g in range(groups):
        y[..., g * cout_g : (g + 1) * cout_g] += (
            tap[..., g * cin_g : (g + 1) * cin_g]
            @ w[di, dj, :, g * cout_g : (g + 1) * cout_g]
        )
  return y if b is None else y + np.asarray(b, np.float64)


def np_lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1):
  """Krizhevsky et al. 2012, eq. in section 3.3, window inside each group."""
  x = np.asarray(x, np.float64)
  c = x.shape[-1]
  per = c // groups
  y = np.empty_like(x)
  for i in range(c):
    g0 = (i // per) * per
    lo, hi = max(g0, i - size // 2), min(g0 + per - 1, i + size // 2)
    s = np.sum(x[..., lo : hi + 1] ** 2, axis=-1)
    y[..., i] = x[..., i] / (k + alpha * s) ** beta
  return y


_NP_ACTS = {
    'relu': lambda z: np.maximum(z, 0.0),
    'gelu': lambda z: 0.5
    * z
    * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2))),
}


# ------------------------------------------------------------- param counts --


@pytest.mark.parametrize(
    'name,expected',
    [
        ('resnet18', 11_689_512),
        ('resnet34', 21_797_672),
        ('resnet50', 25_557_032),
        ('resnet101', 44_549_160),
        ('resnet152', 60_192_808),
        ('alexnet', 60_965_224),
    ],
)
def test_param_counts_match_published(name, expected):
  model = registry.build(name, num_classes=1000)
  count = _count(_abstract_params(model, (1, 224, 224, 3)))
  assert count == expected
  if name == 'alexnet':
    assert 60_000_000 <= count <= 62_000_000


def test_alexnet_count_by_hand_and_ungrouped():
  # The 2012 connectivity: conv2/4/5 see half their input maps.
  convs = [
      (11, 3, 96),
      (5, 48, 256),
      (3, 256, 384),
      (3, 192, 384),
      (3, 192, 256),
  ]
  fcs = [(6 * 6 * 256, 4096), (4096, 4096), (4096, 1000)]
  by_hand = sum(k * k * i * o + o for k, i, o in convs) + sum(
      i * o + o for i, o in fcs
  )
  params = _abstract_params(
      registry.build('alexnet', num_classes=1000), (1, 224, 224, 3)
  )
  assert _count(params) == by_hand
  assert params['conv2']['kernel'].shape == (5, 5, 48, 256)
  assert params['fc6']['kernel'].shape == (9216, 4096)
  ungrouped = registry.build('alexnet', num_classes=1000, groups=1)
  assert _count(_abstract_params(ungrouped, (1, 224, 224, 3))) == 62_378_344


# ---------------------------------------------------------------------- MLP --


@pytest.mark.parametrize('activation', ['relu', 'gelu'])
def test_mlp_matches_numpy(activation):
  model = registry.build(
      'mlp', num_classes=4, features=(7, 5), activation=activation
  )
  x = _rand((3, 2, 2, 3))
  variables = model.init(_key(1), x)
  logits, feats = model.apply(variables, x, return_features=True)

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
  act = _NP_ACTS[activation]
  h = x.reshape(3, -1).astype(np.float64)
  h0 = act(h @ p['hidden_0']['kernel'] + p['hidden_0']['bias'])
  h1 = act(h0 @ p['hidden_1']['kernel'] + p['hidden_1']['bias'])
  expected = h1 @ p['head']['kernel'] + p['head']['bias']

  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(feats['hidden_0'], h0, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(feats['pre_logits'], h1, atol=1e-5, rtol=1e-5)
  assert logits.shape == (3, 4)


def test_logreg_is_linear_on_flattened_input():
  model = registry.build('logreg', num_classes=3)
  x = _rand((2, 4, 5))
  variables = model.init(_key(0), x)
  logits, feats = model.apply(variables, x, return_features=True)
  assert set(variables['params']) == {'head'}
  np.testing.assert_array_equal(feats['pre_logits'], x.reshape(2, 20))
  p = variables['params']['head']
  np.testing.assert_allclose(
      logits, x.reshape(2, 20) @ p['kernel'] + p['bias'], atol=1e-5
  )


def test_mlp_dropout_uses_rng_only_in_train():
  model = registry.build('mlp', num_classes=3, features=(64,), dropout_rate=0.5)
  x = _rand((4, 10))
  variables = model.init(_key(0), x)
  eval_out = model.apply(variables, x)
  np.testing.assert_array_equal(eval_out, model.apply(variables, x))
  a = model.apply(variables, x, train=True, rngs={'dropout': _key(1)})
  b = model.apply(variables, x, train=True, rngs={'dropout': _key(2)})
  assert not np.allclose(a, b)
  assert not np.allclose(a, eval_out)


def test_unknown_activation_lists_choices():
  with pytest.raises(
      ValueError, match='unknown activation .swishy.*relu, gelu'
  ):
    registry.build('mlp', num_classes=2, activation='swishy')
  with pytest.raises(ValueError, match='leaky_relu, softplus'):
    registry.build('lenet5', num_classes=2, activation='swishy')
  # A module built directly fails as it is built, with the same message.
  with pytest.raises(ValueError, match='choose one of'):
    mlp.MLP(num_classes=2, activation='swishy').init(_key(0), jnp.zeros((1, 3)))


@pytest.mark.parametrize('activation', sorted(mlp.ACTIVATIONS))
def test_every_activation_builds(activation):
  model = registry.build(
      'mlp', num_classes=2, features=(3,), activation=activation
  )
  x = _rand((2, 4))
  out = model.apply(model.init(_key(0), x), x)
  assert out.shape == (2, 2) and np.all(np.isfinite(out))


def test_unknown_pooling_and_stem_are_errors():
  with pytest.raises(
      ValueError, match="unknown pooling 'mean'; choose one of: max, avg"
  ):
    registry.build('lenet5', num_classes=2, pooling='mean')
  with pytest.raises(
      ValueError, match="unknown stem 'cifar'; choose one of: imagenet, small"
  ):
    registry.build('resnet18', num_classes=2, stem='cifar')
  with pytest.raises(ValueError, match='unknown stem'):
    registry.build('alexnet', num_classes=2, stem='cifar')


# ----------------------------------------------------------- convolution --


@pytest.mark.parametrize('size', [8, 28])
def test_lenet_conv1_matches_numpy(size):
  """feats['conv1'] is conv (SAME, stride 1) + bias + activation."""
  model = registry.build('lenet5', num_classes=10)
  x = _rand((2, size, size, 1))
  variables = model.init(_key(0), x)
  _, feats = model.apply(variables, x, return_features=True)
  p = variables['params']['conv1']
  expected = np.maximum(np_conv(x, p['kernel'], p['bias'], 1, 'SAME'), 0.0)
  assert feats['conv1'].shape == (2, size, size, 6)
  np.testing.assert_allclose(feats['conv1'], expected, atol=1e-5, rtol=1e-5)


def test_numpy_conv_same_stride2_matches_lax():
  # The reference's SAME rule (extra pad at the end) for stride 2, even size.
  x, w = _rand((1, 8, 8, 2)), _rand((3, 3, 2, 4), seed=1)
  got = jax.lax.conv_general_dilated(
      x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  np.testing.assert_allclose(got, np_conv(x, w, None, 2, 'SAME'), atol=1e-5)


def test_resnet_stride2_convs_match_numpy():
  """Stem 7x7/2 pad 3 and the v1.5 stride-2 3x3 conv (pad 1, like torch)."""
  model = registry.build('resnet_tiny', num_classes=10, stem='imagenet')
  x = _rand((2, 32, 32, 3))
  variables = model.init(_key(0), x)
  (_, feats), state = model.apply(
      variables,
      x,
      return_features=True,
      capture_intermediates=True,
      mutable=['intermediates'],
  )
  inter, p = state['intermediates'], variables['params']

  stem = inter['stem_conv']['__call__'][0]
  expected = np_conv(x, p['stem_conv']['kernel'], None, 2, ((3, 3), (3, 3)))
  assert stem.shape == (2, 16, 16, 8)
  np.testing.assert_allclose(stem, expected, atol=1e-4, rtol=1e-5)

  blk = p['stage2_block1']
  down = inter['stage2_block1']['conv1']['__call__'][0]
  expected = np_conv(
      feats['stage1'], blk['conv1']['kernel'], None, 2, ((1, 1), (1, 1))
  )
  assert down.shape == (2, 4, 4, 16)
  np.testing.assert_allclose(down, expected, atol=1e-4, rtol=1e-5)
  # The projection shortcut is a 1x1 stride-2 conv.
  proj = inter['stage2_block1']['proj_conv']['__call__'][0]
  expected = np_conv(
      feats['stage1'], blk['proj_conv']['kernel'], None, 2, ((0, 0), (0, 0))
  )
  np.testing.assert_allclose(proj, expected, atol=1e-4, rtol=1e-5)


def test_local_response_norm_matches_numpy():
  x = 10.0 * _rand((2, 3, 3, 12))
  for groups in (1, 2):
    got = cnn.local_response_norm(x, groups=groups)
    np.testing.assert_allclose(
        got, np_lrn(x, groups=groups), rtol=1e-5, atol=1e-6
    )
  # Large activations are actually normalised (k=2 alone would give / 2**0.75).
  assert not np.allclose(np_lrn(x), x / 2.0**0.75, rtol=1e-3)


def test_alexnet_grouped_conv2_matches_numpy():
  """conv2 sees pool(LRN(conv1)) and only half its input maps per group."""
  model = registry.build('alexnet_tiny', num_classes=10)
  x = _rand((2, 32, 32, 3))
  variables = model.init(_key(0), x)
  _, feats = model.apply(variables, x, return_features=True)
  p = variables['params']

  c1 = np.maximum(
      np_conv(x, p['conv1']['kernel'], p['conv1']['bias'], 1, ((5, 5), (5, 5))),
      0,
  )
  np.testing.assert_allclose(feats['conv1'], c1, atol=1e-4, rtol=1e-5)
  pooled = nn.max_pool(
      jnp.asarray(np_lrn(feats['conv1'], groups=2), jnp.float32), (3, 3), (2, 2)
  )
  assert p['conv2']['kernel'].shape == (5, 5, 3, 16)
  c2 = np_conv(
      pooled,
      p['conv2']['kernel'],
      p['conv2']['bias'],
      1,
      ((2, 2), (2, 2)),
      groups=2,
  )
  np.testing.assert_allclose(
      feats['conv2'], np.maximum(c2, 0), atol=1e-4, rtol=1e-5
  )


def test_alexnet_feature_map_sizes():
  # 224 input: 55 -> 27 -> 13 -> 6 as in the paper (227 VALID).
  model = registry.build('alexnet', num_classes=1000)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)

  def run(x):
    variables = model.init(_key(0), x)
    return model.apply(variables, x, return_features=True)

  logits, feats = jax.eval_shape(run, x)
  assert feats['conv1'].shape == (1, 55, 55, 96)
  assert feats['conv2'].shape == (1, 27, 27, 256)
  assert feats['conv5'].shape == (1, 13, 13, 256)
  assert feats['pre_logits'].shape == (1, 4096)
  assert logits.shape == (1, 1000)


def test_lenet_original_configuration_shapes():
  model = registry.build(
      'lenet5',
      num_classes=10,
      activation='tanh',
      pooling='avg',
      padding='VALID',
  )
  x = _rand((2, 32, 32, 1))
  variables = model.init(_key(0), x)
  logits, feats = model.apply(variables, x, return_features=True)
  assert feats['conv1'].shape == (2, 28, 28, 6)
  assert feats['conv2'].shape == (2, 10, 10, 16)
  assert variables['params']['fc1']['kernel'].shape == (400, 120)
  assert feats['fc2'].shape == feats['pre_logits'].shape == (2, 84)
  assert logits.shape == (2, 10)
  assert np.all(np.abs(feats['fc1']) < 1.0)  # tanh range.


# ------------------------------------------------------ batch norm, dropout --


def test_batch_norm_train_uses_batch_stats_and_updates_running_stats():
  model = registry.build('resnet_tiny', num_classes=5)
  x = _rand((4, 8, 8, 3)) * 3.0 + 1.0
  variables = model.init(_key(0), x)
  assert set(variables) == {'params', 'batch_stats'}

  train_out, state = model.apply(
      variables,
      x,
      train=True,
      capture_intermediates=True,
      mutable=['batch_stats', 'intermediates'],
  )
  conv_out = np.asarray(
      state['intermediates']['stem_conv']['__call__'][0], np.float64
  )
  bn_out = np.asarray(
      state['intermediates']['stem_bn']['__call__'][0], np.float64
  )
  mean, var = conv_out.mean(axis=(0, 1, 2)), conv_out.var(axis=(0, 1, 2))
  # Batch statistics normalise the layer (scale 1, bias 0 at init)...
  np.testing.assert_allclose(bn_out.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(
      bn_out.var(axis=(0, 1, 2)), var / (var + 1e-5), rtol=1e-3
  )
  # ...and the running averages move with momentum 0.9 from (0, 1).
  new = state['batch_stats']['stem_bn']
  np.testing.assert_allclose(new['mean'], 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new['var'], 0.9 + 0.1 * var, rtol=1e-4)

  eval_a = model.apply(variables, x, train=False)
  eval_b = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(eval_a, train_out, atol=1e-3)
  # Eval with the updated statistics gives yet another (deterministic) answer.
  updated = {'params': variables['params'], 'batch_stats': state['batch_stats']}
  assert not np.allclose(model.apply(updated, x), eval_a, atol=1e-4)


def test_resnet_zero_init_residual():
  x = _rand((2, 8, 8, 3))
  model = registry.build('resnet_tiny', num_classes=5)
  variables = model.init(_key(0), x)
  p = variables['params']
  np.testing.assert_array_equal(p['stage1_block1']['bn2']['scale'], 0.0)
  np.testing.assert_array_equal(p['stage1_block1']['bn1']['scale'], 1.0)
  np.testing.assert_array_equal(p['stage2_block1']['proj_bn']['scale'], 1.0)
  # An identity-shortcut block is the identity at init.
  _, feats = model.apply(variables, x, return_features=True)
  np.testing.assert_allclose(feats['stage1'], feats['stem'], atol=1e-6)

  plain = registry.build('resnet_tiny', num_classes=5, zero_init_residual=False)
  p = plain.init(_key(0), x)['params']
  np.testing.assert_array_equal(p['stage1_block1']['bn2']['scale'], 1.0)
  bottleneck = _abstract_params(
      cnn.ResNet50(num_classes=5, width=4), (1, 32, 32, 3)
  )
  assert bottleneck['stage1_block1']['bn3']['scale'].shape == (16,)
  assert 'proj_conv' in bottleneck['stage1_block1']  # 4 -> 16 channels.


def test_alexnet_dropout():
  model = registry.build('alexnet_tiny', num_classes=10)
  x = _rand((2, 32, 32, 3))
  variables = model.init(_key(0), x)
  eval_a = model.apply(variables, x)
  np.testing.assert_array_equal(eval_a, model.apply(variables, x, train=False))
  train = functools.partial(model.apply, variables, x, train=True)
  a = train(rngs={'dropout': _key(1)})
  b = train(rngs={'dropout': _key(2)})
  np.testing.assert_array_equal(a, train(rngs={'dropout': _key(1)}))
  assert not np.allclose(a, b)
  assert not np.allclose(a, eval_a)
  _, feats = train(rngs={'dropout': _key(1)}, return_features=True)
  pre = np.asarray(feats['pre_logits'])
  fc7 = np.asarray(feats['fc7'])
  dropped = (pre == 0) & (fc7 != 0)
  assert dropped.any()
  np.testing.assert_allclose(pre[pre != 0], 2.0 * fc7[pre != 0], rtol=1e-6)


# -------------------------------------------------------------- every model --

_TINY_INPUTS = {
    'mlp': (2, 8, 8, 1),
    'logreg': (2, 8, 8, 1),
    'lenet5': (2, 8, 8, 1),
    'alexnet_tiny': (2, 32, 32, 3),
    'resnet_tiny': (2, 32, 32, 3),
}
_BIG = {
    'alexnet': ((2, 224, 224, 3), 4096),
    'resnet18': ((2, 64, 64, 3), 512),
    'resnet34': ((2, 64, 64, 3), 512),
    'resnet50': ((2, 64, 64, 3), 2048),
    'resnet101': ((2, 64, 64, 3), 2048),
    'resnet152': ((2, 64, 64, 3), 2048),
}
_TINY_PRE_LOGITS = {
    'mlp': 256,
    'logreg': 64,
    'lenet5': 84,
    'alexnet_tiny': 256,
    'resnet_tiny': 16,
}


def test_all_my_models_are_registered():
  assert set(MY_MODELS) <= set(registry.names())
  assert set(MY_MODELS) == set(_TINY_INPUTS) | set(_BIG)


@pytest.mark.parametrize('name', sorted(_TINY_INPUTS))
def test_tiny_models_real_init(name):
  model = registry.build(name, num_classes=7)
  x = _rand(_TINY_INPUTS[name])
  variables = model.init(_key(0), x)
  logits = model.apply(variables, x)
  logits_f, feats = model.apply(variables, x, return_features=True)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  np.testing.assert_array_equal(logits, logits_f)
  assert feats['pre_logits'].shape == (2, _TINY_PRE_LOGITS[name])


@pytest.mark.parametrize('name', sorted(_BIG))
def test_big_models_shapes(name):
  shape, width = _BIG[name]
  model = registry.build(name, num_classes=7)

  def run(x):
    variables = model.init(_key(0), x)
    return model.apply(variables, x, return_features=True)

  logits, feats = jax.eval_shape(run, jax.ShapeDtypeStruct(shape, jnp.float32))
  assert logits.shape == (2, 7)
  assert feats['pre_logits'].shape == (2, width)
  expected_keys = (
      {'conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'}
      if name == 'alexnet'
      else {'stem', 'stage1', 'stage2', 'stage3', 'stage4'}
  )
  assert set(feats) == expected_keys | {'pre_logits'}


def test_lenet_feature_names():
  model = registry.build('lenet5', num_classes=10)
  x = _rand((1, 28, 28, 1))
  _, feats = model.apply(model.init(_key(0), x), x, return_features=True)
  assert set(feats) == {'conv1', 'conv2', 'fc1', 'fc2', 'pre_logits'}
  assert feats['conv2'].shape == (1, 14, 14, 16)


@pytest.mark.parametrize('name', ['resnet_tiny', 'mlp'])
def test_bfloat16_compute_keeps_float32_params(name):
  model = registry.build(name, num_classes=3, dtype=jnp.bfloat16)
  x = _rand(_TINY_INPUTS[name])
  variables = model.init(_key(0), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
  logits, feats = model.apply(variables, x, return_features=True)
  assert logits.dtype == jnp.bfloat16
  assert feats['pre_logits'].dtype == jnp.bfloat16
  ref = registry.build(name, num_classes=3).apply(variables, x)
  np.testing.assert_allclose(logits.astype(np.float32), ref, atol=0.1, rtol=0.1)


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
