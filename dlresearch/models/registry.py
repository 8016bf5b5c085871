"""Model registry: build any model by name.

Every factory takes keyword arguments only and returns a flax linen Module used
as a pure function (``init``/``apply``).

Contract for classifiers (images or token sequences)::

    logits = model.apply(variables, x, train=False)
    logits, feats = model.apply(variables, x, train=False, return_features=True)

``feats`` is a dict of named intermediates that always holds ``'pre_logits'``.
Models with batch norm keep statistics in the ``'batch_stats'`` collection;
models with dropout draw from the ``'dropout'`` rng stream.
"""

from typing import Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  """Decorator: register ``factory(**kwargs) -> nn.Module`` under ``name``."""

  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f'model {name!r} is registered twice')
    _REGISTRY[name] = factory
    return factory

  return wrap


def build(name: str, **kwargs) -> nn.Module:
  """Builds the model registered as ``name`` with ``kwargs``."""
  _import_all()
  if name not in _REGISTRY:
    raise KeyError(f'unknown model {name!r}; known models: {", ".join(names())}')
  return _REGISTRY[name](**kwargs)


def names() -> list[str]:
  _import_all()
  return sorted(_REGISTRY)


def _import_all():
  # Importing the model modules runs their @register decorators.
  import importlib
  import pkgutil

  import dlresearch.models as pkg

  for info in pkgutil.iter_modules(pkg.__path__):
    if info.name != 'registry':
      importlib.import_module(f'dlresearch.models.{info.name}')


def fields(name: str) -> frozenset[str]:
  """The keyword arguments the model registered as ``name`` accepts."""
  import inspect
  _import_all()
  if name not in _REGISTRY:
    raise KeyError(f'unknown model {name!r}; known models: {", ".join(names())}')
  return frozenset(inspect.signature(_REGISTRY[name]).parameters)


def accepts(name: str, field: str) -> bool:
  return field in fields(name)
