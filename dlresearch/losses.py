"""Per-example losses. Each returns an array of shape [batch] (or [batch, T])."""

import jax
import jax.numpy as jnp
import optax


def softmax_xent(logits: jax.Array, labels: jax.Array,
                 label_smoothing: float = 0.0) -> jax.Array:
  """Softmax cross-entropy with integer labels and optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def sigmoid_xent(logits: jax.Array, labels: jax.Array,
                 label_smoothing: float = 0.0) -> jax.Array:
  """Sigmoid binary cross-entropy, summed over classes.

  ``labels`` are integer class ids (one-hot targets) or multi-hot floats with
  the logits' shape.
  """
  if labels.ndim == logits.ndim - 1:
    labels = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  labels = labels.astype(jnp.float32)
  if label_smoothing:
    labels = labels * (1 - label_smoothing) + 0.5 * label_smoothing
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                            labels).sum(-1)


def mse(predictions: jax.Array, targets: jax.Array,
        label_smoothing: float = 0.0) -> jax.Array:
  """Mean squared error per example (mean over the non-batch axes).

  Integer ``targets`` with one fewer axis are one-hot encoded first, so MSE
  also works as a classification loss.
  """
  del label_smoothing
  if targets.ndim == predictions.ndim - 1 and jnp.issubdtype(targets.dtype, jnp.integer):
    targets = jax.nn.one_hot(targets, predictions.shape[-1])
  err = (predictions.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2
  return err.reshape(err.shape[0], -1).mean(-1)


LOSSES = {'softmax_xent': softmax_xent, 'sigmoid_xent': sigmoid_xent, 'mse': mse}
