"""Metrics as masked sums, so they aggregate exactly over uneven batches.

A step returns sums (``loss``, ``accuracy``, ...) and ``count``; sums add up
across batches, devices and hosts; ``finalize`` divides once at the end.
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def classification_sums(logits: jax.Array, labels: jax.Array,
                        per_example_loss: jax.Array,
                        mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """Loss, top-1 and (for more than 5 classes) top-5 correct counts."""
  if mask is None:
    mask = jnp.ones(labels.shape[0], jnp.float32)
  mask = mask.astype(jnp.float32)
  out = {
      'loss': jnp.sum(per_example_loss * mask),
      'accuracy': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      'count': jnp.sum(mask),
  }
  if logits.shape[-1] > 5:
    top5 = jax.lax.top_k(logits, 5)[1]
    out['top5_accuracy'] = jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask)
  return out


def add(a: Mapping[str, jax.Array] | None, b: Mapping[str, jax.Array]):
  """Adds two sum dicts (``a`` may be None for the first batch)."""
  if a is None:
    return dict(b)
  return {k: a[k] + b[k] for k in b}


def finalize(sums: Mapping[str, jax.Array]) -> dict[str, float]:
  """Divides every sum by ``count`` (a float per metric, full precision)."""
  sums = {k: float(np.asarray(v, np.float64)) for k, v in jax.device_get(sums).items()}
  count = sums.pop('count')
  if count <= 0:
    raise ValueError('no examples were evaluated (count is 0)')
  return {k: v / count for k, v in sums.items()}
