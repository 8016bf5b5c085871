"""Hyperparameter sweeps with Optuna: each trial an ordinary run.

    python -m dlresearch.sweep --sweep_dir=DIR --experiment=NAME --trials=N
        [--workers=K] --metric=KEY --direction=maximize|minimize
        --space=FIELD=DIST [--space=...] [--storage=URL] -- [trial flags]

NAME is an experiment module (``cnn_imagenet`` runs ``python -m
experiments.cnn_imagenet``); KEY an eval-line key (``accuracy``, ``loss``);
DIST one of ``loguniform:LO:HI``, ``uniform:LO:HI``, ``int:LO:HI``,
``choice:A,B,C``; FIELD a config field (its flag). The flags after ``--``
go to every trial. The study (``--study``, default: DIR's name) lives in
``--storage``, default ``sqlite:///DIR/study.db``; a ``postgresql://``
storage shared by several hosts runs the same command as workers of one
study.

**A trial is a run**: ``python -m experiments.NAME [trial flags]
--FIELD=VALUE... --workdir=DIR/trial_<number>`` (its output in
``DIR/logs/``), so ``dlresearch.runs``, ``plot``, ``restore`` and ``export``
work on it. Its eval lines are read from ``metrics.jsonl`` as they are
written and reported to the study, which prunes the trial (median pruner,
after 5 complete trials; ``--pruner=none``: never) by terminating it, at
any eval but the final one; its value is KEY of its last eval line.

**Counting**: the sweep ends when N trials are COMPLETE; PRUNED and FAIL
trials do not count, so N COMPLETE are run whatever is pruned (a sweep stops
with an error when more than N trials FAIL on their own). Before a worker
starts a trial it checks that the complete and running trials are fewer than
N, so several workers never overshoot (a trial that two workers started at
the same moment beyond N is closed unrun: state FAIL, ``surplus``, left out
of the results).

**Crash-safe** (kill -9 of the sweep or of one worker, on any host): each
running trial keeps a heartbeat in the storage (every 5 s); a trial whose
heartbeat is older than 20 s is failed by the next worker that looks
(Optuna's ``fail_stale_trials``) and queued again with the same params; the
retry **resumes the interrupted run from its checkpoints** in the same
workdir (``DIR/trial_<first number>``: on another host, when DIR is shared;
else it starts that run afresh). A trial's process gets SIGTERM when its
sweep dies (``PR_SET_PDEATHSIG``): it checkpoints and exits. So rerunning
the same command finishes exactly N COMPLETE trials; the interrupted
attempt stays in the table as FAIL (``resumed as trial K``). A parameter set
is never run twice by accident: a sample equal to a trial that ran or runs
is closed unrun (``duplicate``, left out of the results).

**Output** (whenever a worker ends): a table (trial, state, value, the
fields, wall seconds, workdir) printed and written to ``DIR/results.csv``
(columns ``trial,state,value,<field>...,seconds,workdir``) and
``DIR/results.json`` (with the best trial), the best trial's workdir named,
and ``DIR/sweep.png`` (optimisation history and parameter importances).

**Bad input** -- an unknown experiment or field, a malformed DIST, a range
with LO > HI (or LO <= 0 for loguniform), a range on a field that is not a
number, a choice that is not of the field's type, a searched field also
given after ``--``, a metric that the first eval line of the sweep lacks --
is one line ``error: ...``, exit status 2, and nothing written (the metric
check stops the first trial and removes what the sweep wrote).
"""

import csv
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

from dlresearch import config as config_lib
from dlresearch import logging as log_lib
from dlresearch.tools import entry

PROG = 'python -m dlresearch.sweep'
HEARTBEAT_S, GRACE_S = 5, 20
_NUMBER = (int, float)
_SKIPPED = ('surplus', 'duplicate')


class SweepError(ValueError):
  """Bad input found once the sweep has started (the metric check)."""


@dataclasses.dataclass(frozen=True)
class Dist:
  """One searched field: ``kind`` loguniform/uniform/int/choice."""

  field: str
  kind: str
  low: float = 0.0
  high: float = 0.0
  choices: tuple = ()

  def optuna(self):
    import optuna  # pylint: disable=import-outside-toplevel
    d = optuna.distributions
    if self.kind == 'choice':
      return d.CategoricalDistribution(self.choices)
    if self.kind == 'int':
      return d.IntDistribution(int(self.low), int(self.high))
    return d.FloatDistribution(self.low, self.high,
                               log=self.kind == 'loguniform')


def parse_space(text: str) -> Dist:
  """``FIELD=DIST`` -> ``Dist``; ValueError (one line) on bad input."""
  field, eq, dist = text.partition('=')
  if not eq or not field:
    raise ValueError(f'--space: expected FIELD=DIST (got {text!r})')
  types = config_lib.field_types()
  if field not in types:
    raise ValueError(f'--space: unknown config field {field!r} (see '
                     'python -m experiments.NAME --helpfull)')
  kind, _, rest = dist.partition(':')
  kinds = ('loguniform', 'uniform', 'int', 'choice')
  if kind not in kinds:
    raise ValueError(f'--space={text}: DIST must be one of loguniform:LO:HI, '
                     'uniform:LO:HI, int:LO:HI, choice:A,B,C')
  ftype = types[field]
  if kind == 'choice':
    values = [v for v in rest.split(',') if v != '']
    if not values:
      raise ValueError(f'--space={text}: choice needs values (choice:A,B,C)')
    try:
      parsed = tuple(config_lib.parse_value(field, v) for v in values)
    except ValueError as e:
      raise ValueError(f'--space={text}: {e}') from None
    if len(set(parsed)) != len(parsed):
      raise ValueError(f'--space={text}: a choice is listed twice')
    return Dist(field, kind, choices=parsed)
  if ftype not in _NUMBER or ftype is bool:
    raise ValueError(f'--space={text}: {field} is not a number '
                     f'({ftype.__name__}); use choice:A,B,C')
  parts = rest.split(':')
  try:
    low, high = (float(v) for v in parts)
  except ValueError:
    raise ValueError(f'--space={text}: expected {kind}:LO:HI with two '
                     'numbers') from None
  if kind == 'int' or ftype is int:
    if kind != 'int':
      raise ValueError(f'--space={text}: {field} is an integer; use '
                       f'int:LO:HI')
    if low != int(low) or high != int(high):
      raise ValueError(f'--space={text}: int bounds must be integers')
  if not (math.isfinite(low) and math.isfinite(high)) or low > high:
    raise ValueError(f'--space={text}: needs LO <= HI (got {low:g} > '
                     f'{high:g})' if low > high else
                     f'--space={text}: bounds must be finite')
  if kind == 'loguniform' and low <= 0:
    raise ValueError(f'--space={text}: loguniform needs LO > 0')
  return Dist(field, kind, low, high)


def default_storage(sweep_dir: str) -> str:
  return f'sqlite:///{os.path.abspath(sweep_dir)}/study.db'


def engine_url(url: str) -> str:
  """``postgresql://`` through psycopg (3) when psycopg2 is not installed."""
  if url.startswith('postgresql://') and importlib.util.find_spec(
      'psycopg2') is None:
    return 'postgresql+psycopg://' + url[len('postgresql://'):]
  return url


@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m dlresearch.sweep``'s flags (the trial flags come after --)."""

  sweep_dir: str = entry.option('', 'Where the trials, study.db and the '
                                'results go.', required=True)
  experiment: str = entry.option('', 'Experiment module: NAME runs python '
                                 '-m experiments.NAME.', required=True)
  trials: int = entry.option(0, 'COMPLETE trials to finish (>= 1).',
                             required=True)
  workers: int = entry.option(1, 'Trials run at once by this command '
                              '(>= 1).')
  metric: str = entry.option('', 'Eval-line key to optimise (e.g. '
                             'accuracy, loss).', required=True)
  direction: str = entry.option('', 'maximize or minimize.', required=True,
                                choices=('maximize', 'minimize'))
  space: tuple[str, ...] = entry.option((), 'FIELD=DIST: loguniform:LO:HI, '
                                        'uniform:LO:HI, int:LO:HI, '
                                        'choice:A,B,C')
  storage: str = entry.option('', 'Optuna storage URL (default: '
                              'sqlite:///DIR/study.db; postgresql://... '
                              'shared by several hosts).')
  study: str = entry.option('', "Study name (default: DIR's name).")
  pruner: str = entry.option('median', 'median (Optuna MedianPruner on the '
                             'eval lines) or none.',
                             choices=('median', 'none'))
  seed: int = entry.option(-1, 'Sampler seed (-1: random).')
  trial_flags: tuple[str, ...] = ()

  def __post_init__(self):
    entry.at_least(self, 'trials', 1)
    entry.at_least(self, 'workers', 1)
    if not self.space:
      raise ValueError('--space: give at least one FIELD=DIST')
    if importlib.util.find_spec(f'experiments.{self.experiment}') is None:
      raise ValueError(f'--experiment: no module experiments.'
                       f'{self.experiment}')
    dists = [parse_space(s) for s in self.space]
    names = [d.field for d in dists]
    if len(set(names)) != len(names):
      raise ValueError('--space: a field is searched twice')
    given = {f[2:].partition('=')[0] for f in self.trial_flags
             if f.startswith('--')}
    for name in names:
      if name in given or f'no{name}' in given:
        raise ValueError(f'--space: {name} is searched, so it cannot also '
                         'be given after --')
    if 'workdir' in given:
      raise ValueError('the sweep names each trial\'s --workdir; drop it '
                       'after --')

  @property
  def dists(self) -> list[Dist]:
    return [parse_space(s) for s in self.space]


def parse(argv: list[str]) -> Options:
  """Options from the command line: the sweep's flags, then ``--`` and the
  flags of every trial."""
  if '--' in argv:
    i = argv.index('--')
    head, tail = argv[:i], tuple(argv[i + 1:])
  else:
    head, tail = argv, ()
  options = entry.parse(_HeadOptions, head, PROG, __doc__)
  return Options(**{**dataclasses.asdict(options), 'trial_flags': tail})


# The parser sees the fields without trial_flags (given after --).
_HeadOptions = dataclasses.make_dataclass(
    'Options', [(f.name, f.type, dataclasses.field(default=f.default,
                                                  metadata=f.metadata))
                for f in dataclasses.fields(Options)
                if f.name != 'trial_flags'], frozen=True)
_HeadOptions.__doc__ = Options.__doc__


# ---------------------------------------------------------------------------
# One trial: a run in a subprocess, its eval lines reported as they come.


def _die_with_parent():
  """preexec_fn: SIGTERM this child when the sweep dies (Linux)."""
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)
  except OSError:
    pass  # no glibc (not Linux): the heartbeat still re-queues the trial


def _value_text(value) -> str:
  return repr(value) if isinstance(value, float) else str(value)


class Sweep:
  """The study and what its workers share."""

  def __init__(self, options: Options):
    import optuna  # pylint: disable=import-outside-toplevel
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings('ignore', 'Heartbeat of storage is supposed')
    self.o, self.optuna = options, optuna
    self.dir = os.path.abspath(options.sweep_dir)
    self.dists = options.dists
    self.url = options.storage or default_storage(self.dir)
    self.name = options.study or os.path.basename(self.dir)
    self.lock = threading.Lock()
    self.error: BaseException | None = None
    self.metric_seen = threading.Event()
    self.created_dir = not os.path.exists(self.dir)
    self.created_study = False
    os.makedirs(os.path.join(self.dir, 'logs'), exist_ok=True)
    try:
      self._open(options)
    except BaseException:
      self.remove_what_was_written()
      raise

  def _open(self, options: Options) -> None:
    optuna = self.optuna
    import sqlalchemy.exc  # pylint: disable=import-outside-toplevel
    for attempt in range(6):
      try:
        self.storage = optuna.storages.RDBStorage(
            engine_url(self.url), heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=(
                optuna.storages.RetryHeartbeatStaleTrialCallback()))
        break
      except (sqlalchemy.exc.IntegrityError,
              sqlalchemy.exc.ProgrammingError) as e:
        # Workers on several hosts creating the tables of a new storage at
        # the same moment: one wins, the others find the tables next time.
        if attempt == 5:
          raise SweepError(f'--storage: cannot set up {_hide_password(self.url)}'
                           f': {entry.one_line(e)}') from None
        time.sleep(1 + attempt)
      except (sqlalchemy.exc.OperationalError,
              sqlalchemy.exc.ArgumentError, ImportError) as e:
        raise SweepError(f'--storage: cannot open {_hide_password(self.url)}: '
                         f'{entry.one_line(e)}') from None
    existing = [s.study_name for s in self.storage.get_all_studies()]
    self.created_study = self.name not in existing
    sampler = optuna.samplers.TPESampler(
        seed=None if options.seed < 0 else options.seed)
    pruner = (optuna.pruners.MedianPruner() if options.pruner == 'median'
              else optuna.pruners.NopPruner())
    self.study = optuna.create_study(
        study_name=self.name, storage=self.storage, sampler=sampler,
        pruner=pruner, direction=options.direction, load_if_exists=True)
    if self.study.direction.name.lower() != options.direction:
      raise SweepError(f'--direction: study {self.name!r} in {self.url} '
                       f'is {self.study.direction.name.lower()}')
    if any(t.state.name == 'COMPLETE' for t in self.study.get_trials(
        deepcopy=False)):
      self.metric_seen.set()  # an earlier run of the sweep checked it

  # -- counting ---------------------------------------------------------

  def _counts(self) -> tuple[int, int, int, int]:
    """Complete, running, waiting (queued retries) and failed trials (not
    counting the skipped ones nor the interrupted ones that were retried)."""
    trials = self.study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials if not _skipped(t)]
    return (states.count('COMPLETE'), states.count('RUNNING'),
            states.count('WAITING'),
            states.count('FAIL') - sum(1 for t in trials if t.state.name ==
                                       'FAIL' and _interrupted(t, trials)))

  def worker(self) -> None:
    while self.error is None:
      with self.lock:
        self.optuna.storages.fail_stale_trials(self.study)
        complete, running, waiting, failed = self._counts()
        if complete >= self.o.trials:
          return
        if failed > self.o.trials:
          raise SweepError(f'{failed} trials failed on their own (see '
                           f'{self.dir}/logs); stopping')
        trial = None
        if waiting or complete + running < self.o.trials:
          trial = self._ask()  # a queued retry first
      if trial is None:
        time.sleep(2)  # the others run the rest (or are stale: retried)
        continue
      self._run(trial)

  def _ask(self):
    """A new trial with its params, or None when it must not run."""
    dists = {d.field: d.optuna() for d in self.dists}
    trial = self.study.ask(dists)
    frozen = self.storage.get_trial(trial._trial_id)  # pylint: disable=protected-access
    trials = self.study.get_trials(deepcopy=False)
    live = [t for t in trials if not _skipped(t) and t.state.name in (
        'COMPLETE', 'RUNNING', 'WAITING') and t.number < trial.number]
    if len(live) >= self.o.trials:
      return self._close(trial, 'surplus')
    retried = frozen.system_attrs.get('retry_history')
    if not retried:
      for t in trials:
        if (t.number != trial.number and not _skipped(t) and
            t.params == trial.params and t.state.name != 'FAIL'):
          return self._close(trial, 'duplicate')
    return trial

  def _close(self, trial, why: str):
    trial.set_user_attr('skipped', why)
    self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
    return None

  def _run(self, trial) -> None:
    frozen = self.storage.get_trial(trial._trial_id)  # pylint: disable=protected-access
    history = frozen.system_attrs.get('retry_history') or []
    first = history[0] if history else trial.number
    workdir = os.path.join(self.dir, f'trial_{first}')
    trial.set_user_attr('workdir', workdir)
    trial.set_user_attr('host', socket.gethostname())
    if history:
      trial.set_user_attr('resumes', history[-1])
    argv = [sys.executable, '-m', f'experiments.{self.o.experiment}',
            *self.o.trial_flags,
            *(f'--{k}={_value_text(v)}' for k, v in trial.params.items()),
            f'--workdir={workdir}']
    log_path = os.path.join(self.dir, 'logs', f'trial_{trial.number}.log')
    start = time.monotonic()
    with open(log_path, 'ab') as log:
      log.write((' '.join(argv) + '\n').encode())
      log.flush()
      proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                              preexec_fn=_die_with_parent)
      state, value, why = self._watch(trial, proc, workdir)
    trial.set_user_attr('seconds', round(time.monotonic() - start, 1))
    if why:
      trial.set_user_attr('error', why)
    tell = self.optuna.trial.TrialState
    if state == 'COMPLETE':
      self.study.tell(trial, value)
    else:
      self.study.tell(trial, state=getattr(tell, state))

  def _watch(self, trial, proc, workdir) -> tuple[str, Any, str]:
    """Reports eval lines until the run ends; ``(state, value, why)``."""
    follow = log_lib.MetricsFollower(workdir)
    seen, reported, total = {}, set(), 0  # seen: eval step -> its line
    last_beat = 0.0
    while True:
      code = proc.poll()
      seen.update((int(l['step']), l) for l in follow.new_lines()
                  if l['split'] == 'eval')
      for step in sorted(set(seen) - reported):
        reported.add(step)
        line = seen[step]
        if self.o.metric not in line:
          if not self.metric_seen.is_set():
            proc.kill()
            proc.wait()
            keys = ', '.join(k for k in line if k not in ('step', 'split'))
            raise SweepError(f'--metric: the eval line has no {self.o.metric!r}'
                             f' (it has {keys})')
          _stop(proc)
          return 'FAIL', None, f'no {self.o.metric} in the eval line'
        self.metric_seen.set()
        value = _number(line[self.o.metric])
        total = total or _total_steps(workdir)
        if value is not None and math.isfinite(value):
          trial.report(value, step)
          # Never the final eval: a finished run is COMPLETE, whatever it got.
          if total and step < total and trial.should_prune():
            _stop(proc)
            return 'PRUNED', None, ''
      if code is not None:
        break
      if time.monotonic() - last_beat >= HEARTBEAT_S:
        self.storage.record_heartbeat(trial._trial_id)  # pylint: disable=protected-access
        last_beat = time.monotonic()
      if self.error is not None:
        _stop(proc)
        return 'FAIL', None, 'the sweep stopped'
      time.sleep(0.5)
    if code != 0 or not seen:
      return 'FAIL', None, _last_error(trial, self.dir, code)
    value = _number(seen[max(seen)].get(self.o.metric))
    if value is None or not math.isfinite(value):
      return 'FAIL', None, f'{self.o.metric} is {value}'
    return 'COMPLETE', value, ''

  # -- results ----------------------------------------------------------

  def results(self) -> tuple[list[str], list[list[Any]], Any]:
    trials = self.study.get_trials(deepcopy=False)
    fields = [d.field for d in self.dists]
    columns = ['trial', 'state', 'value', *fields, 'seconds', 'workdir',
               'note']
    rows = []
    resumed_as = {}
    for t in trials:
      for n in t.system_attrs.get('retry_history') or []:
        resumed_as[n] = t.number
    for t in trials:
      if _skipped(t):
        continue
      note = t.user_attrs.get('error', '')
      if t.number in resumed_as:
        note = f'interrupted; resumed as trial {resumed_as[t.number]}'
      rows.append([t.number, t.state.name, t.value,
                   *(t.params.get(f) for f in fields),
                   t.user_attrs.get('seconds'), t.user_attrs.get('workdir'),
                   note])
    complete = [t for t in trials if t.state.name == 'COMPLETE']
    best = None
    if complete:
      best = (max if self.o.direction == 'maximize' else min)(
          complete, key=lambda t: t.value)
    return columns, rows, best

  def write_results(self) -> str:
    from dlresearch.tools import runs  # pylint: disable=import-outside-toplevel
    columns, rows, best = self.results()
    with open(os.path.join(self.dir, 'results.csv.tmp'), 'w',
              newline='') as f:
      writer = csv.writer(f)
      writer.writerow(columns)
      writer.writerows([['' if v is None else v for v in r] for r in rows])
    os.replace(os.path.join(self.dir, 'results.csv.tmp'),
               os.path.join(self.dir, 'results.csv'))
    record = {'study': self.name, 'storage': _hide_password(self.url),
              'metric': self.o.metric, 'direction': self.o.direction,
              'trials': [dict(zip(columns, r)) for r in rows],
              'best': None if best is None else {
                  'trial': best.number, 'value': best.value,
                  'params': best.params,
                  'workdir': best.user_attrs.get('workdir')}}
    with open(os.path.join(self.dir, 'results.json.tmp'), 'w') as f:
      json.dump(record, f, indent=1)
    os.replace(os.path.join(self.dir, 'results.json.tmp'),
               os.path.join(self.dir, 'results.json'))
    self.plot(rows, columns, best)
    text = runs.format_table(columns[:-1], [r[:-1] for r in rows])
    if best is not None:
      text += (f'\nbest: trial {best.number} {self.o.metric}='
               f'{best.value:.4g} {best.params} workdir '
               f'{best.user_attrs.get("workdir")}')
    return text

  def plot(self, rows, columns, best) -> None:
    """``DIR/sweep.png``: value by trial with the best so far; importances."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    done = [(r[0], r[2]) for r in rows if r[1] == 'COMPLETE']
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if done:
      xs, ys = zip(*done)
      pick = max if self.o.direction == 'maximize' else min
      running = [pick(ys[:i + 1]) for i in range(len(ys))]
      a.scatter(xs, ys, s=16, label='trial')
      a.step(xs, running, where='post', color='C3', label='best so far')
      a.legend()
    a.set_xlabel('trial')
    a.set_ylabel(self.o.metric)
    a.set_title('optimisation history')
    importances = {}
    if len(done) >= 2:
      try:
        importances = self.optuna.importance.get_param_importances(
            self.study)
      except (ValueError, RuntimeError):
        importances = {}
    if importances:
      names = list(importances)[::-1]
      b.barh(names, [importances[n] for n in names])
    else:
      b.text(0.5, 0.5, 'needs 2+ complete trials\nwith differing params',
             ha='center', va='center')
    b.set_title('parameter importances (fANOVA)')
    fig.tight_layout()
    fig.savefig(os.path.join(self.dir, 'sweep.png'), dpi=90)
    plt.close(fig)

  def remove_what_was_written(self) -> None:
    if self.created_study:
      try:
        self.optuna.delete_study(study_name=self.name, storage=self.storage)
      except Exception:  # pylint: disable=broad-exception-caught
        pass  # best effort on the way out; the one-line error still stands
    if self.created_dir:
      shutil.rmtree(self.dir, ignore_errors=True)


def _skipped(t) -> bool:
  return t.user_attrs.get('skipped') in _SKIPPED


def _interrupted(t, trials) -> bool:
  return any(t.number in (o.system_attrs.get('retry_history') or [])
             for o in trials)


def _total_steps(workdir: str) -> int:
  """The run's number of steps (``config.json``'s ``num_steps``), or 0."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      return int(json.load(f).get('num_steps') or 0)
  except (OSError, ValueError, TypeError):
    return 0


def _number(v) -> float | None:
  if isinstance(v, bool):
    return None
  if isinstance(v, (int, float)):
    return float(v)
  if isinstance(v, str) and v.lower() in ('nan', 'inf', '-inf'):
    return float(v)
  return None


def _stop(proc) -> None:
  """Ends a trial's run: SIGTERM (it checkpoints), SIGKILL after 60 s."""
  if proc.poll() is None:
    proc.terminate()
    try:
      proc.wait(60)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _last_error(trial, sweep_dir: str, code) -> str:
  path = os.path.join(sweep_dir, 'logs', f'trial_{trial.number}.log')
  try:
    with open(path, errors='replace') as f:
      lines = [l.strip() for l in f if l.strip()]
  except OSError:
    lines = []
  return f'exit status {code}: {lines[-1][:200] if lines else "no output"}'


def _hide_password(url: str) -> str:
  scheme, sep, rest = url.partition('://')
  if '@' in rest and ':' in rest.split('@')[0]:
    user = rest.split('@')[0].split(':')[0]
    return f'{scheme}{sep}{user}:***@{rest.split("@", 1)[1]}'
  return url


def main(options: Options) -> int:
  if importlib.util.find_spec('optuna') is None:  # the quickstart install
    raise ValueError("python -m dlresearch.sweep needs optuna: pip install -e '.[track]'")
  sweep = Sweep(options)
  threads = []
  def work():
    try:
      sweep.worker()
    except BaseException as e:  # pylint: disable=broad-exception-caught
      sweep.error = sweep.error or e
  for _ in range(options.workers):
    threads.append(threading.Thread(target=work, daemon=True))
    threads[-1].start()
  for t in threads:
    t.join()
  if isinstance(sweep.error, SweepError) and not sweep.metric_seen.is_set():
    sweep.remove_what_was_written()
    raise sweep.error
  if sweep.error is not None:
    raise sweep.error
  print(sweep.write_results(), flush=True)
  return 0


def run(argv: list[str] | None = None) -> int:
  """The command: bad input is one line ``error: ...`` and status 2."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    options = parse(argv)
    return main(options)
  except (*entry.ERRORS, SweepError) as e:
    print(f'error: {entry.one_line(e)}', file=sys.stderr, flush=True)
    return 2
