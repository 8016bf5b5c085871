"""The MNIST-1D benchmark models (Greydanus & Kobak, ICML 2024).

Inputs are float ``[B, 40, 1]`` sequences (time, channel); 2-D ``[B, 40]``
inputs are read as one channel. The four paper models re-implement the
PyTorch reference models of the ``greydanus/mnist1d`` repository (its
``notebooks/models.py``); parameter counts are for 10 classes.

=======================  ======  =========================================
model                    params  architecture
=======================  ======  =========================================
mnist1d_logreg              410  Linear 40 -> 10
mnist1d_mlp              15,210  h = relu(Linear 40 -> 100 (x));
                                 h = h + relu(Linear 100 -> 100 (h));
                                 Linear 100 -> 10 (h)  (a residual block)
mnist1d_cnn               5,210  Conv1d 1 -> 25 (k 5, stride 2, pad 1), ReLU,
                                 Conv1d 25 -> 25 (k 3, s 2, p 1), ReLU,
                                 Conv1d 25 -> 25 (k 3, s 2, p 1), ReLU,
                                 flatten 5 x 25 = 125, Linear 125 -> 10;
                                 lengths 40 -> 19 -> 10 -> 5
mnist1d_gru               5,110  bidirectional GRU (input 1, hidden 6), all
                                 40 steps' outputs flattened (40 x 12 =
                                 480), Linear 480 -> 10
mnist1d_lstm              5,194  as mnist1d_gru with an LSTM cell (not in
                                 the paper)
mnist1d_transformer      18,826  pre-LN Transformer encoder over the 40
                                 positions (not in the paper): Linear
                                 1 -> 32 per position + learned positions,
                                 2 blocks (2 heads, MLP 64, GELU), final
                                 LayerNorm, mean pool, Linear 32 -> 10
=======================  ======  =========================================

GRU count: the reference's ``torch.nn.GRU`` has 324 parameters (per
direction 3*6 input weights, 3*6*6 recurrent weights and two bias vectors
``b_ih``, ``b_hh`` of 3*6), so 324 + 4,810 = 5,134. ``rnn.RecurrentLayer``
(the cuDNN/PyTorch GRU formulation, reset gate on the projected state)
merges ``b_ir + b_hr`` and ``b_iz + b_hz`` into one bias each, because
only their sums enter the equations; it keeps ``b_hn`` separate because
the reset gate multiplies it. That is 2 x 2 x 6 = 24 fewer parameters
(150 per direction, 300 in all) for the same family of functions.

Layout differences that do not change the function class: the CNN
flattens its ``[5, 25]`` (length, channel) output length-major where
PyTorch's ``[25, 5]`` is channel-major (a fixed permutation of the
linear layer's rows); the recurrent models flatten ``[40, fwd 6 | bwd 6]``
exactly as PyTorch does. The transformer is ``transformer.py``'s
``TransformerClassifier`` on float inputs; 2 heads of width 16 rather than
4 of width 8 because XLA:CPU runs many tiny attention matmuls slowly.

Initialisation: ``param_init='flax'`` (the default) is flax's LeCun-normal
kernels and zero biases; ``param_init='torch'`` is PyTorch's default for
``Linear``/``Conv1d``, kernels and biases uniform in +-1/sqrt(fan_in), as
the reference models start. For the recurrent models it applies to the
head only: the GRU/LSTM layers are ``rnn.py``'s (LeCun-normal input
kernels, orthogonal recurrent kernels, zero biases with the LSTM forget
bias at 1), where PyTorch draws every recurrent weight and bias uniform in
+-1/sqrt(hidden).

Features (``return_features=True``): ``pre_logits`` is what the final
Linear layer sees (the flattened input for logreg, the residual hidden
state for the MLP, the 125 flattened conv features for the CNN, the 480
flattened RNN outputs); the MLP adds ``hidden_0``/``hidden_1``, the CNN
``conv_0..2`` and the RNNs ``outputs`` ``[B, 40, 12]``.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlresearch.models import registry, rnn, transformer

Array = jax.Array

LENGTH = 40  # MNIST-1D sequence length.


def _sequence(x: Array, dtype: Any) -> Array:
  """``[B, 40]`` or ``[B, 40, C]`` -> float ``[B, 40, C]``."""
  x = jnp.asarray(x, dtype)
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3:
    raise ValueError(f'MNIST-1D inputs must be [batch, 40, 1] (or [batch, 40]); '
                     f'got shape {x.shape}')
  return x


INITS = ('flax', 'torch')


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def dense(features: int, fan_in: int, init: str, dtype: Any, name: str) -> nn.Dense:
  """``nn.Dense``; ``init='torch'``: PyTorch's default U(+-1/sqrt(fan_in)) for both."""
  if init not in INITS:
    raise ValueError(f'unknown init {init!r}; choose one of: {", ".join(INITS)}')
  if init == 'flax':
    return nn.Dense(features, dtype=dtype, name=name)
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                  bias_init=_uniform(fan_in ** -0.5))


def conv(features: int, kernel: int, fan_in: int, init: str, dtype: Any,
         name: str) -> nn.Conv:
  """Stride-2, pad-1 ``nn.Conv``; ``init`` as for ``dense``."""
  if init not in INITS:
    raise ValueError(f'unknown init {init!r}; choose one of: {", ".join(INITS)}')
  kwargs = {} if init == 'flax' else dict(
      kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
      bias_init=_uniform(fan_in ** -0.5))
  return nn.Conv(features, (kernel,), strides=(2,), padding=[(1, 1)], dtype=dtype,
                 name=name, **kwargs)


def _out(logits: Array, feats: dict, return_features: bool):
  return (logits, feats) if return_features else logits


class LogReg(nn.Module):
  """Logistic regression on the flattened sequence: ``Linear 40 -> 10``."""

  num_classes: int = 10
  param_init: str = 'flax'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               return_features: bool = False) -> Array | tuple[Array, dict]:
    del train
    x = _sequence(x, self.dtype).reshape(x.shape[0], -1)
    logits = dense(self.num_classes, x.shape[-1], self.param_init, self.dtype, 'head')(x)
    return _out(logits, {'pre_logits': x}, return_features)


class ResidualMLP(nn.Module):
  """The paper MLP: one ReLU layer, one residual ReLU layer, a linear head."""

  num_classes: int = 10
  hidden_size: int = 100
  param_init: str = 'flax'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               return_features: bool = False) -> Array | tuple[Array, dict]:
    del train
    x = _sequence(x, self.dtype).reshape(x.shape[0], -1)
    size = self.hidden_size
    h0 = nn.relu(dense(size, x.shape[-1], self.param_init, self.dtype, 'hidden_0')(x))
    h1 = nn.relu(dense(size, size, self.param_init, self.dtype, 'hidden_1')(h0))
    h = h0 + h1
    logits = dense(self.num_classes, size, self.param_init, self.dtype, 'head')(h)
    return _out(logits, {'hidden_0': h0, 'hidden_1': h1, 'pre_logits': h},
                return_features)


class ConvNet(nn.Module):
  """The paper CNN: three stride-2 Conv1d + ReLU layers, flatten, linear head."""

  num_classes: int = 10
  channels: int = 25
  kernel_sizes: tuple[int, ...] = (5, 3, 3)
  param_init: str = 'flax'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               return_features: bool = False) -> Array | tuple[Array, dict]:
    del train
    h = _sequence(x, self.dtype)
    feats = {}
    for i, k in enumerate(self.kernel_sizes):
      h = conv(self.channels, k, k * h.shape[-1], self.param_init, self.dtype,
               f'conv_{i}')(h)
      h = nn.relu(h)
      feats[f'conv_{i}'] = h
    h = h.reshape(h.shape[0], -1)
    feats['pre_logits'] = h
    logits = dense(self.num_classes, h.shape[-1], self.param_init, self.dtype, 'head')(h)
    return _out(logits, feats, return_features)


class FlatRNN(nn.Module):
  """The paper GRU head: a bidirectional RNN whose every output feeds the head.

  ``rnn.RNN`` (``cell`` 'gru' or 'lstm', zero initial state) reads the
  sequence both ways; the ``[B, T, 2H]`` outputs are flattened to
  ``[B, 2HT]`` and mapped to the logits by ``head``.
  """

  cell: str = 'gru'
  num_classes: int = 10
  hidden_size: int = 6
  bidirectional: bool = True
  param_init: str = 'flax'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               return_features: bool = False) -> Array | tuple[Array, dict]:
    x = _sequence(x, self.dtype)
    outputs, _ = rnn.RNN(self.cell, self.hidden_size, bidirectional=self.bidirectional,
                         dtype=self.dtype, name='rnn')(x, train=train)
    flat = outputs.reshape(outputs.shape[0], -1)
    logits = dense(self.num_classes, flat.shape[-1], self.param_init, self.dtype,
                   'head')(flat)
    return _out(logits, {'outputs': outputs, 'pre_logits': flat}, return_features)


registry.register('mnist1d_logreg', LogReg)
registry.register('mnist1d_mlp', ResidualMLP)
registry.register('mnist1d_cnn', ConvNet)
registry.register('mnist1d_gru', functools.partial(FlatRNN, cell='gru'))
registry.register('mnist1d_lstm', functools.partial(FlatRNN, cell='lstm'))
registry.register('mnist1d_transformer', functools.partial(
    transformer.TransformerClassifier, num_classes=10, num_layers=2, d_model=32,
    num_heads=2, mlp_dim=64, max_len=LENGTH, positions='learned', pooling='mean'))
