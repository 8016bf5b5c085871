"""Convolutional image classifiers: LeNet-5, AlexNet and ResNet (v1.5).

Inputs are NHWC float arrays, already normalised. Every model follows the
classifier contract of ``registry.py``: ``apply(variables, x, train=False,
return_features=False)`` gives logits ``[batch, num_classes]``, or
``(logits, feats)`` with ``feats['pre_logits']`` the vector the head sees.
Logits come out in the computation ``dtype``; parameters stay float32.

Parameter counts with ``num_classes=1000`` on 224x224x3 inputs (checked in
``tests/unit/test_models_cnn.py``):

==========  ===========
alexnet      60,965,224  (groups=2, as in the 2012 paper; groups=1: 62,378,344)
resnet18     11,689,512
resnet34     21,797,672
resnet50     25,557,032
resnet101    44,549,160
resnet152    60,192,808
==========  ===========

The ResNet numbers equal torchvision's, whose layout (symmetric padding,
stride on the 3x3 conv) these models follow. Dense layers after a flatten
read the feature map in HWC order (torch flattens CHW), so a weight converter
must permute those kernels.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from dlresearch.models import cpu_fusion, registry
from dlresearch.models.mlp import get_activation

Array = jax.Array
ModuleDef = Any

def max_pool(x: Array, window_shape: Sequence[int],
             strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = 'VALID') -> Array:
  """``nn.max_pool`` with a fast path for non-overlapping windows.

  When ``strides == window_shape`` and ``padding='VALID'`` (LeNet's 2x2/2),
  each window becomes its own axes of a reshape and the max is a reduction:
  on XLA:CPU flax's ``reduce_window`` backward is a scatter (60 ms of a
  128-example LeNet step, against 18 ms here). Values equal ``nn.max_pool``
  exactly; the gradient goes, as flax's does, to one element per window: the
  first maximum in row-major window order (ties included). Other windows,
  strides and paddings go to ``nn.max_pool``. Inputs are ``[..., H, W, C]``
  (any number of spatial dims, one batch dim or more in front).
  """
  window = tuple(window_shape)
  strides = window if strides is None else tuple(strides)
  if strides != window or padding != 'VALID' or x.ndim < len(window) + 2:
    return nn.max_pool(x, window, strides, padding)
  nd = len(window)
  lead = x.ndim - nd - 1
  outs = [x.shape[lead + i] // k for i, k in enumerate(window)]
  x = x[(slice(None),) * lead + tuple(slice(0, o * k) for o, k in zip(outs, window))]
  split = []
  for o, k in zip(outs, window):
    split += [o, k]
  x = x.reshape(*x.shape[:lead], *split, x.shape[-1])
  axes = tuple(lead + 2 * i + 1 for i in range(nd))  # the in-window axes
  big = jax.lax.stop_gradient(jnp.max(x, axis=axes, keepdims=True))
  # Row-major position inside the window, broadcast over the reshaped input.
  pos = sum(
      lax.broadcasted_iota(jnp.int32, [1] * lead + _axis_shape(nd, i, k) + [1],
                           lead + 2 * i + 1) * int(np.prod(window[i + 1:]))
      for i, k in enumerate(window))
  first = jnp.min(jnp.where(x == big, pos, np.prod(window)), axis=axes,
                  keepdims=True)
  return jnp.sum(jnp.where(pos == first, x, jnp.zeros((), x.dtype)), axis=axes)


def _axis_shape(nd: int, i: int, k: int) -> list[int]:
  """``[1, 1, ..., 1, k, ...]``: the reshaped window axes, ``k`` at window dim ``i``."""
  return [k if (j == 2 * i + 1) else 1 for j in range(2 * nd)]


_POOLS: dict[str, Callable[..., Array]] = {
    'max': max_pool,
    'avg': nn.avg_pool,
}


def _get_pool(name: str) -> Callable[..., Array]:
  if name not in _POOLS:
    raise ValueError(
        f'unknown pooling {name!r}; choose one of: {", ".join(_POOLS)}'
    )
  return _POOLS[name]


def _features_out(
    logits: Array, feats: dict[str, Array], return_features: bool
) -> Array | tuple[Array, dict[str, Array]]:
  return (logits, feats) if return_features else logits


# ----------------------------------------------------------------- LeNet-5 --


class LeNet5(nn.Module):
  """LeNet-5 (LeCun et al. 1998) with full connectivity and a Dense head.

  conv 6@5x5, pool 2x2, conv 16@5x5, pool 2x2, fc 120, fc 84, head. The
  default ``padding='SAME'`` keeps 8x8 and 28x28 inputs usable;
  ``activation='tanh', pooling='avg', padding='VALID'`` on 32x32 inputs gives
  the 1998 layer shapes (that net also had a sparse C3 connection table,
  trainable subsampling and an RBF output layer, none of which are here).

  Features: ``conv1``/``conv2`` are conv + bias + activation (before
  pooling); ``fc1``/``fc2`` are after their activation; ``pre_logits`` is
  ``fc2``.
  """

  num_classes: int
  activation: str = 'relu'
  pooling: str = 'max'
  padding: str = 'SAME'
  dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)
    _get_pool(self.pooling)
    super().__post_init__()

  @nn.compact
  def __call__(
      self, x: Array, train: bool = False, return_features: bool = False
  ) -> Array | tuple[Array, dict[str, Array]]:
    del train  # No dropout or batch norm.
    act = get_activation(self.activation)
    pool = functools.partial(
        _get_pool(self.pooling), window_shape=(2, 2), strides=(2, 2)
    )
    conv = functools.partial(
        nn.Conv, kernel_size=(5, 5), padding=self.padding, dtype=self.dtype
    )
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    feats = {}
    x = jnp.asarray(x, self.dtype)
    x = feats['conv1'] = act(conv(6, name='conv1')(x))
    x = pool(x)
    x = feats['conv2'] = act(conv(16, name='conv2')(x))
    x = pool(x)
    x = x.reshape(x.shape[0], -1)
    x = feats['fc1'] = act(dense(120, name='fc1')(x))
    x = feats['fc2'] = act(dense(84, name='fc2')(x))
    feats['pre_logits'] = x
    logits = dense(self.num_classes, name='head')(x)
    return _features_out(logits, feats, return_features)


registry.register('lenet5', LeNet5)


# ----------------------------------------------------------------- AlexNet --


def local_response_norm(
    x: Array,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    groups: int = 1,
) -> Array:
  """Cross-channel local response normalisation (Krizhevsky et al. 2012).

  ``b_c = a_c / (k + alpha * sum_{|c'-c| <= size//2} a_{c'}^2) ** beta``, the
  paper's formula (alpha is *not* divided by ``size`` as in Caffe/torch). The
  window stays inside each of ``groups`` contiguous channel groups, as on the
  paper's two GPUs. Computed in float32; returns ``x.dtype``.
  """
  channels = x.shape[-1]
  if channels % groups:
    raise ValueError(f'{channels} channels do not split into {groups} groups')
  xf = x.astype(jnp.float32)
  sq = jnp.square(xf).reshape(*x.shape[:-1], groups, channels // groups)
  half = size // 2
  summed = lax.reduce_window(
      sq,
      0.0,
      lax.add,
      window_dimensions=(1,) * (sq.ndim - 1) + (size,),
      window_strides=(1,) * sq.ndim,
      padding=((0, 0),) * (sq.ndim - 1) + ((half, size - 1 - half),),
  )
  return (xf / (k + alpha * summed.reshape(x.shape)) ** beta).astype(x.dtype)


# conv1 (stride, padding): 'imagenet' maps 224x224 to 55x55 (as 227 VALID
# would) and ends in a 6x6 map; 'small' keeps 32x32 inputs at full size so the
# three overlapping pools still leave a 3x3 map.
_ALEXNET_STEMS = {'imagenet': (4, 2), 'small': (1, 5)}


def _check_stem(stem: str, stems: dict[str, Any]) -> None:
  if stem not in stems:
    raise ValueError(
        f'unknown stem {stem!r}; choose one of: {", ".join(stems)}'
    )


class AlexNet(nn.Module):
  """AlexNet with the layer sizes of Krizhevsky et al. 2012.

  conv1 96@11x11/4, LRN, max-pool 3x3/2; conv2 256@5x5, LRN, max-pool; conv3
  384@3x3; conv4 384@3x3; conv5 256@3x3; max-pool; fc6 4096, dropout; fc7
  4096, dropout; fc8. With ``groups=2`` conv2, conv4 and conv5 only see the
  half of their input maps on the same "GPU" (and LRN stays within a half),
  exactly the two-tower connectivity of the paper; ``groups=1`` connects all.

  Features: ``conv1``..``conv5`` after ReLU (before LRN/pooling), ``fc6`` and
  ``fc7`` after ReLU (before dropout), ``pre_logits`` = ``fc7`` after dropout.
  """

  num_classes: int
  conv_widths: Sequence[int] = (96, 256, 384, 384, 256)
  fc_width: int = 4096
  groups: int = 2
  use_lrn: bool = True
  dropout_rate: float = 0.5
  stem: str = 'imagenet'
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_stem(self.stem, _ALEXNET_STEMS)
    super().__post_init__()

  @nn.compact
  def __call__(
      self, x: Array, train: bool = False, return_features: bool = False
  ) -> Array | tuple[Array, dict[str, Array]]:
    stride, pad = _ALEXNET_STEMS[self.stem]
    w1, w2, w3, w4, w5 = self.conv_widths
    conv = functools.partial(nn.Conv, dtype=self.dtype)
    grouped = functools.partial(conv, feature_group_count=self.groups)
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))
    if self.use_lrn:
      lrn = functools.partial(local_response_norm, groups=self.groups)
    else:
      lrn = lambda y: y
    drop = functools.partial(
        nn.Dropout, self.dropout_rate, deterministic=not train
    )
    feats = {}

    x = jnp.asarray(x, self.dtype)
    x = conv(w1, (11, 11), stride, padding=pad, name='conv1')(x)
    x = feats['conv1'] = nn.relu(x)
    x = pool(lrn(x))
    x = feats['conv2'] = nn.relu(
        grouped(w2, (5, 5), padding=2, name='conv2')(x)
    )
    x = pool(lrn(x))
    x = feats['conv3'] = nn.relu(conv(w3, (3, 3), padding=1, name='conv3')(x))
    x = feats['conv4'] = nn.relu(
        grouped(w4, (3, 3), padding=1, name='conv4')(x)
    )
    x = feats['conv5'] = nn.relu(
        grouped(w5, (3, 3), padding=1, name='conv5')(x)
    )
    x = pool(x)
    x = x.reshape(x.shape[0], -1)
    x = feats['fc6'] = nn.relu(dense(self.fc_width, name='fc6')(x))
    x = drop()(x)
    x = feats['fc7'] = nn.relu(dense(self.fc_width, name='fc7')(x))
    x = feats['pre_logits'] = drop()(x)
    logits = dense(self.num_classes, name='fc8')(x)
    return _features_out(logits, feats, return_features)


# Widths divided by 16 and a stride-1 conv1, for 32x32 inputs.
AlexNetTiny = functools.partial(
    AlexNet, conv_widths=(6, 16, 24, 24, 16), fc_width=256, stem='small'
)
registry.register('alexnet', AlexNet)
registry.register('alexnet_tiny', AlexNetTiny)


# ------------------------------------------------------------------ ResNet --


class _Block(nn.Module):
  """Fields and shortcut shared by the residual blocks."""

  expansion: ClassVar[int] = 1

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = True

  def last_norm(self, name: str) -> nn.Module:
    """The block's final BN; its scale starts at zero if zero_init_residual."""
    if self.zero_init_residual:
      return self.norm(scale_init=nn.initializers.zeros, name=name)
    return self.norm(name=name)

  def shortcut(self, x: Array) -> Array:
    """Identity, or a 1x1 conv + BN projection when the shape changes."""
    out = self.filters * self.expansion
    if self.strides == 1 and x.shape[-1] == out:
      return x
    s = (self.strides, self.strides)
    x = self.conv(out, (1, 1), s, name='proj_conv')(x)
    return self.norm(name='proj_bn')(x)


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34); the stride sits on the first."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = (self.strides, self.strides)
    y = self.conv(self.filters, (3, 3), s, padding=1, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), padding=1, name='conv2')(y)
    y = self.last_norm('bn2')(y)
    return nn.relu(y + self.shortcut(x))


class Bottleneck(_Block):
  """1x1 reduce, 3x3 (with the stride: v1.5), 1x1 expand x4 (ResNet-50+)."""

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = (self.strides, self.strides)
    y = self.conv(self.filters, (1, 1), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), s, padding=1, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.filters * self.expansion, (1, 1), name='conv3')(y)
    y = self.last_norm('bn3')(y)
    return nn.relu(y + self.shortcut(x))


# Stem conv (kernel, stride) and whether a 3x3/2 max-pool follows.
_RESNET_STEMS = {'imagenet': (7, 2, True), 'small': (3, 1, False)}


class ResNet(nn.Module):
  """ResNet v1.5 (He et al. 2016; stride on the 3x3 conv of the bottleneck).

  Stage ``i`` (from 0) has ``stage_sizes[i]`` blocks of ``width * 2**i``
  filters (times the block's expansion); stages after the first start with
  stride 2. ``stem='imagenet'``: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool;
  ``stem='small'``: 3x3/1 conv, BN, ReLU (32x32 images). Convs have no bias
  and He (fan-out) initialisation; with ``zero_init_residual`` the last BN
  scale of each block starts at zero, so every block starts as identity.

  Layer names: ``stem_conv``, ``stem_bn``, ``stage{i}_block{j}`` (from 1,
  holding ``conv1``.., ``bn1``.., ``proj_conv``, ``proj_bn``), ``head``.
  Features: ``stem`` (after the pool), ``stage1``..``stageN`` (output of each
  stage), ``pre_logits`` (global average pool).
  """

  num_classes: int
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  stem: str = 'imagenet'
  zero_init_residual: bool = True
  remat: bool = False  # recompute each block's activations in the backward pass
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_stem(self.stem, _RESNET_STEMS)
    super().__post_init__()

  @nn.compact
  def __call__(
      self, x: Array, train: bool = False, return_features: bool = False
  ) -> Array | tuple[Array, dict[str, Array]]:
    block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
    kernel, stride, use_pool = _RESNET_STEMS[self.stem]
    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        padding=0,
        dtype=self.dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
    )
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=self.dtype,
        use_fast_variance=False,  # E[(x - mean)^2]: exact for offset inputs
    )
    feats = {}

    x = jnp.asarray(x, self.dtype)
    k = (kernel, kernel)
    x = conv(self.width, k, stride, padding=kernel // 2, name='stem_conv')(x)
    x = nn.relu(norm(name='stem_bn')(x))
    # On CPU the stem's and each block's output are written out once, not
    # recomputed into the next weight gradient's transposed copy (cpu_fusion:
    # 1.10x on the ResNet-18 CIFAR step).
    materialize = cpu_fusion.materialize if cpu_fusion.enabled() else lambda v: v
    x = materialize(x)
    if use_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats['stem'] = x
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = block_cls(
            filters=self.width * 2**i,
            conv=conv,
            norm=norm,
            strides=2 if i > 0 and j == 0 else 1,
            zero_init_residual=self.zero_init_residual,
            name=f'stage{i + 1}_block{j + 1}',
        )(x)
        x = materialize(x)
      feats[f'stage{i + 1}'] = x
    x = feats['pre_logits'] = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return _features_out(logits, feats, return_features)


ResNet18 = functools.partial(
    ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock
)
ResNet34 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock
)
ResNet50 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck
)
ResNet101 = functools.partial(
    ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck
)
ResNet152 = functools.partial(
    ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck
)
ResNetTiny = functools.partial(
    ResNet, stage_sizes=(1, 1), block_cls=BasicBlock, stem='small', width=8
)
registry.register('resnet18', ResNet18)
registry.register('resnet34', ResNet34)
registry.register('resnet50', ResNet50)
registry.register('resnet101', ResNet101)
registry.register('resnet152', ResNet152)
registry.register('resnet_tiny', ResNetTiny)
