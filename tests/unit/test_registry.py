"""The model registry, parameter layouts against recorded fixtures, and norms.

``fixtures/param_shapes.json`` and ``fixtures/*_params.msgpack`` were written
by ``fixtures/make_param_fixtures.py`` with the code before the registry
rewrite (factory functions), so these tests prove that checkpoints written
then still fit the models built now.
"""

import functools
import json
import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch.models import cnn
from dlresearch.models import registry
from dlresearch.models import transformer

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures')


@functools.cache
def _fixture() -> dict:
  with open(os.path.join(FIXTURES, 'param_shapes.json')) as f:
    return json.load(f)


def _flat_shapes(tree) -> dict[str, list[int]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in flat}


# ------------------------------------------------------------- the API --


def test_every_registered_model_has_a_recorded_layout():
  recorded = {case['name'] for case in _fixture()['cases'].values()}
  assert recorded == set(registry.names())


@pytest.mark.parametrize('case', sorted(_fixture()['cases']))
def test_parameter_paths_and_shapes_are_unchanged(case):
  spec = _fixture()['cases'][case]
  model = registry.build(spec['name'], **spec['kwargs'])
  inputs = [jax.ShapeDtypeStruct(tuple(s), jnp.dtype(d)) for s, d in spec['inputs']]
  variables = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  assert _flat_shapes(variables) == spec['shapes']


def test_fields_are_the_module_fields():
  assert 'remat' in registry.fields('resnet50')
  assert 'num_classes' in registry.fields('lenet5')
  assert 'remat' not in registry.fields('lenet5')
  assert registry.fields('lenet5') == {'num_classes', 'activation', 'pooling', 'padding', 'dtype'}
  assert registry.accepts('gpt2_small', 'max_len')
  assert registry.accepts('transformer_seq2seq', 'vocab_size')
  assert not registry.accepts('mlp', 'vocab_size')
  for name in registry.names():
    assert registry.accepts(name, 'dtype'), name
    assert not {'parent', 'name'} & registry.fields(name)


def test_partial_presets_are_defaults_that_can_be_overridden():
  assert registry.build('resnet_tiny', num_classes=2).stem == 'small'
  assert registry.build('resnet_tiny', num_classes=2, stem='imagenet').stem == 'imagenet'
  assert registry.build('gpt2_small').max_len == 1024


def test_unknown_argument_lists_the_accepted_ones():
  with pytest.raises(registry.UnknownArgumentError, match="no argument 'remat'.*num_classes") as e:
    registry.build('lenet5', num_classes=2, remat=True)
  assert isinstance(e.value, TypeError)
  assert (e.value.name, e.value.arg) == ('lenet5', 'remat')
  assert e.value.accepted == registry.fields('lenet5')


def test_unknown_name_and_missing_argument():
  with pytest.raises(KeyError, match='unknown model .resnet9.*lenet5'):
    registry.build('resnet9')
  with pytest.raises(KeyError, match='unknown model'):
    registry.fields('resnet9')
  with pytest.raises(TypeError, match="'lenet5' needs num_classes"):
    registry.build('lenet5')


def test_register_checks_its_argument(monkeypatch):
  monkeypatch.setattr(registry, '_REGISTRY', dict(registry._REGISTRY))
  with pytest.raises(ValueError, match='registered twice'):
    registry.register('lenet5', cnn.LeNet5)
  with pytest.raises(TypeError, match='not a flax Module'):
    registry.register('f', lambda **kw: None)
  with pytest.raises(TypeError, match='unknown'):
    registry.register('g', functools.partial(cnn.LeNet5, num_class=3))
  registry.register('lenet5_tanh', functools.partial(cnn.LeNet5, activation='tanh'))
  assert registry.build('lenet5_tanh', num_classes=2).activation == 'tanh'


def test_bad_values_fail_when_built():
  with pytest.raises(ValueError, match='hidden_size=10 is not divisible by num_heads=4'):
    registry.build('vit_tiny', num_classes=2, hidden_size=10)
  with pytest.raises(ValueError, match="unknown pooling 'max'"):
    registry.build('transformer_classifier', num_classes=2, pooling='max')
  with pytest.raises(ValueError, match='unknown cell'):
    registry.build('gru_classifier', num_classes=2, cell='elman')


def test_gpt2_attention_dropout_follows_dropout_rate():
  assert transformer._attention_dropout(registry.build('gpt2_small')) == 0.1
  assert transformer._attention_dropout(registry.build('gpt2_small', dropout_rate=0.0)) == 0.0
  assert transformer._attention_dropout(registry.build('transformer_lm', vocab_size=3,
                                                       dropout_rate=0.2)) == 0.0


# ------------------------------------------------------- old checkpoints --


@pytest.mark.parametrize('name', ['lenet5', 'transformer_classifier'])
def test_checkpoint_written_before_the_rewrite_restores(name):
  spec = _fixture()['checkpoints'][name]
  with open(os.path.join(FIXTURES, spec['file']), 'rb') as f:
    blob = f.read()
  raw = flax.serialization.msgpack_restore(blob)
  model = registry.build(name, **spec['kwargs'])
  target = jax.eval_shape(model.init, jax.random.key(0), raw['x'])
  variables = flax.serialization.from_bytes({**raw, 'variables': target}, blob)['variables']
  assert _flat_shapes(variables) == _flat_shapes(target)
  np.testing.assert_allclose(model.apply(variables, raw['x']), raw['logits'],
                             rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- norms --


def _offset_relative_error(y, x64, axes, epsilon):
  """Max relative error of ``y`` against a float64 normalisation of ``x64``.

  Also returns the spacing of float32 numbers at the mean divided by the
  std: float32 cannot hold a mean near ``m`` better than half that spacing,
  so an error below it is as exact as float32 allows.
  """
  mean = x64.mean(axes, keepdims=True)
  std = np.sqrt(((x64 - mean) ** 2).mean(axes, keepdims=True))
  ref = (x64 - mean) / np.sqrt(std**2 + epsilon)
  floor = np.spacing(np.abs(mean).max().astype(np.float32)) / std.min()
  return np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max(), floor


def test_transformer_layer_norm_is_exact_on_offset_inputs():
  x = (1000 + np.random.default_rng(0).normal(size=(2, 5, 64))).astype(np.float32)
  block = transformer.TransformerBlock(num_heads=2, mlp_dim=8)
  variables = block.init(jax.random.key(0), x)
  _, state = block.apply(variables, x, capture_intermediates=lambda m, _: m.name == 'ln_attn')
  y = state['intermediates']['ln_attn']['__call__'][0]
  error, floor = _offset_relative_error(y, x.astype(np.float64), -1, 1e-6)
  assert error < floor < 1e-4  # 3e-5: half the float32 spacing at 1000
  fast = nn.LayerNorm(epsilon=1e-6)  # flax's one-pass E[x^2] - E[x]^2: off by 0.1
  y_fast = fast.apply(fast.init(jax.random.key(0), x), x)
  assert _offset_relative_error(y_fast, x.astype(np.float64), -1, 1e-6)[0] > 1e-2


def _tiny_vgg_bn(num_classes):
  from dlresearch.models import vgg  # pylint: disable=g-import-not-at-top
  return vgg.VGG(num_classes=num_classes, layers=(8, 'M', 8), batch_norm=True,
                 fc_width=8, pool_size=1)


def _tiny_mobilenet(num_classes):
  from dlresearch.models import mobilenet  # pylint: disable=g-import-not-at-top
  return mobilenet.MobileNetV2(num_classes=num_classes, width_mult=0.25)


# (model, its first conv, the BatchNorm right after it).
_FIRST_BATCH_NORMS = {
    'resnet': (lambda n: registry.build('resnet_tiny', num_classes=n),
               'stem_conv', 'stem_bn'),
    'mobilenet_v2': (_tiny_mobilenet, 'stem_conv', 'stem_bn'),
    'vgg_bn': (_tiny_vgg_bn, 'conv1', 'bn1'),
}


@pytest.mark.parametrize('name', sorted(_FIRST_BATCH_NORMS))
def test_batch_norm_is_exact_on_offset_inputs(name):
  build, conv_name, bn_name = _FIRST_BATCH_NORMS[name]
  rng = np.random.default_rng(1)
  images = (1000 + rng.normal(size=(4, 8, 8, 3))).astype(np.float32)
  model = build(3)
  variables = jax.jit(model.init)(jax.random.key(0), images)  # eager: op by op
  # Only the centre tap of the first conv: its output keeps the offset (about
  # 1000 with std about 0.6, no border effects) for the BatchNorm to normalise.
  shape = variables['params'][conv_name]['kernel'].shape
  kernel = np.zeros(shape, np.float32)
  kernel[1, 1] = rng.uniform(0.5, 1.5, shape[2:]) / 3
  variables['params'][conv_name]['kernel'] = jnp.asarray(kernel)
  _, state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats', 'intermediates'],
      capture_intermediates=lambda m, _: m.name in (conv_name, bn_name),
      rngs={'dropout': jax.random.key(1)}))(variables, images)
  conv = np.asarray(state['intermediates'][conv_name]['__call__'][0], np.float64)
  y = state['intermediates'][bn_name]['__call__'][0]
  error, floor = _offset_relative_error(y, conv, (0, 1, 2), 1e-5)
  assert error < floor < 1e-3
  fast = nn.BatchNorm(use_running_average=False, epsilon=1e-5)
  conv32 = conv.astype(np.float32)
  y_fast, _ = fast.apply(fast.init(jax.random.key(0), conv32), conv32, mutable=['batch_stats'])
  assert _offset_relative_error(y_fast, conv, (0, 1, 2), 1e-5)[0] > 1e-2
