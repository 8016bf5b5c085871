"""The autoencoder's task: reconstruct the input (``tasks.Task`` protocol)."""

import dataclasses

import jax.numpy as jnp

from dlresearch import tasks


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  """An autoencoder: ``x -> reconstruction``; the loss is the per-example MSE.

  Eval lines carry ``loss``, the mean reconstruction error over the eval
  split (normal and anomalous examples alike); the anomaly scores and their
  metrics come from an eval hook (``evaluators.anomaly_hook``).
  """

  input_key: str = 'x'

  def model_inputs(self, batch):
    return (batch[self.input_key],), {}

  def __call__(self, model, variables, batch, *, train, rng=None):
    x = batch[self.input_key]
    recon, model_state = tasks.apply_model(model, variables, (x,), {},
                                           train=train, rng=rng)
    mask = tasks.valid_mask(batch, x.shape[0])
    return {'loss': jnp.sum(tasks.mse(recon, x) * mask),
            'count': jnp.sum(mask)}, model_state

  def finalize(self, m):
    return m
