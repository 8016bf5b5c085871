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


def define_flags(presets: dict[str, Preset], default_preset: str) -> None:
  flags.DEFINE_string('workdir', None,
                      'Output directory (checkpoints, metrics.jsonl, TensorBoard); '
                      'rerunning with the same one resumes. '
                      'Default: runs/<experiment>_<preset>.')
  flags.DEFINE_enum('preset', default_preset, sorted(presets), 'Experiment preset.')
  flags.DEFINE_bool('tiny', False, "Use the preset's tiny form (a few steps; CI).")
  for name, kind in config_lib.field_types().items():
    default = getattr(Config, name, None)
    help_ = f'Overrides the preset ({kind.__name__}; Config default {default!r}).'
    if name in config_lib.CHOICES:
      help_ += f' One of: {", ".join(config_lib.CHOICES[name])}.'
    if kind is bool:
      flags.DEFINE_bool(name, None, help_)
    else:
      flags.DEFINE_string(name, None, help_)


def resolve(presets: dict[str, Preset]) -> Config:
  """The preset, its tiny form if ``--tiny``, then the flags given."""
  preset = presets[FLAGS.preset]
  overrides = dict(preset.tiny) if FLAGS.tiny else {}
  for name, kind in config_lib.field_types().items():
    value = FLAGS[name].value
    if value is not None:
      overrides[name] = value if kind is bool else config_lib.parse_value(name, value)
  return config_lib.override(preset.config, overrides)


def fail(message: str, code: int = 2):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def main(experiment: str, presets: dict[str, Preset], default_preset: str,
         run: Callable | None = None) -> None:
  """Defines the flags and runs ``run(config, workdir) -> dict`` under absl.

  ``run`` defaults to ``dlresearch.train.run`` (image/feature classification
  from ``--dataset``); experiments with their own data pass a function that
  builds it and calls ``train.run``.
  """
  define_flags(presets, default_preset)

  def _main(argv):
    if len(argv) > 1:
      fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
    from dlresearch import train
    from dlresearch.data import datasets
    try:
      cfg = resolve(presets)
      workdir = FLAGS.workdir or os.path.join(
          'runs', f'{experiment}_{FLAGS.preset}{"_tiny" if FLAGS.tiny else ""}')
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
