"""Command-line entry points: flags from ``Config``, presets, clean errors.

Every experiment gets one flag per ``Config`` field (``--batch_size``,
``--num_steps``, ...) plus ``--workdir``, ``--preset`` and ``--tiny``. Values
given on the command line override the preset; ``--tiny`` applies the
preset's tiny overrides first (what CI runs). An unknown flag, an ill-typed
or out-of-range value ends the program with one line naming the flag and a
non-zero exit, before anything is written.
"""

import dataclasses
import os
import sys
from typing import Callable

from absl import app, flags

from dlresearch import config as config_lib
from dlresearch.config import Config, ConfigError

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named config plus the overrides that make its tiny (CI) form."""

  config: Config
  tiny: dict = dataclasses.field(default_factory=dict)


def define_flags(presets: dict[str, Preset], default_preset: str,
                 flag_values: flags.FlagValues = FLAGS) -> None:
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('workdir', None,
                      'Output directory (checkpoints, metrics.jsonl, TensorBoard); '
                      'rerunning with the same one resumes. '
                      'Default: runs/<experiment>_<preset>.', **fv)
  flags.DEFINE_enum('preset', default_preset, sorted(presets), 'Experiment preset.',
                    **fv)
  flags.DEFINE_bool('tiny', False, "Use the preset's tiny form (a few steps; CI).",
                    **fv)
  for name, kind in config_lib.field_types().items():
    default = getattr(Config, name, None)
    help_ = f'Overrides the preset ({kind.__name__}; Config default {default!r}).'
    if name in config_lib.CHOICES:
      help_ += f' One of: {", ".join(config_lib.CHOICES[name])}.'
    if kind is bool:
      flags.DEFINE_bool(name, None, help_, **fv)
    else:
      flags.DEFINE_string(name, None, help_, **fv)


def resolve(presets: dict[str, Preset], flag_values: flags.FlagValues = FLAGS,
            model_selects_preset: bool = False) -> Config:
  """The preset, its tiny form if ``--tiny``, then the flags given.

  With ``model_selects_preset``, ``--model=NAME`` naming a preset picks that
  preset (experiments whose presets are per-model published setups).
  """
  name = preset_name(presets, flag_values, model_selects_preset)
  preset = presets[name]
  given = flag_overrides(flag_values)
  if model_selects_preset and given.get('model') == name:
    del given['model']
  tiny = dict(preset.tiny) if flag_values.tiny else {}
  return config_lib.override(preset.config, {**tiny, **given})


def flag_overrides(flag_values: flags.FlagValues = FLAGS) -> dict:
  """The Config fields given on the command line, parsed to their types."""
  out = {}
  for field, kind in config_lib.field_types().items():
    value = flag_values[field].value
    if value is not None:
      out[field] = value if kind is bool else config_lib.parse_value(field, value)
  return out


def preset_name(presets, flag_values=FLAGS, model_selects_preset=False) -> str:
  if model_selects_preset and flag_values.model in presets:
    return flag_values.model
  return flag_values.preset


class _QuietLibraries:
  """Drops INFO chatter of orbax/tfds from the console; warnings still show."""

  NOISY = ('/orbax/', '/tensorflow_datasets/', '/grain/')

  def filter(self, record):
    return record.levelno >= 30 or not any(n in record.pathname for n in self.NOISY)


def fail(message: str, code: int = 2):
  """One line on stderr and a non-zero exit (every host stops, not just one)."""
  import jax
  from dlresearch import distributed
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    distributed.abort(f'error: {message}', code)
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def main(experiment: str, presets: dict[str, Preset], default_preset: str,
         run: Callable | None = None, model_selects_preset: bool = False) -> None:
  """Defines the flags and runs ``run(config, workdir) -> dict`` under absl.

  ``run`` defaults to ``dlresearch.train.run`` (image/feature classification
  from ``--dataset``); experiments with their own data pass a function that
  builds it and calls ``train.run``.
  """
  define_flags(presets, default_preset)

  def _main(argv):
    import logging as std_logging
    from absl import logging
    logging.get_absl_handler().addFilter(_QuietLibraries())
    std_logging.getLogger('absl').addFilter(_QuietLibraries())
    if len(argv) > 1:
      fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
    from dlresearch import train
    from dlresearch.data import datasets
    try:
      cfg = resolve(presets, model_selects_preset=model_selects_preset)
      name = preset_name(presets, FLAGS, model_selects_preset)
      workdir = FLAGS.workdir or os.path.join(
          'runs', f'{experiment}_{name}{"_tiny" if FLAGS.tiny else ""}')
      result = (run or train.run)(cfg, workdir)
    except ConfigError as e:
      fail(str(e))
    except datasets.DatasetNotFoundError as e:
      fail(str(e))
    except train.NonFiniteLossError as e:
      fail(str(e), code=3)
    if result.get('preempted'):
      print(f'stopped by SIGTERM at step {result["step"]}; checkpoint saved in '
            f'{workdir}; rerun the same command to resume', flush=True)
      return
    shown = ' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                     for k, v in result.items() if k != 'step')
    print(f'final eval at step {result["step"]}: {shown}', flush=True)

  app.run(_main)
