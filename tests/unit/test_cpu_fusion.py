"""dlresearch.models.cpu_fusion: ``materialize`` is the identity forward and
backward, survives XLA, and leaves the transformer's and the ResNet's
gradients unchanged; on for one CPU device only.

Checked against the code path it replaces (values and gradients), not timed:
timings live in benchmarks/ and docs/speed.md.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dlresearch.models import cnn, cpu_fusion, transformer


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
  variables = jax.jit(model.init)(jax.random.key(0), inputs)  # eager: op by op

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
