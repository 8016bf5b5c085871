"""Multi-layer perceptron and logistic regression.

Both flatten any input shape to ``[batch, features]``. ``ACTIVATIONS`` and
``get_activation`` are shared with the convolutional families in ``cnn.py``.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlresearch.models import registry

Array = jax.Array

# 'gelu' is the exact (erf) form of Hendrycks & Gimpel 2016, as in
# torch.nn.GELU; leaky_relu uses slope 0.01.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'relu': nn.relu,
    'gelu': functools.partial(nn.gelu, approximate=False),
    'tanh': jnp.tanh,
    'sigmoid': nn.sigmoid,
    'silu': nn.silu,
    'elu': nn.elu,
    'leaky_relu': nn.leaky_relu,
    'softplus': nn.softplus,
}


def get_activation(name: str) -> Callable[[Array], Array]:
  """Returns the activation function called ``name``."""
  if name not in ACTIVATIONS:
    raise ValueError(
        f'unknown activation {name!r}; choose one of: {", ".join(ACTIVATIONS)}'
    )
  return ACTIVATIONS[name]


class MLP(nn.Module):
  """Dense layers with an activation (and optional dropout) after each.

  Layers are named ``hidden_0``, ``hidden_1``, ... and ``head``. With no
  hidden layers this is a linear (logistic regression) classifier.

  Features (``return_features=True``): ``hidden_i`` is the output of hidden
  layer ``i`` after its activation (before dropout); ``pre_logits`` is what
  the head sees (the flattened input when there are no hidden layers).
  """

  num_classes: int
  features: Sequence[int] = (256, 256)
  activation: str = 'relu'
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    get_activation(self.activation)  # Fail when built, not at first call.
    object.__setattr__(self, 'features', tuple(self.features))  # Hashable.
    super().__post_init__()

  @nn.compact
  def __call__(
      self, x: Array, train: bool = False, return_features: bool = False
  ) -> Array | tuple[Array, dict[str, Array]]:
    act = get_activation(self.activation)
    x = jnp.asarray(x, self.dtype).reshape(x.shape[0], -1)
    feats = {}
    for i, width in enumerate(self.features):
      x = act(nn.Dense(width, dtype=self.dtype, name=f'hidden_{i}')(x))
      feats[f'hidden_{i}'] = x
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    feats['pre_logits'] = x
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return (logits, feats) if return_features else logits


registry.register('mlp', MLP)
registry.register('logreg', functools.partial(MLP, features=()))
