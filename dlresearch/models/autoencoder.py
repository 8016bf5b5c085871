"""Autoencoders for anomaly detection by reconstruction error.

Contract::

    reconstruction = model.apply(variables, x, train=False)
    reconstruction, feats = model.apply(variables, x, return_features=True)

The reconstruction has the shape of ``x``; ``feats['latent']`` is the code.
The output layer is linear (inputs are expected standardised, or in [0, 1]
for images, scored by squared error; see ``dlresearch.apps.anomaly.metrics``).
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlresearch.models import registry
from dlresearch.models.mlp import get_activation

Array = jax.Array


class MLPAutoencoder(nn.Module):
  """Dense encoder ``features -> latent`` and the mirrored decoder.

  Any input shape is flattened to ``[batch, d]`` and the output reshaped
  back. Layers: ``encoder_i``, ``latent``, ``decoder_i``, ``output``.
  """

  features: Sequence[int] = (64, 32)
  latent: int = 8
  activation: str = 'relu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               return_features: bool = False):
    del train  # No dropout or batch norm.
    act = get_activation(self.activation)
    shape = x.shape
    h = jnp.asarray(x, self.dtype).reshape(shape[0], -1)
    for i, width in enumerate(self.features):
      h = act(nn.Dense(width, dtype=self.dtype, name=f'encoder_{i}')(h))
    z = nn.Dense(self.latent, dtype=self.dtype, name='latent')(h)
    h = z
    for i, width in enumerate(reversed(self.features)):
      h = act(nn.Dense(width, dtype=self.dtype, name=f'decoder_{i}')(h))
    out = nn.Dense(math.prod(shape[1:]), dtype=self.dtype,
                   name='output')(h).reshape(shape)
    return (out, {'latent': z}) if return_features else out


class ConvAutoencoder(nn.Module):
  """Strided-conv encoder to a dense code, transposed-conv decoder.

  For small images ``[batch, H, W, C]`` with ``H`` and ``W`` divisible by
  ``2 ** len(features)``. Each encoder stage is a 3x3 stride-2 conv
  (``encoder_i``); the code is ``latent``-dimensional; the decoder mirrors
  it with stride-2 transposed convs (``decoder_i``) and a 3x3 conv to ``C``
  channels (``output``).
  """

  features: Sequence[int] = (16, 32)
  latent: int = 32
  activation: str = 'relu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               return_features: bool = False):
    del train
    act = get_activation(self.activation)
    b, height, width, channels = x.shape
    scale = 2 ** len(self.features)
    if height % scale or width % scale:
      raise ValueError(f'image size {height}x{width} is not divisible by '
                       f'{scale} (2 ** number of stages)')
    h = jnp.asarray(x, self.dtype)
    for i, feat in enumerate(self.features):
      h = act(nn.Conv(feat, (3, 3), strides=(2, 2), dtype=self.dtype,
                      name=f'encoder_{i}')(h))
    inner = h.shape[1:]
    z = nn.Dense(self.latent, dtype=self.dtype, name='latent')(
        h.reshape(b, -1))
    h = act(nn.Dense(inner[0] * inner[1] * inner[2], dtype=self.dtype,
                     name='expand')(z)).reshape(b, *inner)
    for i, feat in enumerate(reversed(self.features)):
      h = act(nn.ConvTranspose(feat, (3, 3), strides=(2, 2), dtype=self.dtype,
                               name=f'decoder_{i}')(h))
    out = nn.Conv(channels, (3, 3), dtype=self.dtype, name='output')(h)
    return (out, {'latent': z}) if return_features else out


registry.register('mlp_autoencoder', MLPAutoencoder)
registry.register('conv_autoencoder', ConvAutoencoder)
