"""Tests for dlresearch.rai.explain on tiny models with known answers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from dlresearch.rai import explain
from dlresearch.models import cnn
from dlresearch.models import transformer


class TinyCNN(nn.Module):
  """conv 4@3x3, relu, conv 4@3x3 ('feat'), relu, global mean, dense."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name='conv1')(x))
    x = nn.relu(nn.Conv(4, (3, 3), name='feat')(x))
    return nn.Dense(3, name='head')(jnp.mean(x, axis=(1, 2)))


def _images(seed, shape=(2, 8, 8, 1)):
  return jax.random.uniform(jax.random.key(seed), shape)


def test_saliency_of_linear_model_is_its_weights():
  w = jnp.arange(12.0).reshape(3, 4) - 5.0
  fn = lambda x: jnp.einsum('bij,ij->b', x, w) + 1.0
  x = jax.random.normal(jax.random.key(0), (5, 3, 4))
  grads = explain.saliency(fn, x)
  np.testing.assert_allclose(grads, jnp.broadcast_to(w, x.shape), rtol=1e-6)


def test_saliency_accepts_partial_with_traced_variables():
  model = TinyCNN()
  x = _images(1)
  variables = model.init(jax.random.key(0), x)
  f = lambda v, z: model.apply(v, z)[:, 1]
  closed = explain.saliency(lambda z: f(variables, z), x)
  traced = explain.saliency(jax.tree_util.Partial(f, variables), x)
  np.testing.assert_allclose(closed, traced, rtol=1e-5, atol=1e-7)
  # Finite difference on one pixel.
  eps = 1e-2
  bump = jnp.zeros_like(x).at[0, 3, 4, 0].set(eps)
  fd = (f(variables, x + bump) - f(variables, x - bump))[0] / (2 * eps)
  assert float(closed[0, 3, 4, 0]) == pytest.approx(float(fd), rel=1e-2,
                                                    abs=1e-5)


def test_integrated_gradients_completeness_on_small_cnn():
  model = TinyCNN()
  x = _images(2, (3, 8, 8, 1))
  variables = model.init(jax.random.key(1), x)
  fn = jax.tree_util.Partial(lambda v, z: model.apply(v, z)[:, 0], variables)
  change = np.abs(np.asarray(fn(x) - fn(jnp.zeros_like(x))))
  assert change.min() > 1e-3
  for method in ('trapezoid', 'midpoint'):
    attr, gap = explain.integrated_gradients(fn, x, steps=128, method=method)
    assert attr.shape == x.shape
    np.testing.assert_array_less(np.asarray(gap), 0.01 * change)
  # A direct sum check of the returned gap.
  total = np.asarray(attr).reshape(3, -1).sum(1)
  np.testing.assert_allclose(np.abs(total - np.asarray(fn(x) - fn(0 * x))),
                             gap, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_is_exact_for_linear_model():
  w = jnp.array([1.0, -2.0, 3.0])
  fn = lambda x: x @ w
  x = jnp.array([[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]])
  attr, gap = explain.integrated_gradients(fn, x, baseline=jnp.ones(3),
                                           steps=2)
  np.testing.assert_allclose(attr, (x - 1.0) * w, atol=1e-6)
  np.testing.assert_allclose(gap, 0.0, atol=1e-5)


def test_smoothgrad_reproducible_by_rng():
  fn = lambda x: jnp.sum(jnp.sin(x) ** 2, axis=1)
  x = jax.random.normal(jax.random.key(3), (4, 6))
  a = explain.smoothgrad(fn, x, rng=jax.random.key(7), num_samples=8)
  b = explain.smoothgrad(fn, x, rng=jax.random.key(7), num_samples=8)
  c = explain.smoothgrad(fn, x, rng=jax.random.key(8), num_samples=8)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # With no noise it is the plain gradient.
  d = explain.smoothgrad(fn, x, rng=jax.random.key(7), num_samples=2,
                         sigma=0.0)
  np.testing.assert_allclose(d, explain.saliency(fn, x), rtol=1e-6)


def _planted_cnn():
  """A CNN whose class 1 logit is the mean brightness after a 3x3 blur."""
  model = TinyCNN()
  x = jnp.zeros((1, 12, 12, 1))
  variables = model.init(jax.random.key(0), x)
  params = jax.tree.map(jnp.zeros_like, variables['params'])
  params['conv1']['kernel'] = jnp.ones((3, 3, 1, 4)) / 9.0
  params['feat']['kernel'] = jnp.zeros((3, 3, 4, 4)).at[1, 1].set(
      jnp.eye(4))
  params['head']['kernel'] = jnp.zeros((4, 3)).at[:, 1].set(1.0)
  return model, {'params': params}


def test_grad_cam_highlights_planted_square():
  model, variables = _planted_cnn()
  x = 0.05 * jax.random.uniform(jax.random.key(5), (2, 12, 12, 1))
  x = x.at[0, 2:5, 6:9].set(1.0).at[1, 7:10, 1:4].set(1.0)
  cam = explain.grad_cam(model, variables, x, layer='feat', target=1)
  assert cam.shape == (2, 12, 12)
  assert float(cam.max()) == pytest.approx(1.0)
  for b, (rows, cols) in enumerate([(range(2, 5), range(6, 9)),
                                    (range(7, 10), range(1, 4))]):
    r, c = np.unravel_index(np.argmax(cam[b]), (12, 12))
    assert r in rows and c in cols, (b, r, c)


def test_grad_cam_on_resnet_equals_class_activation_map():
  # Last stage -> global mean -> dense: Grad-CAM is the CAM of Zhou et al.,
  # relu(A @ W[:, c]) / (h * w), which checks both the hooked tensor and its
  # gradient.
  model = cnn.ResNetTiny(num_classes=3, width=4, stem='small',
                         zero_init_residual=False)
  x = _images(4, (2, 8, 8, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  assert 'stage2_block1' in explain.module_paths(model, variables, x)
  _, feats = jax.jit(model.apply, static_argnames='return_features')(
      variables, x, return_features=True)
  kernel = variables['params']['head']['kernel']
  target = jnp.array([0, 2])
  cam = explain.grad_cam(model, variables, x, layer='stage2_block1',
                         target=target, resize=False, normalize=False)
  acts = feats['stage2']
  expected = jax.nn.relu(jnp.einsum('bhwk,kb->bhw', acts, kernel[:, target])
                         / (acts.shape[1] * acts.shape[2]))
  np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-6)
  full = explain.grad_cam(model, variables, x, layer='stage2_block1',
                          target=target)
  assert full.shape == (2, 8, 8)


def test_grad_cam_lenet5_and_unknown_layer():
  model = cnn.LeNet5(num_classes=4)
  x = _images(6, (2, 8, 8, 1))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  cam = explain.grad_cam(model, variables, x, layer='conv2')
  assert cam.shape == (2, 8, 8)
  assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0 + 1e-6
  with pytest.raises(ValueError, match='no submodule at path'):
    explain.grad_cam(model, variables, x, layer='conv9')
  with pytest.raises(ValueError, match='feature map'):
    explain.grad_cam(model, variables, x, layer='fc1')


def test_attention_rollout():
  eye = jnp.broadcast_to(jnp.eye(5), (2, 3, 5, 5))
  np.testing.assert_allclose(explain.attention_rollout([eye, eye, eye]),
                             jnp.broadcast_to(jnp.eye(5), (2, 5, 5)))
  # Random attention: the rollout is the product of the mixed matrices.
  logits = jax.random.normal(jax.random.key(0), (2, 1, 2, 4, 4))
  layers = list(jax.nn.softmax(logits, -1))
  out = explain.attention_rollout(layers)
  mixed = [0.5 * np.mean(a, 1) + 0.5 * np.eye(4) for a in layers]
  np.testing.assert_allclose(out, mixed[1] @ mixed[0], rtol=1e-5)
  np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_attention_rollout_of_transformer_classifier():
  model = transformer.TransformerClassifier(
      num_classes=2, vocab_size=20, num_layers=2, d_model=16, num_heads=2,
      mlp_dim=32, max_len=8, pooling='cls')
  tokens = jnp.array([[3, 4, 5, 6], [7, 8, 9, 1]])
  variables = jax.jit(model.init)(jax.random.key(0), tokens)
  _, feats = jax.jit(model.apply, static_argnames=(
      'return_features', 'return_attention'))(
          variables, tokens, return_features=True, return_attention=True)
  rollout = explain.attention_rollout(feats['attention_weights'])
  assert rollout.shape == (2, 5, 5)
  np.testing.assert_allclose(rollout.sum(-1), 1.0, rtol=1e-5)


def test_token_attributions_completeness_and_mask():
  model = transformer.TransformerClassifier(
      num_classes=2, vocab_size=20, num_layers=1, d_model=16, num_heads=2,
      mlp_dim=32, max_len=8)
  tokens = jnp.array([[3, 4, 5, 6], [7, 8, 9, 0]])
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
  variables = jax.jit(model.init)(jax.random.key(1), tokens)
  scores, gap = explain.token_attributions(model, variables, tokens,
                                           target=1, steps=64, mask=mask)
  assert scores.shape == (2, 4)
  assert float(scores[1, 3]) == 0.0  # padding cannot matter
  assert float(jnp.abs(scores).sum()) > 0
  np.testing.assert_array_less(np.asarray(gap), 1e-3 + 0.01 * np.abs(
      np.asarray(scores).sum(1)))


def test_overlay_png_and_tokens_html(tmp_path):
  image = np.linspace(0, 1, 64).reshape(8, 8)
  heat = np.zeros((4, 4))
  heat[1, 2] = 1.0
  explain.overlay_png(image, heat, tmp_path / 'o.png', scale=4)
  with Image.open(tmp_path / 'o.png') as im:
    assert im.size == (32, 32) and im.mode == 'RGB'
    pixels = np.asarray(im, np.float64)
  # The hot cell is red-ish (jet's top), a cold corner is blue-ish.
  assert pixels[10, 20, 0] > pixels[10, 20, 2]
  assert pixels[30, 1, 2] > pixels[30, 1, 0]
  text = explain.tokens_html(['good', '<b>', 'film'], [0.5, 0.0, -1.0],
                             tmp_path / 't.html')
  assert (tmp_path / 't.html').read_text() == text
  assert '&lt;b&gt;' in text and 'rgba(0,0,255,1.000)' in text
  assert 'rgba(255,0,0,0.500)' in text
