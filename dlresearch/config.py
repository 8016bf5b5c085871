"""Typed, frozen experiment config and its command-line overrides.

One flat ``Config`` holds everything a run needs. Presets are ``Config``
values; absl flags (one per field, generated from the dataclass) override them.
Unknown flags and ill-typed values are rejected by absl; out-of-range values
raise ``ConfigError`` naming the flag.
"""

import dataclasses
import json
import typing
from typing import Any

# Closed choices: a value outside these is rejected with the list of choices.
CHOICES = {
    'optimizer': ('sgd', 'nesterov', 'adam', 'adamw'),
    'schedule': ('constant', 'cosine', 'step'),
    'loss': ('softmax_xent', 'sigmoid_xent', 'mse'),
    'augment': ('none', 'flip', 'pad_crop_flip', 'crop_flip'),
    'normalize': ('none', 'scale', 'imagenet', 'standardize'),
    'pipeline': ('auto', 'memory', 'grain'),
    'parallelism': ('jit', 'pmap'),
    'dtype': ('float32', 'bfloat16'),
}


class ConfigError(ValueError):
  """A config value is out of range; ``flag`` names the offending field."""

  def __init__(self, flag: str, message: str):
    super().__init__(f'--{flag}: {message}')
    self.flag = flag


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run needs. Field names are also the flag names."""

  # Data.
  dataset: str = 'digits'  # a TFDS name (offline builders are registered)
  data_dir: str = '~/tensorflow_datasets'
  manual_dir: str = ''  # raw files for builders that need them
  train_split: str = ''  # '' = the dataset's train split
  eval_split: str = ''  # '' = the dataset's test split (else validation)
  pipeline: str = 'auto'  # auto: in memory when the split fits, else grain
  grain_workers: int = 0  # grain multiprocessing workers (0 = threads only)
  grain_threads: int = 2
  image_size: int = 0  # 0 = keep the stored size (fixed-size datasets)
  augment: str = 'none'
  normalize: str = 'scale'
  # Model.
  model: str = 'lenet5'
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  dtype: str = 'float32'  # computation dtype; params stay float32
  # Optimisation.
  batch_size: int = 128  # global, across all devices and processes
  eval_batch_size: int = 0  # 0 = batch_size
  num_steps: int = 0  # > 0 overrides num_epochs
  num_epochs: float = 10.0
  optimizer: str = 'adam'
  learning_rate: float = 1e-3
  momentum: float = 0.9  # SGD momentum / Adam b1
  weight_decay: float = 0.0  # skips biases and norm parameters
  schedule: str = 'constant'
  warmup_steps: int = 0
  step_boundaries: tuple = (0.3333, 0.6667, 0.8889)  # fractions of training
  step_decay: float = 0.1
  grad_clip_norm: float = 0.0  # 0 = no clipping
  loss: str = 'softmax_xent'
  label_smoothing: float = 0.0
  freeze: str = ''  # regex over parameter paths ('/'-joined) to keep fixed
  # Run.
  seed: int = 0
  log_every: int = 50
  eval_every: int = 0  # 0 = only at the end
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  eval_only: bool = False
  init_from: str = ''  # a workdir or checkpoint dir to initialise params from
  # Parallelism.
  mesh: str = ''  # e.g. 'data:8' or 'data:4,fsdp:2'; '' = all on data
  parallelism: str = 'jit'
  grad_accum_steps: int = 1
  remat: bool = False
  coordinator_address: str = ''
  num_processes: int = 0
  process_id: int = -1
  heartbeat_timeout_s: int = 60
  init_timeout_s: int = 300

  def replace(self, **kwargs) -> 'Config':
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _positive(cfg: Config, name: str):
  value = getattr(cfg, name)
  if not value > 0:
    raise ConfigError(name, f'must be > 0 (got {value!r})')


def validate(cfg: Config) -> Config:
  """Checks ranges and choices; raises ``ConfigError`` naming the flag."""
  for name, choices in CHOICES.items():
    if getattr(cfg, name) not in choices:
      raise ConfigError(
          name, f'must be one of {", ".join(choices)} (got {getattr(cfg, name)!r})'
      )
  for name in ('batch_size', 'learning_rate', 'log_every', 'checkpoint_every',
               'keep_checkpoints', 'grad_accum_steps', 'heartbeat_timeout_s',
               'init_timeout_s'):
    _positive(cfg, name)
  if cfg.num_steps < 0:
    raise ConfigError('num_steps', f'must be > 0 (got {cfg.num_steps})')
  if cfg.num_steps == 0 and not cfg.num_epochs > 0:
    raise ConfigError('num_epochs', f'must be > 0 (got {cfg.num_epochs})')
  for name in ('eval_batch_size', 'eval_every', 'warmup_steps', 'image_size',
               'grain_workers', 'weight_decay', 'grad_clip_norm'):
    if getattr(cfg, name) < 0:
      raise ConfigError(name, f'must be >= 0 (got {getattr(cfg, name)})')
  if not 0 <= cfg.label_smoothing < 1:
    raise ConfigError('label_smoothing', f'must be in [0, 1) (got {cfg.label_smoothing})')
  if cfg.batch_size % cfg.grad_accum_steps:
    raise ConfigError(
        'grad_accum_steps',
        f'must divide --batch_size={cfg.batch_size} (got {cfg.grad_accum_steps})',
    )
  if cfg.coordinator_address and (cfg.num_processes <= 0 or cfg.process_id < 0):
    raise ConfigError(
        'coordinator_address', 'needs --num_processes and --process_id as well'
    )
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


def field_types() -> dict[str, type]:
  hints = typing.get_type_hints(Config)
  return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


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
  known = field_types()
  for name in overrides:
    if name not in known:
      raise ConfigError(name, 'unknown config field')
  overrides = dict(overrides)
  if 'model_kwargs' in overrides:
    overrides['model_kwargs'] = {**cfg.model_kwargs, **overrides['model_kwargs']}
  if 'num_epochs' in overrides and 'num_steps' not in overrides:
    overrides['num_steps'] = 0
  return validate(dataclasses.replace(cfg, **overrides))


def to_json(cfg: Config) -> dict[str, Any]:
  out = cfg.to_dict()
  out['step_boundaries'] = list(cfg.step_boundaries)
  return out


def from_json(data: dict[str, Any]) -> Config:
  data = dict(data)
  data['step_boundaries'] = tuple(data.get('step_boundaries', ()))
  return validate(Config(**{k: v for k, v in data.items() if k in field_types()}))


# Keep the public surface small and explicit.
__all__ = ['CHOICES', 'Config', 'ConfigError', 'check_devices', 'from_json',
           'override', 'parse_value', 'to_json', 'validate']
