"""Typed, frozen experiment config: one record of everything that defines a run.

``Config`` is composed of sections, one per concept, each a frozen dataclass
declaring its fields, their help, closed choices and resume rule, and a
``validate`` for its ranges:

- engine sections (``engine.py``), whose flags every experiment has: data,
  model, optimisation, loop, evaluation, parallelism, cluster, transfer;
- option sections of problems (``options.py``) and of applications (their
  own ``dlresearch/apps/<name>/options.py``, found by a scan of the folder),
  whose flags an experiment has only when its presets use one of the
  section's data kinds: image, text, hf_text, generation, translation,
  audit; anomaly, retrieval.

``Config`` inherits every section, so call sites read ``cfg.learning_rate``
and build ``Config(model=...)`` / ``dataclasses.replace(cfg, ...)`` whatever
section a field is in. Presets are ``Config`` values; absl flags (one per
field of the sections an experiment uses, ``dlresearch.cli``) override them.
Out-of-range values raise ``ConfigError`` naming the flag (``validate``).

``WORKDIR/config.json`` records the config of a run when it starts fresh, by
section (``{"config": {"data": {"dataset": ...}, "model": {...}, ...}}``,
field names as the flags); a flat record (``{"config": {"dataset": ...}}``,
written before the sections) reads the same (``from_json``). Resuming
compares the new config with the recorded one: a changed field that changes
what the checkpoint means is refused (``check_resume``); the fields declared
``on_resume='may_change'`` (``MAY_CHANGE_ON_RESUME``) may differ.
"""

import dataclasses
import importlib
import json
import math
import os
import pathlib
import typing
from typing import Any

from dlresearch.config import engine, options
from dlresearch.config.declare import (FLOAT32_MAX, MAY_CHANGE, ConfigError,
                                        Section, all_sections, check,
                                        get as get_section,
                                        register_options, section)
from dlresearch.config.engine import profile_range

CONFIG_FILE = 'config.json'


def _import_app_options() -> None:
  """Imports ``dlresearch/apps/<name>/options.py`` of every application.

  Found by scanning the folder, as ``problems`` finds ``apps/*/problem.py``:
  the engine names no application, and an application's sections declare
  themselves (``@section``, ``register_options``) when imported. These
  modules import only ``dlresearch.config.declare``.
  """
  apps = pathlib.Path(__file__).resolve().parents[1] / 'apps'
  for path in sorted(apps.glob('*/options.py')):
    importlib.import_module(f'dlresearch.apps.{path.parent.name}.options')


class _Methods:
  """What ``Config`` adds to the fields of its sections."""

  def replace(self, **kwargs) -> 'Config':
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def validate(self) -> 'Config':
    return validate(self)


def _compose() -> type:
  """``Config``: a frozen dataclass inheriting every section.

  Bases are listed last section first: a dataclass orders its fields from
  the last base to the first, so ``dataclasses.fields(Config)`` follows the
  sections' declaration order (data, model, ..., then the applications').
  """
  _import_app_options()
  bases = (_Methods, *(s.cls for s in reversed(all_sections())))
  cls = type('Config', bases, {
      '__doc__': 'Everything one run needs. Field names are also the flag '
                 'names; the fields are those of the sections (``sections()``).',
      '__module__': __name__, '__qualname__': 'Config'})
  return dataclasses.dataclass(frozen=True)(cls)


Config = _compose()


def sections() -> tuple[Section, ...]:
  """The sections of ``Config``, in declaration order."""
  return all_sections()


def section_of(name: str) -> Section:
  """The section that declares field ``name`` (with the kinds it has now)."""
  return get_section(_SECTION_OF[name])


_SECTION_OF = {f.name: s.name for s in all_sections() for f in s.fields()}
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}

# Closed choices: a value outside these is rejected with the list of choices.
CHOICES = {name: f.metadata['choices'] for name, f in _FIELDS.items()
           if 'choices' in f.metadata}

# The fields a resumed run may change: how it runs, logs, evaluates and where
# it reads from, never what the checkpoint means. Every other field must equal
# the recorded value (``check_resume``). ``num_steps``/``num_epochs`` may
# change to extend or shorten a run; the schedule follows the new length.
# ``preset`` is provenance: the fields it set are compared one by one.
# Declared per field (``on_resume=`` in the sections).
MAY_CHANGE_ON_RESUME = frozenset(
    name for name, f in _FIELDS.items()
    if f.metadata['on_resume'] == MAY_CHANGE)


def field_help(name: str) -> str:
  return _FIELDS[name].metadata['help']


def is_flag(name: str) -> bool:
  """Whether field ``name`` is a command-line flag (``preset`` is not)."""
  return _FIELDS[name].metadata['flag']


def field_types() -> dict[str, type]:
  hints = typing.get_type_hints(Config)
  return {name: hints[name] for name in _FIELDS}


def _check_generic(cfg: Config) -> None:
  """Closed choices and float32 range, for every field that has them."""
  for name, choices in CHOICES.items():
    check(getattr(cfg, name) in choices, name,
          f'one of {", ".join(choices)}', getattr(cfg, name))
  for name, kind in field_types().items():
    value = getattr(cfg, name)
    if kind is float:  # computed in float32: beyond its range is inf
      check(math.isfinite(value) and abs(value) <= FLOAT32_MAX, name,
            'a finite number within float32 range (|x| <= 3.4e38)', value)


def validate(cfg: Config) -> Config:
  """Checks ranges and choices; raises ``ConfigError`` naming the flag.

  Choices and float ranges of every field, then each section's own
  ``validate``, then the checks that read two sections.
  """
  _check_generic(cfg)
  for entry in all_sections():
    own = vars(entry.cls).get('validate')
    if own is not None:
      own(cfg)
  # Across sections: parallelism's micro-batches split optimisation's batch.
  if cfg.batch_size % cfg.grad_accum_steps:
    raise ConfigError('grad_accum_steps', f'must divide --batch_size='
                      f'{cfg.batch_size} (got {cfg.grad_accum_steps})')
  return cfg


def check_devices(cfg: Config, device_count: int) -> None:
  """The global batches must split evenly over the devices."""
  for name in ('batch_size', 'eval_batch_size'):
    value = getattr(cfg, name) or cfg.batch_size
    per_device = value // cfg.grad_accum_steps if name == 'batch_size' else value
    if per_device % device_count:
      raise ConfigError(
          name,
          f'{value} does not divide evenly over {device_count} devices'
          + (f' in {cfg.grad_accum_steps} micro-batches' if name == 'batch_size'
             and cfg.grad_accum_steps > 1 else '')
          + f'; use a multiple of {device_count}',
      )


def parse_value(name: str, text: str) -> Any:
  """Parses a flag's text as the field's type; ConfigError if it can't."""
  kind = field_types()[name]
  try:
    if kind is bool:
      if text.lower() in ('1', 'true', 'yes'):
        return True
      if text.lower() in ('0', 'false', 'no'):
        return False
      raise ValueError(text)
    if kind is dict:
      value = json.loads(text)
      if not isinstance(value, dict):
        raise ValueError(text)
      return value
    if kind is tuple:
      return tuple(float(v) for v in text.split(',') if v.strip())
    return kind(text)
  except ValueError:
    raise ConfigError(name, f'expected {kind.__name__}, got {text!r}') from None


def override(cfg: Config, overrides: dict[str, Any]) -> Config:
  """Applies field overrides (values already typed) and validates.

  ``num_steps`` given without ``num_epochs`` wins over the preset's epochs;
  ``model_kwargs`` given as a dict is merged into the preset's.
  """
  for name in overrides:
    if name not in _FIELDS:
      raise ConfigError(name, 'unknown config field')
  overrides = dict(overrides)
  if 'model_kwargs' in overrides:
    overrides['model_kwargs'] = {**cfg.model_kwargs, **overrides['model_kwargs']}
  if 'num_epochs' in overrides and 'num_steps' not in overrides:
    overrides['num_steps'] = 0
  return validate(dataclasses.replace(cfg, **overrides))


def _flat_json(cfg: Config) -> dict[str, Any]:
  out = cfg.to_dict()
  out['step_boundaries'] = list(cfg.step_boundaries)
  return out


def to_json(cfg: Config) -> dict[str, Any]:
  """The recorded form: ``{section: {field: value}}`` (JSON types)."""
  flat = _flat_json(cfg)
  return {s.name: {f.name: flat[f.name] for f in s.fields()}
          for s in all_sections()}


def is_sectioned(data: dict[str, Any]) -> bool:
  """Whether a recorded config is by section (else flat, the older form)."""
  names = {s.name for s in all_sections()}
  return bool(data) and all(
      isinstance(v, dict) and k in names for k, v in data.items())


def flatten(data: dict[str, Any]) -> dict[str, Any]:
  """``{field: value}`` of a recorded config, sectioned or flat.

  A flat record (written before the sections) is returned as it is. A
  sectioned one is merged; a field may sit in any section (so a field that
  moves to another section still reads), but only once.
  """
  if not is_sectioned(data):
    return dict(data)
  out = {}
  for name, values in data.items():
    for field, value in values.items():
      if field in out:
        raise ConfigError(field, f'recorded in two sections ({name} and '
                          'another); the recorded config is damaged')
      out[field] = value
  return out


# Fields older versions recorded that no run reads any more (read and
# dropped): ``pretrained`` was the X-ray demo's, now a flag of its tool.
RETIRED_FIELDS = frozenset({'pretrained'})


def from_json(data: dict[str, Any]) -> Config:
  """A Config from ``to_json`` output or a flat record; unknown keys are an error."""
  if not isinstance(data, dict):
    raise TypeError(f'expected a JSON object, got {type(data).__name__}')
  if not is_sectioned(data):
    nested = sorted(k for k, v in data.items()
                    if isinstance(v, dict) and k not in _FIELDS)
    if nested:
      raise ConfigError(nested[0], 'unknown config section in the recorded '
                        'config (written by a newer dlresearch?)')
  data = flatten(data)
  for name in RETIRED_FIELDS:  # recorded by older versions; no meaning now
    data.pop(name, None)
  unknown = sorted(set(data) - set(_FIELDS))
  if unknown:
    raise ConfigError(unknown[0], 'unknown config field in the recorded '
                      'config (written by a newer dlresearch?)')
  data['step_boundaries'] = tuple(data.get('step_boundaries', ()))
  return validate(Config(**data))


def read_record(path: str) -> dict:
  """The whole ``config.json`` of a workdir (or file); {} when there is none.

  ``record['config']`` is as written (sectioned, or flat from an older
  version); ``flatten`` gives its fields.
  """
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def read_recorded(path: str) -> Config | None:
  """The config recorded in ``path`` (a workdir or a config.json), or None.

  Reads both the sectioned record and the flat one of older versions.

  Raises:
    ConfigError: the file exists but is not a recorded config.
  """
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    return from_json(record['config'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError('config', f'{path} is not a dlresearch config.json '
                      f'({type(e).__name__}: {e})') from None


def changed_fields(recorded: Config, new: Config) -> list[str]:
  """Fields that differ and may not change on resume, in field order."""
  old, cur = _flat_json(recorded), _flat_json(new)
  return [name for name in _FIELDS
          if name not in MAY_CHANGE_ON_RESUME and old[name] != cur[name]]


def check_resume(recorded: Config, new: Config, workdir: str) -> None:
  """ConfigError naming the first field whose change the checkpoints forbid."""
  changed = changed_fields(recorded, new)
  if changed:
    name = changed[0]
    old, cur = _flat_json(recorded)[name], _flat_json(new)[name]
    raise ConfigError(
        name, f'{workdir} holds checkpoints trained with --{name}={old!r}, not '
        f'{cur!r}; resume with the same value (or leave the flag out: the '
        'recorded config is used) or use a new --workdir')


# Keep the public surface small and explicit.
__all__ = ['CHOICES', 'CONFIG_FILE', 'Config', 'ConfigError',
           'MAY_CHANGE_ON_RESUME', 'RETIRED_FIELDS', 'Section',
           'changed_fields', 'check_devices',
           'check_resume', 'field_help', 'field_types', 'flatten', 'from_json',
           'is_flag', 'is_sectioned', 'override', 'parse_value',
           'profile_range', 'read_record', 'read_recorded',
           'register_options', 'section', 'section_of', 'sections', 'to_json',
           'validate']
