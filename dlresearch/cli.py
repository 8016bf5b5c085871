"""Command-line entry points: flags from ``Config``, presets, clean errors.

Every experiment gets one flag per field of the config sections it uses
(``--batch_size``, ``--num_steps``, ...; ``--helpfull`` lists them by
section, each with its meaning, format and range and the preset's value)
plus ``--workdir``, ``--preset``, ``--tiny`` and ``--config``:

- the engine sections (data, model, optimisation, loop, evaluation,
  parallelism, cluster, transfer) always;
- an option section (image, text, generation, translation, audit, anomaly,
  retrieval, ...; ``dlresearch/config/options.py``) when it belongs to a
  data kind that one of the experiment's presets uses (its ``data_kind``,
  or one named by ``--data_kind=`` on the command line), or when the
  experiment names it in ``main(options=...)``. A field without a flag keeps
  its preset's (or recorded) value.

The config of a run is, in order:

1. ``--config=PATH`` (a recorded ``config.json``: replays that run), else the
   preset, with its tiny overrides under ``--tiny``;
2. when ``--workdir`` already holds a run and neither ``--preset``,
   ``--tiny`` nor ``--config`` is given: that run's recorded config (so
   ``--eval_only``, ``--sample`` and resuming need no training flags);
3. the flags given on the command line.

``train.run`` then refuses a resume whose config changes a field the
checkpoints depend on. An unknown flag, an ill-typed or out-of-range value
ends the program with one line naming the flag and a non-zero exit, before
anything is written; flags, ``--model``, ``--data_kind`` and ``--dataset``
are checked before jax, flax or any data is loaded (``check_names``; a
misspelt name or flag gets "did you mean", an official TFDS dataset that
needs TensorFlow gets the offline ones), so a typo costs about a second. The cluster (``jax.distributed``) is initialised here,
once per run.
"""

import ast
import dataclasses
import functools
import os
import pathlib
import re
import shlex
import sys
import textwrap
from typing import Callable, Sequence

from dlresearch import startup
startup.install_for_program()  # Ctrl-C/SIGTERM from here on: one line
from absl import app, flags  # noqa: E402  pylint: disable=g-import-not-at-top

from dlresearch import config as config_lib
from dlresearch.config import Config, ConfigError

FLAGS = flags.FLAGS
RUN_FLAGS = ('workdir', 'preset', 'tiny', 'config')


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named config plus the overrides that make its tiny (CI) form."""

  config: Config
  tiny: dict = dataclasses.field(default_factory=dict)


def _preset_in_argv(argv, presets, default_preset, model_selects_preset):
  """The preset named on the command line (for --helpfull's defaults)."""
  name = default_preset
  for arg in argv[1:]:
    for flag in ('--preset=',) + (('--model=',) if model_selects_preset else ()):
      if arg.startswith(flag) and arg[len(flag):] in presets:
        name = arg[len(flag):]
  return name


_PACKAGE = pathlib.Path(__file__).resolve().parent
_REGISTER_MODEL = re.compile(r"registry\.register\(\s*(f?)'([^'{}]*(?:\{\w+\}[^'{}]*)*)'")
_REGISTER_PROBLEM = re.compile(r"(?m)^@problems\.register\(\s*'([^']+)'\s*\)")


def _expand_loops(source: str) -> list[str]:
  """``register(f'{v}_x', ...)`` inside a module-level ``for v in NAME:``
  (``NAME`` a literal dict/tuple/list of the module): the names it makes."""
  tree = ast.parse(source)
  literals = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
        node.targets[0], ast.Name):
      try:
        literals[node.targets[0].id] = ast.literal_eval(node.value)
      except (ValueError, TypeError, SyntaxError):
        pass  # not a literal: no names can come from it
  out = []
  for node in tree.body:
    if not (isinstance(node, ast.For) and isinstance(node.target, ast.Name)
            and isinstance(node.iter, ast.Name) and node.iter.id in literals):
      continue
    for call in ast.walk(node):
      if (isinstance(call, ast.Call) and call.args and
          isinstance(call.args[0], ast.JoinedStr)):
        text = ast.unparse(call.args[0])
        for value in literals[node.iter.id]:
          out.append(eval(text, {'__builtins__': {}},  # pylint: disable=eval-used
                          {node.target.id: value}))
  return out


@functools.cache
def model_names() -> tuple[str, ...]:
  """The model registry's names, read from ``dlresearch/models/*.py``'s
  ``registry.register('name', ...)`` calls without importing them (flax and
  jax take seconds); ``tests/unit/test_cli.py`` checks it against
  ``registry.names()``."""
  names = set()
  for path in sorted((_PACKAGE / 'models').glob('*.py')):
    text = path.read_text(encoding='utf-8')
    for is_f, name in _REGISTER_MODEL.findall(text):
      if not is_f:
        names.add(name)
    if "register(f'" in text:
      names.update(_expand_loops(text))
  return tuple(sorted(names))


@functools.cache
def data_kind_names() -> tuple[str, ...]:
  """The problem registry's names (``@problems.register('name')`` in
  ``problems/*.py`` and ``apps/*/problem.py``), read without importing them."""
  paths = [*(_PACKAGE / 'problems').glob('*.py'),
           *(_PACKAGE / 'apps').glob('*/problem.py')]
  return tuple(sorted({name for path in paths for name in
                       _REGISTER_PROBLEM.findall(path.read_text('utf-8'))}))


def _lists() -> str:
  return (f' Data kinds: {", ".join(data_kind_names())}. Models: '
          f'{", ".join(model_names())}.')


# Data kinds whose --dataset is a TFDS name read by data/datasets.py (the
# others: HF hub names, an application's own tables).
TFDS_KINDS = ('classification', 'lm', 'text_classification')


def check_names(cfg: Config, extra_models: Sequence[str] = ()) -> None:
  """``--model``, ``--data_kind`` and ``--dataset``, checked before jax loads.

  A ``ConfigError`` (or ``names.NotPrepared``) naming the flag, with "did you
  mean" for a misspelt name. A model registered by code already imported
  (a user's module) counts too.
  """
  from dlresearch.data import names  # pylint: disable=g-import-not-at-top
  kinds = data_kind_names()
  if cfg.data_kind not in kinds:
    raise ConfigError('data_kind', f'unknown data kind {cfg.data_kind!r}'
                      f'{names.did_you_mean(cfg.data_kind, kinds) or ";"} '
                      f'known: {", ".join(kinds)}')
  models = set(model_names()) | set(extra_models)
  registry = sys.modules.get('dlresearch.models.registry')
  if registry is not None:
    models |= set(getattr(registry, '_REGISTRY', {}))
  if cfg.model not in models:
    raise ConfigError('model', f'unknown model {cfg.model!r}'
                      f'{names.did_you_mean(cfg.model, models) or ";"} '
                      f'known: {", ".join(sorted(models))}')
  if cfg.data_kind in TFDS_KINDS:
    names.check(cfg.dataset, cfg.data_dir)


def _kinds_in_argv(argv) -> tuple[str, ...]:
  """Data kinds named by ``--data_kind=K`` (or ``--data_kind K``) in argv."""
  kinds = []
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith(('--data_kind=', '-data_kind=')):
      kinds.append(arg.split('=', 1)[1])
    elif arg in ('--data_kind', '-data_kind') and i + 1 < len(argv):
      kinds.append(argv[i + 1])
  return tuple(kinds)


def flag_sections(presets: dict[str, Preset], kinds: Sequence[str] = (),
                  options: Sequence[str] = ()) -> list[config_lib.Section]:
  """The config sections whose flags an experiment defines.

  Engine sections, plus each option section of a data kind that a preset
  (or its tiny form) uses or that ``kinds`` names, plus those ``options``
  names.
  """
  used = set(kinds)
  for preset in presets.values():
    used.add(preset.config.data_kind)
    used.add(preset.tiny.get('data_kind', preset.config.data_kind))
  names = {s.name for s in config_lib.sections()}
  for name in options:
    if name not in names:
      raise ValueError(f'unknown config section {name!r}; one of '
                       f'{", ".join(sorted(names))}')
  return [s for s in config_lib.sections()
          if s.kinds is None or used & set(s.kinds) or s.name in options]


def _group(entry: config_lib.Section) -> str:
  """The ``--helpfull`` heading of a section's flags (absl's module name)."""
  what = entry.title.split(':', 1)[-1].strip().rstrip('.')
  if entry.kinds:
    what += f'; data kind{"s" if len(entry.kinds) > 1 else ""} ' + (
        ', '.join(entry.kinds))
  return f'{_GROUP_PREFIX}{entry.name} ({what})'


_GROUP_PREFIX = 'dlresearch.config.'


def define_flags(presets: dict[str, Preset], default_preset: str,
                 flag_values: flags.FlagValues = FLAGS,
                 shown_preset: str | None = None, kinds: Sequence[str] = (),
                 options: Sequence[str] = ()) -> None:
  """One flag per field of ``flag_sections``; help shows ``shown_preset``'s values.

  ``--helpfull`` lists the flags under one heading per section.
  """
  fv = dict(flag_values=flag_values)
  shown = shown_preset or default_preset
  flags.DEFINE_string('workdir', None,
                      'Output directory (config.json, checkpoints, '
                      'metrics.jsonl, TensorBoard); rerunning with the same '
                      'one resumes. Default: runs/<experiment>_<preset>.', **fv)
  flags.DEFINE_enum('preset', default_preset, sorted(presets),
                    'Experiment preset (its docstring: command, hardware, '
                    'measured result).', **fv)
  flags.DEFINE_bool('tiny', False, "Use the preset's tiny form (a few steps; "
                    'what CI runs).', **fv)
  flags.DEFINE_string('config', None, 'Replay a run: start from the config '
                      'recorded in this config.json (e.g. '
                      'runs/x/config.json) instead of a preset; other flags '
                      'still override it.', **fv)
  base = presets[shown].config
  types = config_lib.field_types()
  for entry in flag_sections(presets, kinds, options):
    group = dict(fv, module_name=_group(entry))
    for field in entry.fields():
      name, kind = field.name, types[field.name]
      if not config_lib.is_flag(name):
        continue
      help_ = config_lib.field_help(name)
      if name in config_lib.CHOICES:
        help_ += f' One of: {", ".join(config_lib.CHOICES[name])}.'
      if name == 'model':
        help_ += _lists()
      value = getattr(base, name)
      if kind is tuple:
        value = ','.join(str(v) for v in value)
      help_ += f' [{kind.__name__}; preset {shown}: {value!r}]'
      if kind is bool:
        flags.DEFINE_bool(name, None, help_, **group)
      else:
        flags.DEFINE_string(name, None, help_, **group)


def defined_fields(flag_values: flags.FlagValues = FLAGS) -> list[str]:
  """The Config fields ``define_flags`` made flags of in ``flag_values``."""
  return [name for name in config_lib.field_types()
          if (flag_values.find_module_defining_flag(name) or '').startswith(
              _GROUP_PREFIX)]


def flag_overrides(flag_values: flags.FlagValues = FLAGS) -> dict:
  """The Config fields given on the command line, parsed to their types."""
  out = {}
  types = config_lib.field_types()
  for field in defined_fields(flag_values):
    value = flag_values[field].value
    if value is not None:
      out[field] = (value if types[field] is bool else
                    config_lib.parse_value(field, value))
  return out


def preset_name(presets, flag_values=FLAGS, model_selects_preset=False) -> str:
  if model_selects_preset and flag_values.model in presets:
    return flag_values.model
  return flag_values.preset


def resolve(presets: dict[str, Preset], flag_values: flags.FlagValues = FLAGS,
            model_selects_preset: bool = False) -> Config:
  """``--config`` or the preset (tiny form if ``--tiny``), then the flags.

  With ``model_selects_preset``, ``--model=NAME`` naming a preset picks that
  preset (experiments whose presets are per-model published setups).
  """
  given = flag_overrides(flag_values)
  if flag_values.config:
    base = config_lib.read_recorded(flag_values.config)
    if base is None:
      raise ConfigError('config', f'{flag_values.config} does not exist')
    return config_lib.override(base, given)
  name = preset_name(presets, flag_values, model_selects_preset)
  preset = presets[name]
  if model_selects_preset and given.get('model') == name:
    del given['model']
  tiny = dict(preset.tiny) if flag_values.tiny else {}
  return config_lib.override(preset.config.replace(preset=name),
                             {**tiny, **given})


def resolve_for_workdir(presets: dict[str, Preset], workdir: str,
                        flag_values: flags.FlagValues = FLAGS,
                        model_selects_preset: bool = False) -> Config:
  """``resolve``, or the workdir's recorded config plus the flags given.

  The recorded config is the base when the workdir has one and the command
  line names no ``--preset``, ``--tiny`` or ``--config``.
  """
  explicit = any(flag_values[f].present for f in ('preset', 'tiny', 'config'))
  if model_selects_preset and flag_values['model'].present and (
      flag_values.model in presets):
    explicit = True
  recorded = config_lib.read_recorded(workdir)
  if recorded is None or explicit:
    return resolve(presets, flag_values, model_selects_preset)
  return config_lib.override(recorded, flag_overrides(flag_values))


def fail(message: str, code: int = 2):
  """One line on stderr and a non-zero exit (every host stops, not just one)."""
  if 'jax' in sys.modules:  # else no cluster yet: no need to load jax
    import jax  # pylint: disable=g-import-not-at-top
    from dlresearch import distributed  # pylint: disable=g-import-not-at-top
    if jax.distributed.is_initialized() and jax.process_count() > 1:
      distributed.abort(f'error: {message}', code)
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def _flag_errors() -> dict:
  """Low-layer exception types -> the flag they are about."""
  from dlresearch import optim, parallel  # pylint: disable=g-import-not-at-top
  return {parallel.MeshError: 'mesh', parallel.StrategyError: 'parallelism',
          optim.FreezeError: 'freeze'}


def _one_line_errors() -> tuple:
  """Exceptions whose message is already one self-explaining line."""
  from dlresearch import checkpoint, distributed, workdir  # pylint: disable=g-import-not-at-top
  from dlresearch import logging as log_lib  # pylint: disable=g-import-not-at-top
  from dlresearch.data import datasets, pipeline  # pylint: disable=g-import-not-at-top
  return (datasets.DatasetNotFoundError, workdir.WorkdirError,
          checkpoint.CheckpointError, log_lib.MetricsWriteError,
          pipeline.ExampleError, pipeline.WorkerError,
          distributed.ClusterError)


def result_lines(result: dict, width: int = 100) -> list[str]:
  """The final eval as a short block: the plain metrics on the first line,
  then one indented line per prefix of the ``a/b/metric`` keys (``group/sex=
  Female: accuracy=... tpr=...``, ``fairness/sex: ...``, ``baseline/...``),
  wrapped at ``width``."""
  def shown(k, v):
    return f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
  plain, groups = [], {}
  for k, v in result.items():
    if k == 'step' or isinstance(v, str):
      continue
    if '/' in k:
      prefix, name = k.rsplit('/', 1)
      groups.setdefault(prefix, []).append(shown(name, v))
    else:
      plain.append(shown(k, v))
  lines = [f'final eval at step {result["step"]}: {" ".join(plain)}'.rstrip()]
  for prefix, items in groups.items():
    lines += textwrap.wrap(f'{prefix}: {" ".join(items)}', width,
                           initial_indent='  ', subsequent_indent='    ',
                           break_long_words=False, break_on_hyphens=False)
  return lines


def print_result(result: dict) -> None:
  """The final eval block; text values (a sample) as blocks after it."""
  print('\n'.join(result_lines(result)), flush=True)
  for key, value in result.items():
    if isinstance(value, str):
      print(f'--- {key} at step {result["step"]} ---\n{value}\n---', flush=True)


def _without_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
  """``argv`` less ``--name=value`` / ``--name value`` for each of ``names``."""
  out, skip = [], False
  for arg in argv:
    if skip:
      skip = False
      continue
    flag = arg.split('=', 1)[0]
    if flag in [f'--{n}' for n in names]:
      skip = '=' not in arg
      continue
    out.append(arg)
  return out


def retry_advice(experiment: str, argv: Sequence[str], workdir: str,
                 cfg: Config) -> str:
  """After a divergence: a command that retries with half the learning rate.

  A workdir keeps the config it was started with (``check_resume``), so a
  lower ``--learning_rate`` goes to a new workdir, starting (``--init_from``)
  from this one's last checkpoint when it has one. A workdir that the failed
  start removed again (nothing was trained) can be reused as it is.
  """
  lr = f'{cfg.learning_rate / 2:g}'
  saved = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(n) for n in (os.listdir(saved) if os.path.isdir(saved)
                                  else ()) if n.isdigit())
  fresh = not os.path.exists(os.path.join(workdir, 'config.json'))
  args = _without_flags(argv, ('workdir', 'learning_rate', 'init_from'))
  new = workdir if fresh else f'{workdir.rstrip("/")}_lr{lr}'
  command = ['python', '-m', f'experiments.{experiment}', *args,
             f'--workdir={new}', f'--learning_rate={lr}']
  if steps and not fresh:
    command.append(f'--init_from={os.path.join(workdir, "checkpoints", str(steps[-1]))}')
  where = ('' if fresh else ' (a workdir keeps its learning rate, so a new '
           'one' + (f', starting from step {steps[-1]}' if steps else '') + ')')
  return (f'To retry with half the learning rate{where}: '
          f'{shlex.join(command)} (or set --grad_clip_norm)')


def main(experiment: str, presets: dict[str, Preset], default_preset: str,
         run: Callable | None = None, model_selects_preset: bool = False,
         options: Sequence[str] = (), extra_models: Sequence[str] = ()) -> None:
  """Defines the flags and runs ``run(config, workdir) -> dict`` under absl.

  ``run`` defaults to ``dlresearch.train.run`` (the data kind builds the
  data); an experiment passes its own only to wrap the run (e.g. a table of
  runs). The option sections whose flags are defined follow the presets'
  data kinds (``flag_sections``); ``options`` names more, for the fields an
  experiment's own ``run`` reads. Flags, ``--model``, ``--data_kind`` and
  ``--dataset`` are checked before jax is imported (``check_names``);
  ``extra_models`` are more ``--model`` values that ``run`` understands.
  """
  startup.install()
  define_flags(presets, default_preset, shown_preset=_preset_in_argv(
      sys.argv, presets, default_preset, model_selects_preset),
               kinds=_kinds_in_argv(sys.argv), options=options)

  def _main(argv):
    from dlresearch import logging as log_lib  # pylint: disable=g-import-not-at-top
    log_lib.quiet_libraries()  # orbax's routine warnings, tfds/grain INFO
    if len(argv) > 1:
      fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
    from dlresearch import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    from dlresearch.data import names  # pylint: disable=g-import-not-at-top
    try:  # all before jax, flax and the data load (seconds): a typo fails fast
      name = preset_name(presets, FLAGS, model_selects_preset)
      workdir = FLAGS.workdir or os.path.join(
          'runs', f'{experiment}_{name}{"_tiny" if FLAGS.tiny else ""}')
      workdir_lib.check_workdir(workdir)  # before reading its config.json
      cfg = resolve_for_workdir(presets, workdir, FLAGS, model_selects_preset)
      check_names(cfg, extra_models)
    except (ConfigError, names.NotPrepared, workdir_lib.WorkdirError) as e:
      fail(str(e))
    from dlresearch import distributed, train  # pylint: disable=g-import-not-at-top
    errors, plain = _flag_errors(), _one_line_errors()
    try:
      distributed.initialize(
          cfg.coordinator_address or None, cfg.num_processes or None,
          cfg.process_id if cfg.process_id >= 0 else None,
          heartbeat_timeout_s=cfg.heartbeat_timeout_s,
          init_timeout_s=cfg.init_timeout_s)
      startup.end()  # train.run's own handler takes over (checkpoints)
      result = (run or train.run)(cfg, workdir)
    except ConfigError as e:
      fail(str(e))
    except plain as e:
      fail(str(e))
    except train.NonFiniteLossError as e:
      fail(f'{e}. {retry_advice(experiment, sys.argv[1:], workdir, cfg)}',
           code=3)
    except tuple(errors) as e:
      fail(f'--{errors[type(e)]}: {e}')
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, no checkpoint
      fail('interrupted (second Ctrl-C): stopped without checkpointing; '
           'rerun the same command to resume from the last checkpoint', 130)
    except OSError as e:  # a full disk: one line (workdir.out_of_space)
      if not workdir_lib.out_of_space(e):
        raise
      fail(workdir_lib.out_of_space(e))
    if result.get('preempted'):
      print(f'stopped by {result["preempted"]} at step {result["step"]}; '
            f'checkpoint saved in {workdir}; rerun the same command to resume',
            flush=True)
      if result['preempted'] == 'SIGINT':
        sys.exit(130)  # the shell's convention for Ctrl-C
      return
    print_result(result)

  app.run(_main, flags_parser=_parse_flags)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's parse, but an unknown or malformed flag is one ``error:`` line
  (absl's own "Did you mean" kept) and exit status 2, as every bad input."""
  try:
    return FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    from dlresearch.data import names  # pylint: disable=g-import-not-at-top
    hint = names.did_you_mean(e.flagname, list(FLAGS))
    fail(f"Unknown command line flag '{e.flagname}'"
         f"{hint.replace('mean ', 'mean --').replace(', ', ', --')} "
         '(--helpfull lists the flags)')
  except flags.Error as e:
    fail(f'{e} (--helpfull lists the flags)')
