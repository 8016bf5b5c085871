"""dlresearch.tasks: losses against finite differences and NumPy, the
classification metric sums, and label smoothing only in training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch import tasks


def _finite_difference_check(fn, x, eps=1e-3, tol=2e-3):
  """Compares jax.grad(fn) with central differences in float64."""
  x = np.asarray(x, np.float64)
  grad = np.asarray(jax.grad(lambda v: fn(v))(jnp.asarray(x, jnp.float32)))
  numeric = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = eps
    numeric[i] = (float(fn(jnp.asarray(x + d, jnp.float32))) -
                  float(fn(jnp.asarray(x - d, jnp.float32)))) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=tol, rtol=tol)


@pytest.mark.parametrize('name,smoothing', [
    ('softmax_xent', 0.0), ('softmax_xent', 0.1), ('sigmoid_xent', 0.0),
    ('sigmoid_xent', 0.2), ('mse', 0.0)])
def test_loss_gradients_match_finite_differences(name, smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5))
  labels = jnp.array([0, 3, 4])
  fn = lambda z: tasks.LOSSES[name](z, labels, smoothing).sum()
  _finite_difference_check(fn, logits)


def test_loss_values_against_numpy():
  z = np.array([[2.0, -1.0, 0.5]])
  p = np.exp(z) / np.exp(z).sum()
  ls = 0.3
  target = np.array([[0, 1, 0]]) * (1 - ls) + ls / 3
  np.testing.assert_allclose(tasks.softmax_xent(z, jnp.array([1]), ls),
                             -(target * np.log(p)).sum(-1), rtol=1e-5)
  sig = 1 / (1 + np.exp(-z))
  onehot = np.array([[0, 1, 0]])
  np.testing.assert_allclose(
      tasks.sigmoid_xent(z, jnp.array([1])),
      -(onehot * np.log(sig) + (1 - onehot) * np.log(1 - sig)).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(tasks.mse(z, jnp.array([1])),
                             ((z - onehot) ** 2).mean(-1), rtol=1e-6)


def test_classification_sums_mask_and_top5():
  logits = jnp.array([[9., 1, 2, 3, 4, 5, 6], [0., 9, 1, 2, 3, 4, 5],
                      [0., 1, 2, 3, 4, 5, 9]])
  labels = jnp.array([0, 0, 1])
  per = jnp.array([1.0, 2.0, 4.0])
  sums = tasks.classification_sums(logits, labels, per, jnp.array([1., 1., 0.]))
  out = tasks.finalize_sums(sums)
  assert out == {'loss': 1.5, 'accuracy': 0.5, 'top5_accuracy': 0.5}
  assert 'top5_accuracy' not in tasks.classification_sums(
      logits[:, :5], labels, per)


class _FixedLogits:
  """A stand-in model whose logits are given."""

  def __init__(self, logits):
    self.logits = logits

  def apply(self, variables, inputs, train=False, rngs=None):
    del variables, inputs, train, rngs
    return self.logits


def test_label_smoothing_only_in_training():
  logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]], np.float32))
  batch = {'inputs': np.zeros((1, 2), np.int32),
           'targets': np.array([[0, 2]], np.int32)}
  task = tasks.LanguageModel(label_smoothing=0.1)
  model = _FixedLogits(logits)
  nll = -(np.log(0.7) + np.log(0.8))
  eval_sums, _ = task(model, {'params': {}}, batch, train=False)
  train_sums, _ = task(model, {'params': {}}, batch, train=True)
  assert float(eval_sums['loss']) == pytest.approx(nll, rel=1e-5)
  assert float(train_sums['loss']) > nll + 0.01
