"""Recurrent networks: vanilla (tanh) RNN, LSTM and GRU, with classifier and LM heads.

The cells are written out here so the equations are explicit. Each layer
computes the input projection for every time step in one matrix product
(``x @ W_x + b``, the ``input`` Dense of shape ``[F, G*H]``), then scans over
time with ``jax.lax.scan``; only the recurrent product ``h @ W_h`` (the
``recurrent_kernel`` of shape ``[H, G*H]``) is inside the scan. Gates are
stacked along the last axis in the order given below.

Vanilla RNN (1 gate)::

    h' = tanh(W_x x + b + W_h h)

LSTM (Hochreiter & Schmidhuber 1997 with a forget gate; 4 gates, order
``i, f, g, o``; one bias per gate, the forget slice initialised to 1.0 as in
Jozefowicz et al. 2015)::

    i = sigmoid(W_xi x + b_i + W_hi h)      f = sigmoid(W_xf x + b_f + W_hf h)
    g = tanh(W_xg x + b_g + W_hg h)         o = sigmoid(W_xo x + b_o + W_ho h)
    c' = f * c + i * g                      h' = o * tanh(c')

GRU (Cho et al. 2014, in the cuDNN/PyTorch formulation where the reset gate
multiplies the *projected* state, ``r * (W_hn h + b_hn)``, rather than
``W_hn (r * h)``; 3 gates, order ``r, z, n``)::

    r = sigmoid(W_xr x + b_r + W_hr h)      z = sigmoid(W_xz x + b_z + W_hz h)
    n = tanh(W_xn x + b_n + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

The input biases ``b`` live in the ``input`` Dense; ``b_hn`` is the GRU's
separate ``recurrent_bias`` (PyTorch's ``b_ir + b_hr`` etc. are merged into
one bias, so PyTorch has ``G*H`` more bias parameters per layer and direction,
except for ``b_hn``). Recurrent kernels start as one orthogonal ``H x H``
block per gate; the LSTM carry is ``(c, h)``, the others carry ``h``.

Without a mask the LSTM runs ``lstm_scan``: ``[x_t, h] @ W + b`` inside the
loop (``W`` is ``input.kernel`` stacked on ``recurrent_kernel``), no
per-step masking, and a hand-written backward pass whose loop emits only the
gate gradients; the weight, bias and input gradients are then one matrix
product each over all steps. It is 1.2-1.3x flax's ``nn.RNN`` on a 2-core CPU
(README "Speed on CPU"); parameters and results are those of the masked path
(gradients equal to float32 rounding, tested). In a step traced with
the native kernels (``--cpu_kernels`` native, or auto for a model without
convolutions; ``kernels.tracing_native()``, float32) both loops are one
native call each (``kernels.lstm_forward``/``lstm_backward``: the recurrent
product on weights packed once per call, the gates in the same pass), and
the input projection and the weight and input gradients run on the native
GEMM; an extension without the loop targets runs the scan with its gate
matmuls on the GEMM.

Padding: ``mask`` is a bool ``[B, T]`` array, True at real steps. A step with
mask False leaves the carry unchanged and outputs zeros, so the final carry
is the state after the last real step. The backward direction of a
bidirectional layer reverses each sequence within its own length, which
needs right padding (real steps first); that is checked whenever the mask is
a concrete array.
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from dlresearch import kernels
from dlresearch.models import registry

Array = jax.Array
Carry = Any  # (c, h) for the LSTM, h for the RNN and GRU.

NUM_GATES = {'rnn': 1, 'lstm': 4, 'gru': 3}


def _check_cell(cell: str) -> None:
  if cell not in NUM_GATES:
    raise ValueError(f'unknown cell {cell!r}; choose one of: {", ".join(NUM_GATES)}')


def _stacked_orthogonal(num_gates: int):
  """Initialiser for ``[H, G*H]``: an independent orthogonal block per gate."""
  ortho = nn.initializers.orthogonal()

  def init(key, shape, dtype=jnp.float32):
    hidden, total = shape
    keys = jax.random.split(key, num_gates)
    return jnp.concatenate(
        [ortho(k, (hidden, total // num_gates), dtype) for k in keys], axis=1
    )

  return init


def _lstm_bias_init(key, shape, dtype=jnp.float32):
  del key
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


def cell_step(cell: str, carry: Carry, xp: Array, w_h: Array, b_hn: Array | None):
  """One step of ``cell``: ``xp`` is the precomputed ``W_x x + b`` ``[B, G*H]``.

  Returns ``(new_carry, h)``.
  """
  if cell == 'rnn':
    h = jnp.tanh(xp + carry @ w_h)
    return h, h
  if cell == 'lstm':
    c, h = carry
    i, f, g, o = jnp.split(xp + h @ w_h, 4, axis=-1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h = nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h
  h = carry
  xr, xz, xn = jnp.split(xp, 3, axis=-1)
  hr, hz, hn = jnp.split(h @ w_h, 3, axis=-1)
  r = nn.sigmoid(xr + hr)
  z = nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * (hn + b_hn))
  h = (1.0 - z) * n + z * h
  return h, h


def zero_carry(cell: str, batch_size: int, hidden_size: int, dtype: Any = jnp.float32) -> Carry:
  """The all-zeros initial carry of one layer and direction."""
  h = jnp.zeros((batch_size, hidden_size), dtype)
  return (h, h) if cell == 'lstm' else h


def carry_hidden(cell: str, carry: Carry) -> Array:
  """The hidden state ``h`` inside a carry."""
  return carry[1] if cell == 'lstm' else carry


def reverse_padded(x: Array, lengths: Array) -> Array:
  """Reverses ``x[b, :lengths[b]]`` along axis 1; padded steps stay in place."""
  t = jnp.arange(x.shape[1])[None, :]
  lengths = lengths[:, None]
  idx = jnp.where(t < lengths, lengths - 1 - t, t)
  return x[jnp.arange(x.shape[0])[:, None], idx]


def check_right_padded(mask: Array) -> None:
  """Raises if a concrete ``mask`` is not of the form ``[True]*n + [False]*m``."""
  if isinstance(mask, jax.core.Tracer):
    return
  m = np.asarray(mask, bool)
  prefix = np.arange(m.shape[1])[None, :] < m.sum(axis=1, keepdims=True)
  if not np.array_equal(m, prefix):
    raise ValueError(
        'a bidirectional RNN needs right-padded masks (real steps first, then '
        'padding); move the padding to the end of each sequence'
    )


def _native_lstm(x, w) -> bool:
  """``lstm_scan``'s matmuls go to the native GEMM (module docstring)."""
  return kernels.tracing_native() and x.dtype == w.dtype == jnp.float32


def _native_loops(x, w) -> bool:
  """``lstm_scan``'s two loops are native calls (module docstring)."""
  return _native_lstm(x, w) and kernels.lstm_loops()


def _lstm_forward(x, c, h, w, b):
  """The LSTM over time-major ``x [T,B,F]``: ``(hs, cs, gates)`` (activated gates)."""
  native = _native_lstm(x, w)
  features = x.shape[-1]
  if _native_loops(x, w):  # the whole loop in one native call
    return kernels.lstm_forward(kernels.dense(x, w[:features]) + b, c, h, w[features:])

  def step(carry, x_t):
    c, h = carry
    xh = jnp.concatenate([x_t, h], axis=-1)
    z = (kernels.matmul(xh, w) if native else xh @ w) + b
    i, f, g, o = jnp.split(z, 4, axis=-1)
    i, f, g, o = nn.sigmoid(i), nn.sigmoid(f), jnp.tanh(g), nn.sigmoid(o)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

  _, (hs, cs, gates) = lax.scan(step, (c, h), x)
  return hs, cs, gates


@jax.custom_vjp
def lstm_scan(x: Array, c: Array, h: Array, w: Array, b: Array):
  """LSTM over time-major ``x [T,B,F]`` from ``(c, h)``; ``w = [[W_x], [W_h]]``.

  ``w`` is ``[F+H, 4H]``, ``b`` ``[4H]`` (gate order ``i, f, g, o``).
  Returns ``(hs [T,B,H], (c_T, h_T))``. The backward pass is written out
  (``_lstm_bwd``) so its loop carries only ``dh, dc`` and emits the gate
  gradients; everything that is a product over all steps happens after it.
  """
  hs, cs, _ = _lstm_forward(x, c, h, w, b)
  return hs, (cs[-1], hs[-1])


def _lstm_fwd(x, c, h, w, b):
  hs, cs, gates = _lstm_forward(x, c, h, w, b)
  return (hs, (cs[-1], hs[-1])), (x, c, h, w, hs, cs, gates)


def _lstm_bwd_loop(d_hs, d_ct, d_ht, c0, cs, gates, recurrent):
  """``lstm_scan``'s backward loop in XLA: ``((dh0, dc0), dz)``."""
  c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)

  def step(carry, inputs):
    dh, dc = carry
    dh_t, c_t, c_p, gate = inputs
    i, f, g, o = jnp.split(gate, 4, axis=-1)
    dh = dh + dh_t
    tc = jnp.tanh(c_t)
    dc = dc + dh * o * (1 - tc * tc)
    dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_p * f * (1 - f),
                          dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=-1)
    return (recurrent(dz), dc * f), dz

  return lax.scan(step, (d_ht, d_ct), (d_hs, cs, c_prev, gates), reverse=True)


def _lstm_bwd(res, grads):
  x, c0, h0, w, hs, cs, gates = res
  d_hs, (d_ct, d_ht) = grads
  size, features = h0.shape[-1], x.shape[-1]
  native = _native_lstm(x, w)
  w_h = w[features:]
  if _native_loops(x, w):
    dz, dc0, dh0 = kernels.lstm_backward(d_hs, cs, c0, gates, w_h, d_ct, d_ht)
  else:  # the kernel reads W_h^T as stored
    recurrent = ((lambda dz: kernels.matmul(dz, w_h, trans_b=True)) if native
                 else (lambda dz: dz @ w_h.T))
    (dh0, dc0), dz = _lstm_bwd_loop(d_hs, d_ct, d_ht, c0, cs, gates, recurrent)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
  xh = jnp.concatenate([x, h_prev], axis=-1)
  flat_dz = dz.reshape(-1, 4 * size)
  if native:
    dw = kernels.matmul(xh.reshape(-1, xh.shape[-1]), flat_dz, trans_a=True)
  else:
    dw = xh.reshape(-1, xh.shape[-1]).T @ flat_dz
  db = jnp.sum(flat_dz, axis=0)
  if native:
    dx = kernels.matmul(flat_dz, w[:features], trans_b=True).reshape(x.shape)
  else:
    dx = dz @ w[:features].T
  return dx, dc0, dh0, dw, db


lstm_scan.defvjp(_lstm_fwd, _lstm_bwd)


class _DenseParams(nn.Module):
  """The parameters of an ``nn.Dense`` (``kernel [F, N]``, ``bias [N]``), unapplied.

  Same names, shapes, initialisers (and so the same initial values) as the
  ``nn.Dense`` the layer used before, so checkpoints load unchanged.
  """

  features: int
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, in_features: int) -> tuple[Array, Array]:
    kernel = self.param('kernel', nn.linear.default_kernel_init,
                        (in_features, self.features))
    return kernel, self.param('bias', self.bias_init, (self.features,))


class RecurrentLayer(nn.Module):
  """One layer, one direction: ``(x [B,T,F], mask [B,T]) -> (outputs [B,T,H], carry)``.

  Parameters: ``input`` (Dense ``F -> G*H``, holds the input biases),
  ``recurrent_kernel`` ``[H, G*H]`` and, for the GRU, ``recurrent_bias``
  ``[H]`` (``b_hn``). ``reverse=True`` runs each sequence backwards within
  its length and returns outputs in the original time order.
  """

  cell: str
  hidden_size: int
  reverse: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None,
               carry: Carry | None = None) -> tuple[Array, Carry]:
    _check_cell(self.cell)
    gates = NUM_GATES[self.cell]
    size = self.hidden_size
    bias_init = _lstm_bias_init if self.cell == 'lstm' else nn.initializers.zeros
    w_x, b = _DenseParams(gates * size, bias_init, name='input')(x.shape[-1])
    w_h = self.param('recurrent_kernel', _stacked_orthogonal(gates), (size, gates * size))
    x, w_x, b, w_h = nn.dtypes.promote_dtype(x, w_x, b, w_h, dtype=self.dtype)
    b_hn = None
    if self.cell == 'gru':
      b_hn = jnp.asarray(self.param('recurrent_bias', nn.initializers.zeros, (size,)), self.dtype)
    if carry is None:
      carry = zero_carry(self.cell, x.shape[0], size, self.dtype)
    if mask is None and self.cell == 'lstm':
      xs = jnp.swapaxes(x, 0, 1)
      if self.reverse:
        xs = xs[::-1]
      hs, carry = lstm_scan(xs, *carry, jnp.concatenate([w_x, w_h], axis=0), b)
      outputs = jnp.swapaxes(hs[::-1] if self.reverse else hs, 0, 1)
      return outputs, carry
    # All time steps in one product; only h @ W_h stays inside the scan.
    xp = x @ w_x + b
    lengths = None
    if mask is not None:
      lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
    if self.reverse:  # right padding: the mask is unchanged
      xp = xp[:, ::-1] if mask is None else reverse_padded(xp, lengths)

    def step(carry, inputs):
      xp_t, m_t = inputs
      new_carry, h = cell_step(self.cell, carry, xp_t, w_h, b_hn)
      if m_t is None:
        return new_carry, h
      m_t = m_t[:, None]
      carry = jax.tree.map(lambda new, old: jnp.where(m_t, new, old), new_carry, carry)
      return carry, jnp.where(m_t, h, jnp.zeros_like(h))

    steps_mask = None if mask is None else jnp.swapaxes(mask, 0, 1)
    carry, outputs = lax.scan(step, carry, (jnp.swapaxes(xp, 0, 1), steps_mask))
    outputs = jnp.swapaxes(outputs, 0, 1)
    if self.reverse:
      outputs = outputs[:, ::-1] if mask is None else reverse_padded(outputs, lengths)
    return outputs, carry


class RNN(nn.Module):
  """A stack of recurrent layers: ``x [B,T,F] -> (outputs [B,T,D*H], carries)``.

  Layer ``l`` is ``layer_{l}`` (forward) and ``layer_{l}_reverse``
  (backward, when bidirectional); a bidirectional layer's output is
  ``concat(forward, backward)``. Dropout is applied between layers (not after
  the last). ``carries`` is a tuple over layers; each entry is the layer's
  carry, or a ``(forward, backward)`` pair when bidirectional. An initial
  ``carry`` (same structure) is accepted for unidirectional stacks only.
  """

  cell: str
  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: Array,
      mask: Array | None = None,
      carry: Sequence[Carry] | None = None,
      train: bool = False,
  ) -> tuple[Array, tuple[Carry, ...]]:
    batch, length = x.shape[:2]
    if mask is not None:
      if mask.shape != (batch, length):
        raise ValueError(f'mask has shape {mask.shape}; expected [batch, time] = {(batch, length)}')
      mask = jnp.asarray(mask, bool)
    if self.bidirectional:
      if carry is not None:
        raise ValueError('an initial carry is only supported for unidirectional RNNs')
      if mask is not None:
        check_right_padded(mask)
    if carry is not None and len(carry) != self.num_layers:
      raise ValueError(f'carry has {len(carry)} layers; the RNN has {self.num_layers}')
    carries = []
    for layer in range(self.num_layers):
      if layer > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      layer_carry = None if carry is None else carry[layer]
      fwd, fwd_carry = RecurrentLayer(
          self.cell, self.hidden_size, dtype=self.dtype, name=f'layer_{layer}'
      )(x, mask, layer_carry)
      if self.bidirectional:
        bwd, bwd_carry = RecurrentLayer(
            self.cell, self.hidden_size, reverse=True, dtype=self.dtype,
            name=f'layer_{layer}_reverse',
        )(x, mask)
        x = jnp.concatenate([fwd, bwd], axis=-1)
        carries.append((fwd_carry, bwd_carry))
      else:
        x = fwd
        carries.append(fwd_carry)
    return x, tuple(carries)


def _sequence_inputs(x: Array, vocab_size: int | None, embed_dim: int, dtype: Any) -> Array:
  """Int tokens ``[B,T]`` -> ``Embed`` (``embed``); float ``[B,T,F]`` or ``[B,T]`` -> as is.

  Float features go straight to the first layer, whose ``input`` Dense is
  the learned projection. A 2-D float array is read as one feature per step.
  """
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.integer):
    if x.ndim != 2:
      raise ValueError(f'token inputs must be [batch, time]; got shape {x.shape}')
    if vocab_size is None:
      raise ValueError('integer token inputs need vocab_size; build the model with vocab_size=')
    return nn.Embed(vocab_size, embed_dim, dtype=dtype, name='embed')(x)
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3:
    raise ValueError(f'float inputs must be [batch, time, features]; got shape {x.shape}')
  return jnp.asarray(x, dtype)


class RNNClassifier(nn.Module):
  """Sequence classifier: (embedded) inputs -> RNN -> final state -> head.

  Inputs are int tokens ``[B,T]`` (embedded, needs ``vocab_size``) or float
  features ``[B,T,F]``. The final state is the last layer's ``h`` after the
  last real step (forward), concatenated with the backward direction's ``h``
  after reading the whole sequence backwards when bidirectional.

  Features: ``outputs`` (per-step outputs of the last layer, zero at padding),
  ``final_state``, and ``pre_logits`` (``final_state`` after dropout).
  """

  cell: str
  num_classes: int
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  vocab_size: int | None = None
  embed_dim: int = 128
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_cell(self.cell)
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      x: Array,
      train: bool = False,
      return_features: bool = False,
      mask: Array | None = None,
  ) -> Array | tuple[Array, dict[str, Array]]:
    x = _sequence_inputs(x, self.vocab_size, self.embed_dim, self.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    outputs, carries = RNN(
        self.cell, self.hidden_size, self.num_layers, self.bidirectional,
        self.dropout_rate, self.dtype, name='rnn',
    )(x, mask, train=train)
    last = carries[-1]
    if self.bidirectional:
      final = jnp.concatenate([carry_hidden(self.cell, c) for c in last], axis=-1)
    else:
      final = carry_hidden(self.cell, last)
    feats = {'outputs': outputs, 'final_state': final}
    feats['pre_logits'] = nn.Dropout(self.dropout_rate, deterministic=not train)(final)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(feats['pre_logits'])
    return (logits, feats) if return_features else logits


class RNNLanguageModel(nn.Module):
  """Token LM: ``tokens [B,T] -> logits [B,T,V]``, one prediction per step.

  Dropout on the embeddings, between layers and before the output layer
  (Zaremba et al. 2014). With ``tie_embeddings`` the output layer is the
  transposed input embedding (``hidden_size`` must equal ``embed_dim``) and
  the embedding starts at ``N(0, 1/embed_dim)`` so initial logits are O(1);
  otherwise it is a Dense ``head`` with a bias.

  ``carry`` (the tuple returned with ``return_carry=True``) continues from a
  previous call, so feeding a sequence in pieces gives the same logits as
  feeding it at once; ``None`` starts from zeros.
  """

  cell: str
  vocab_size: int
  embed_dim: int = 128
  hidden_size: int = 256
  num_layers: int = 1
  dropout_rate: float = 0.0
  tie_embeddings: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_cell(self.cell)
    if self.tie_embeddings and self.hidden_size != self.embed_dim:
      raise ValueError(
          f'tied embeddings need hidden_size == embed_dim; got {self.hidden_size} '
          f'and {self.embed_dim}'
      )
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      tokens: Array,
      train: bool = False,
      carry: Sequence[Carry] | None = None,
      return_carry: bool = False,
  ) -> Array | tuple[Array, tuple[Carry, ...]]:
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer) or tokens.ndim != 2:
      raise ValueError(f'tokens must be int [batch, time]; got {tokens.dtype} {tokens.shape}')
    init = (
        nn.initializers.normal(self.embed_dim**-0.5)
        if self.tie_embeddings else nn.linear.default_embed_init
    )
    embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                     embedding_init=init, name='embed')
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    x = dropout(embed(tokens))
    x, carries = RNN(
        self.cell, self.hidden_size, self.num_layers, False, self.dropout_rate,
        self.dtype, name='rnn',
    )(x, None, carry=carry, train=train)
    x = dropout(x)
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.vocab_size, dtype=self.dtype, name='head')(x)
    return (logits, carries) if return_carry else logits


for _cell in NUM_GATES:
  registry.register(f'{_cell}_classifier', functools.partial(RNNClassifier, cell=_cell))
  registry.register(f'{_cell}_lm', functools.partial(RNNLanguageModel, cell=_cell))
