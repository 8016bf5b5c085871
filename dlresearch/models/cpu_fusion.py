"""Values XLA:CPU writes out once instead of recomputing them inside its consumers.

XLA fuses elementwise producers into their consumers. On XLA:CPU, when the
consumer writes a transposed layout (the operand of a weight-gradient
convolution or matmul), the fused loop recomputes a whole chain of producers
for every element, with strided access. Two places where that dominated a
train step (README "Speed on CPU"):

- ResNet forward: each residual block's output (BatchNorm + add + ReLU, and
  the blocks before it) recomputed into the channel-major copy that the next
  convolution's weight gradient reads: 21% of the ResNet-18 step, where a
  plain transpose of the written-out tensor is 15-20x faster.
- Transformer backward: the residual stream's gradient (the sum through
  every later block's LayerNorm backward) recomputed in each consumer as
  transposing copies that cost more than the matmuls.

``materialize(x)`` is the identity written as a conditional whose predicate
XLA cannot fold (``x``'s first element equals itself): a conditional's
operand is a buffer, so its producers are computed once. The other branch
(taken only when that element is NaN) adds 0, which XLA cannot prove is the
identity (``-0.0 + 0 == +0.0``) and so keeps the conditional; the values
differ from ``x`` only in the sign of zeros, in an already-NaN computation.
``optimization_barrier`` would be the natural tool, but XLA:CPU removes it
before fusion (measured: 0.99x).

``enabled()`` says where the models apply it: the CPU backend with one
device (the predicate reads one element; on a sharded array that would need
a collective). Elsewhere they leave values alone.
"""

import jax
from jax import lax

Array = jax.Array


def enabled() -> bool:
  """Whether models materialize values: the CPU backend, one device."""
  return jax.default_backend() == 'cpu' and jax.device_count() == 1


def materialize(x: Array) -> Array:
  """``x``, computed once into its own buffer (see the module docstring)."""
  if x.size == 0:
    return x
  first = x.reshape(-1)[0]
  return lax.cond(first == first, lambda v: v, lambda v: v + 0, x)


@jax.custom_vjp
def materialize_gradient(x: Array) -> Array:
  """Identity whose backward pass materializes the incoming gradient."""
  return x


def _materialize_gradient_fwd(x):
  return x, None


def _materialize_gradient_bwd(_, g):
  return (materialize(g),)


materialize_gradient.defvjp(_materialize_gradient_fwd, _materialize_gradient_bwd)
