"""VGG (Simonyan & Zisserman 2015) in torchvision's layout, with and without BN.

``features``: 3x3 convs (padding 1, with bias), each followed by BN (the
``_bn`` variants) and ReLU, with 2x2/2 max-pools between stages; then an
adaptive average pool to ``pool_size x pool_size`` (7, as torchvision: the
identity on 224x224 inputs, and it copies a 1x1 map of a 32x32 input to 7x7);
then ``fc1`` 4096, ReLU, dropout, ``fc2`` 4096, ReLU, dropout, ``head``.

Names: ``conv1``.. ``convN`` (and ``bn1``.. ``bnN``), ``fc1``, ``fc2``,
``head``. ``fc1`` reads the pooled map flattened in HWC order; torchvision
flattens CHW, so ``dlresearch.weights.convert`` permutes that kernel.

Follows the classifier contract of ``registry.py``. Features: ``features``
(the pooled map, ``[B, 7, 7, C]``), ``fc1``/``fc2`` after ReLU (before
dropout), ``pre_logits`` = ``fc2`` after dropout.

Parameter counts with ``num_classes=1000`` (= torchvision's, tested):

========  ===========
vgg11     132,863,336
vgg11_bn  132,868,840
vgg16     138,357,544
vgg16_bn  138,365,992
========  ===========
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlresearch.models import registry

Array = jax.Array

# Conv widths, 'M' = 2x2/2 max-pool (torchvision's configurations A and D).
VGG11_LAYERS = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M')
VGG16_LAYERS = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512,
                'M', 512, 512, 512, 'M')


def _pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """``[out, in]`` averaging weights of torch's adaptive average pooling."""
  m = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = -(-((i + 1) * size_in) // size_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """torch's ``adaptive_avg_pool2d(x, size)`` for NHWC ``x``."""
  h, w = x.shape[1:3]
  if (h, w) == (size, size):
    return x
  ph = jnp.asarray(_pool_matrix(h, size), x.dtype)
  pw = jnp.asarray(_pool_matrix(w, size), x.dtype)
  return jnp.einsum('ih,jw,bhwc->bijc', ph, pw, x)


class VGG(nn.Module):
  """VGG classifier; ``layers`` gives conv widths and ``'M'`` pools."""

  num_classes: int
  layers: Sequence[int | str] = VGG16_LAYERS
  batch_norm: bool = False
  fc_width: int = 4096
  pool_size: int = 7
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x: Array, train: bool = False, return_features: bool = False
  ) -> Array | tuple[Array, dict[str, Array]]:
    # torchvision's initialisation: kaiming (fan_out) convs, N(0, 0.01) Dense.
    conv = functools.partial(
        nn.Conv, kernel_size=(3, 3), padding=1, dtype=self.dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))
    dense = functools.partial(
        nn.Dense, dtype=self.dtype,
        kernel_init=nn.initializers.normal(stddev=0.01))
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9,
        epsilon=1e-5, dtype=self.dtype,
        use_fast_variance=False)  # E[(x - mean)^2]: exact for offset inputs
    drop = functools.partial(
        nn.Dropout, self.dropout_rate, deterministic=not train)
    feats = {}
    x = jnp.asarray(x, self.dtype)
    k = 0
    for layer in self.layers:
      if layer == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      k += 1
      x = conv(int(layer), name=f'conv{k}')(x)
      if self.batch_norm:
        x = norm(name=f'bn{k}')(x)
      x = nn.relu(x)
    x = feats['features'] = adaptive_avg_pool(x, self.pool_size)
    x = x.reshape(x.shape[0], -1)
    x = feats['fc1'] = nn.relu(dense(self.fc_width, name='fc1')(x))
    x = drop()(x)
    x = feats['fc2'] = nn.relu(dense(self.fc_width, name='fc2')(x))
    x = feats['pre_logits'] = drop()(x)
    logits = dense(self.num_classes, name='head')(x)
    return (logits, feats) if return_features else logits


VGG11 = functools.partial(VGG, layers=VGG11_LAYERS, batch_norm=False)
VGG11BN = functools.partial(VGG, layers=VGG11_LAYERS, batch_norm=True)
VGG16 = functools.partial(VGG, layers=VGG16_LAYERS, batch_norm=False)
VGG16BN = functools.partial(VGG, layers=VGG16_LAYERS, batch_norm=True)

registry.register('vgg11', VGG11)
registry.register('vgg11_bn', VGG11BN)
registry.register('vgg16', VGG16)
registry.register('vgg16_bn', VGG16BN)
