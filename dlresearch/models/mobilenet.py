"""MobileNetV2 (Sandler et al. 2018) in torchvision's layout.

A 3x3/2 conv stem (32), 17 inverted-residual blocks (1x1 expand by ``t``
except in the first block, 3x3 depthwise with the stride, linear 1x1
project; a residual add when stride is 1 and widths match), a 1x1 conv to
1280, global average pool, dropout 0.2 and ``head``. Convs have no bias and
are followed by BN (eps 1e-5) and ReLU6 (none after the projection).

Names: ``stem_conv``/``stem_bn``, ``block1``.. ``block17`` (holding
``expand_conv``/``expand_bn`` except block1, ``dw_conv``/``dw_bn``,
``project_conv``/``project_bn``), ``final_conv``/``final_bn``, ``head``.
torchvision's names are ``features.0``, ``features.1``..``17`` and
``features.18``, ``classifier.1`` (see ``dlresearch.weights.convert``).

Follows the classifier contract of ``registry.py``. Features: ``stem``,
``block1``..``block17`` (block outputs), ``final`` (after ``final_bn`` and
ReLU6), ``pre_logits`` (the pooled vector, before dropout).

``mobilenet_v2`` with ``num_classes=1000`` has 3,504,872 parameters, as
torchvision's ``mobilenet_v2`` (tested with ``jax.eval_shape``).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlresearch.models import registry

Array = jax.Array

# (expansion t, output width c, repeats n, first stride s), as in the paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds a width to a multiple of ``divisor``, losing at most 10%."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new < 0.9 * value:
    new += divisor
  return new


class InvertedResidual(nn.Module):
  """1x1 expand (if ``expansion != 1``), 3x3 depthwise, linear 1x1 project."""

  features: int
  expansion: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    hidden = int(round(in_features * self.expansion))
    y = x
    if self.expansion != 1:
      y = self.conv(hidden, (1, 1), name='expand_conv')(y)
      y = nn.relu6(self.norm(name='expand_bn')(y))
    y = self.conv(hidden, (3, 3), self.strides, padding=1,
                  feature_group_count=hidden, name='dw_conv')(y)
    y = nn.relu6(self.norm(name='dw_bn')(y))
    y = self.conv(self.features, (1, 1), name='project_conv')(y)
    y = self.norm(name='project_bn')(y)
    if self.strides == 1 and in_features == self.features:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 image classifier; NHWC inputs, normalised as for ImageNet."""

  num_classes: int
  width_mult: float = 1.0
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x: Array, train: bool = False, return_features: bool = False
  ) -> Array | tuple[Array, dict[str, Array]]:
    conv = functools.partial(
        nn.Conv, use_bias=False, padding=0, dtype=self.dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9,
        epsilon=1e-5, dtype=self.dtype,
        use_fast_variance=False)  # E[(x - mean)^2]: exact for offset inputs
    feats = {}
    x = jnp.asarray(x, self.dtype)
    width = make_divisible(32 * self.width_mult)
    x = conv(width, (3, 3), 2, padding=1, name='stem_conv')(x)
    x = feats['stem'] = nn.relu6(norm(name='stem_bn')(x))
    k = 0
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
      for i in range(n):
        k += 1
        x = feats[f'block{k}'] = InvertedResidual(
            features=make_divisible(c * self.width_mult), expansion=t,
            strides=s if i == 0 else 1, conv=conv, norm=norm,
            name=f'block{k}')(x)
    last = make_divisible(1280 * max(1.0, self.width_mult))
    x = conv(last, (1, 1), name='final_conv')(x)
    x = feats['final'] = nn.relu6(norm(name='final_bn')(x))
    x = feats['pre_logits'] = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      kernel_init=nn.initializers.normal(stddev=0.01),
                      name='head')(x)
    return (logits, feats) if return_features else logits


registry.register('mobilenet_v2', MobileNetV2)
