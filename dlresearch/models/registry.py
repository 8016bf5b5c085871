"""Model registry: build any model by name.

A model is registered once, as the flax linen Module class itself or a
``functools.partial`` of one (a size variant, as flax's imagenet example
writes ``ResNet18 = functools.partial(ResNet, stage_sizes=..., ...)``)::

    registry.register('resnet18', ResNet18)
    model = registry.build('resnet18', num_classes=10, remat=True)

Its keyword arguments are the module's dataclass fields, so nothing is
declared twice. A partial's keywords are the variant's defaults: ``build`` may
override them, as calling the partial would. Checks of the values live in the
module (``__post_init__``), so a bad value fails when the model is built.

Contract for classifiers (images or token sequences)::

    logits = model.apply(variables, x, train=False)
    logits, feats = model.apply(variables, x, train=False, return_features=True)

``feats`` is a dict of named intermediates that always holds ``'pre_logits'``.
Models with batch norm keep statistics in the ``'batch_stats'`` collection;
models with dropout draw from the ``'dropout'`` rng stream. Every model takes
``dtype`` (the computation dtype; parameters stay float32).
"""

from collections.abc import Iterable
import dataclasses
import functools
import importlib
import pkgutil

import flax.linen as nn

Model = type[nn.Module] | functools.partial

_REGISTRY: dict[str, Model] = {}
_NOT_ARGUMENTS = frozenset({'parent', 'name'})  # flax's own Module fields


class UnknownArgumentError(TypeError):
  """``build`` got a keyword argument that the model does not have."""

  def __init__(self, name: str, arg: str, accepted: Iterable[str]):
    self.name, self.arg, self.accepted = name, arg, frozenset(accepted)
    super().__init__(
        f'model {name!r} has no argument {arg!r}; it accepts: '
        f'{", ".join(sorted(self.accepted))}'
    )


def _module_class(model: Model) -> type[nn.Module]:
  return model.func if isinstance(model, functools.partial) else model


def _class_fields(cls: type[nn.Module]) -> dict[str, dataclasses.Field]:
  return {f.name: f for f in dataclasses.fields(cls)
          if f.init and f.name not in _NOT_ARGUMENTS}


def register(name: str, model: Model) -> Model:
  """Registers a Module class, or a keyword-only partial of one, as ``name``."""
  cls = _module_class(model)
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise TypeError(f'model {name!r}: {model!r} is not a flax Module class or a partial of one')
  if isinstance(model, functools.partial):
    unknown = set(model.keywords) - set(_class_fields(cls))
    if model.args or unknown:
      raise TypeError(f'model {name!r}: a partial may only set fields of {cls.__name__} '
                      f'by keyword; got positional {model.args} / unknown {sorted(unknown)}')
  if name in _REGISTRY:
    raise ValueError(f'model {name!r} is registered twice')
  _REGISTRY[name] = model
  return model


def _lookup(name: str) -> Model:
  _import_all()
  if name not in _REGISTRY:
    raise KeyError(f'unknown model {name!r}; known models: {", ".join(names())}')
  return _REGISTRY[name]


def fields(name: str) -> frozenset[str]:
  """The keyword arguments model ``name`` accepts (its Module's fields)."""
  return frozenset(_class_fields(_module_class(_lookup(name))))


def accepts(name: str, field: str) -> bool:
  """Whether model ``name`` takes the keyword argument ``field``."""
  return field in fields(name)


def build(name: str, **kwargs) -> nn.Module:
  """Builds the model registered as ``name`` with ``kwargs``.

  Raises KeyError for an unknown name, ``UnknownArgumentError`` for an
  argument the model does not have, TypeError for a missing required one and
  ValueError (from the module) for a bad value.
  """
  model = _lookup(name)
  accepted = _class_fields(_module_class(model))
  for arg in kwargs:
    if arg not in accepted:
      raise UnknownArgumentError(name, arg, accepted)
  preset = model.keywords if isinstance(model, functools.partial) else {}
  missing = [f for f, spec in accepted.items()
             if f not in kwargs and f not in preset
             and spec.default is dataclasses.MISSING
             and spec.default_factory is dataclasses.MISSING]
  if missing:
    raise TypeError(f'model {name!r} needs {", ".join(missing)}')
  return model(**kwargs)


def names() -> list[str]:
  _import_all()
  return sorted(_REGISTRY)


@functools.cache
def _import_all() -> None:
  # Importing the model modules runs their register() calls.
  import dlresearch.models as pkg  # pylint: disable=g-import-not-at-top

  for info in pkgutil.iter_modules(pkg.__path__):
    if info.name != 'registry':
      importlib.import_module(f'dlresearch.models.{info.name}')

