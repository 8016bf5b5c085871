"""How a config section is declared: fields with their help, choices and resume rule.

A section is a frozen dataclass of the fields of one concept (``data``,
``optimisation``, ``anomaly``, ...), declared with ``@section(name)``. Each
field is ``_f(default, help, choices=..., on_resume=...)``:

- ``help`` is the flag's ``--helpfull`` text;
- ``choices`` closes the field's values (checked for every section);
- ``on_resume='may_change'`` marks a field a resumed run may change (how a
  run runs, logs, evaluates and where it reads from); the default,
  ``'must_match'``, means the checkpoints depend on it;
- ``flag=False`` keeps a field off the command line (``preset``).

A section may define ``validate(self)`` for its own ranges; it runs on the
composed ``Config`` (``dlresearch.config.validate``), so it reads
``self.<its fields>`` and raises ``ConfigError`` naming the flag.

Engine sections are always flags. An option section belongs to the data
kinds that read it (``register_options``): an experiment defines its flags
only when one of its presets uses such a kind (``dlresearch.cli``).
"""

import dataclasses
from typing import Any

MAY_CHANGE = 'may_change'
MUST_MATCH = 'must_match'
FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
  """A config value is out of range; ``flag`` names the offending field."""

  def __init__(self, flag: str, message: str):
    super().__init__(f'--{flag}: {message}')
    self.flag = flag


def _f(default, help_: str, *, choices: tuple[str, ...] | None = None,
       on_resume: str = MUST_MATCH, flag: bool = True):
  """A field with its help text (shown by ``--helpfull``) and rules."""
  if on_resume not in (MAY_CHANGE, MUST_MATCH):
    raise ValueError(f'on_resume must be {MAY_CHANGE!r} or {MUST_MATCH!r}')
  metadata = {'help': help_, 'on_resume': on_resume, 'flag': flag}
  if choices is not None:
    metadata['choices'] = tuple(choices)
  if isinstance(default, dict):
    return dataclasses.field(default_factory=lambda: dict(default),
                             metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def check(cond: bool, name: str, message: str, value: Any) -> None:
  """``ConfigError`` 'must be <message> (got <value>)' unless ``cond``."""
  if not cond:
    raise ConfigError(name, f'must be {message} (got {value!r})')


@dataclasses.dataclass(frozen=True)
class Section:
  """One registered section: its name, class and the data kinds it serves.

  ``kinds`` is None for an engine section (its flags are always defined) and
  a tuple for an option section (its flags are defined when an experiment
  uses one of these kinds, or names the section in ``cli.main(options=)``).
  """

  name: str
  cls: type
  kinds: tuple[str, ...] | None = None

  @property
  def title(self) -> str:
    return (self.cls.__doc__ or self.name).strip().splitlines()[0]

  def fields(self) -> tuple[dataclasses.Field, ...]:
    """The fields this section declares itself (not inherited)."""
    own = self.cls.__dict__.get('__annotations__', {})
    return tuple(f for f in dataclasses.fields(self.cls) if f.name in own)


_SECTIONS: dict[str, Section] = {}


def section(name: str):
  """Class decorator: a frozen dataclass section registered as ``name``."""
  def wrap(cls):
    if name in _SECTIONS:
      raise ValueError(f'config section {name!r} is declared twice')
    cls = dataclasses.dataclass(frozen=True)(cls)
    _SECTIONS[name] = Section(name, cls)
    return cls
  return wrap


def register_options(section_cls: type, kinds: tuple[str, ...] = ()) -> None:
  """Makes ``section_cls`` an option section of the data kinds ``kinds``.

  Its flags are then defined only by experiments that use one of ``kinds``
  (and by those that ask for it by name). Calling it again adds kinds, so a
  problem module can claim an existing section for its own kind.
  """
  for entry in _SECTIONS.values():
    if entry.cls is section_cls:
      before = entry.kinds or ()
      _SECTIONS[entry.name] = dataclasses.replace(
          entry, kinds=before + tuple(k for k in kinds if k not in before))
      return
  raise ValueError(f'{section_cls.__name__} is not a config section '
                   '(declare it with @section and compose it into Config)')


def all_sections() -> tuple[Section, ...]:
  """Every section, in declaration order."""
  return tuple(_SECTIONS.values())


def get(name: str) -> Section:
  return _SECTIONS[name]
