"""Experiment trackers (``--tracker=mlflow|wandb``, comma-separated for
both; ``--tracker_uri=URI``): the run sent to MLflow or Weights & Biases
beside the JSONL and TensorBoard files, which are always written.

What a tracker holds:

- params / config: the recorded config (``WORKDIR/config.json``) flattened
  by section (``optimisation.learning_rate``, ``data.dataset``, ...);
- metrics: the lines of ``metrics.jsonl`` as written, keyed ``SPLIT/KEY``
  (``train/loss``, ``eval/accuracy``, ``test/accuracy``, ``eval/time``) at
  the line's step; characters MLflow refuses in a name become ``_``;
  non-numeric values (``dataset_split``, text samples) are left out;
- MLflow artifacts: ``config.json`` at the start; ``model_summary.txt``,
  ``plots/`` and an export made into the workdir (``WORKDIR/export*/``,
  ``python -m dlresearch.export --out=WORKDIR/export``; sent by ``--sync_to``)
  at the end.

**Committed lines only.** A line is sent once the checkpoint of its step
(or a later one) is on disk: a run killed after that checkpoint resumes from
it and never rewrites the line, while the lines after it are written again
by the resumed run (``logging.py``) and sent then. So the tracker ends equal
to the final ``metrics.jsonl`` (``logging.read_metrics``: the last line per
step and split), with no step twice and none missing, whether the run was
stopped by kill -9, Ctrl-C or SIGTERM. The price: during training the
tracker is behind by up to ``--checkpoint_every`` steps; at the end
(``close``, after the last checkpoint is written) everything is sent.

**Resume.** The MLflow run id (per tracking URI) and the W&B run id are
kept in ``WORKDIR/trackers/<name>.json``; a resumed run continues that run.
MLflow is asked which (key, step) pairs it already holds, so nothing is
sent twice even after a crash in the middle of a send.

**Failure.** A tracker that cannot be reached at the start, or fails
during the run, is dropped with ONE warning naming it and the cause;
training goes on and the workdir has everything. ``python -m
dlresearch.runs --sync_to=mlflow:URI WORKDIR`` sends a run's metrics and
artifacts later (the same code path: only what the server lacks). MLflow's
HTTP retries are shortened here (2 retries, 10 s timeout) unless
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are set.

Only process 0 tracks. W&B: ``WANDB_MODE=offline`` writes the run under
``WORKDIR/wandb/`` (``wandb sync`` uploads it); its ``files/wandb-summary.json``
holds the final value of every key and ``files/config.yaml`` the config
(wandb-core 0.31 keeps an offline run in its binary ``.wandb`` log only, so
the tracker writes these two at the end when wandb did not).
"""

import glob
import json
import math
import os
import re
import secrets
import time
from typing import Any

import jax
from absl import logging

from dlresearch import logging as log_lib
from dlresearch.callbacks.base import Callback

TRACKERS = ('mlflow', 'wandb')
STATE_DIR = 'trackers'
EXPERIMENT_ENV = 'MLFLOW_EXPERIMENT_NAME'  # default experiment: 'dlresearch'
_BAD_NAME = re.compile(r'[^/\w.\- :]')
_NOT_METRICS = ('step', 'split')
_NON_FINITE = {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf,
               'infinity': math.inf, '-infinity': -math.inf}


def parse(text: str) -> tuple[str, ...]:
  """``'mlflow,wandb'`` -> ``('mlflow', 'wandb')``; ValueError names the bad one."""
  names = tuple(n.strip() for n in text.split(',') if n.strip())
  for n in names:
    if n not in TRACKERS:
      raise ValueError(f'unknown tracker {n!r}; choose from '
                       f'{", ".join(TRACKERS)} (comma-separated)')
  return names


# ---------------------------------------------------------------------------
# What is sent: committed lines of metrics.jsonl, as metrics.


def committed_step(workdir: str) -> int:
  """The latest checkpoint step on disk (orbax renames a step's directory
  into place when it is complete), or -1."""
  steps = [int(n) for n in _listdir(os.path.join(workdir, 'checkpoints'))
           if n.isdigit()]
  return max(steps, default=-1)


def _listdir(path: str) -> list[str]:
  try:
    return os.listdir(path)
  except OSError:
    return []


def metric_items(line: dict) -> dict[str, float]:
  """One metrics.jsonl line -> ``{'SPLIT/KEY': value}`` of its numbers."""
  out = {}
  for k, v in line.items():
    if k in _NOT_METRICS or isinstance(v, bool):
      continue
    if isinstance(v, str):
      v = _NON_FINITE.get(v.lower())
    if isinstance(v, (int, float)):
      out[_BAD_NAME.sub('_', f'{line["split"]}/{k}')] = float(v)
  return out


class MetricsTail:
  """Reads ``metrics.jsonl`` as it grows; hands out the lines up to a step.

  Lines are read from where the last read stopped (complete lines only);
  a (step, split) written again replaces the earlier line, as in
  ``logging.read_metrics``. ``take(upto)`` returns the pending lines with
  ``step <= upto`` in step order and forgets them.
  """

  def __init__(self, workdir: str):
    self._follow = log_lib.MetricsFollower(workdir)
    self._pending = {}

  def _read(self) -> None:
    for line in self._follow.new_lines():
      self._pending[(line['step'], line['split'])] = line

  def take(self, upto: float) -> list[dict]:
    self._read()
    ready = sorted((k for k in self._pending if k[0] <= upto))
    return [self._pending.pop(k) for k in ready]


def flat_config(workdir: str) -> dict[str, Any]:
  """``config.json``'s config as ``{'section.field': value}`` (a flat,
  older record: ``{'field': value}``), plus ``git_commit``."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    record = json.load(f)
  out = {}
  for name, value in record.get('config', {}).items():
    if isinstance(value, dict) and name not in ('model_kwargs',):
      out.update({f'{name}.{k}': v for k, v in value.items()})
    else:
      out[name] = value
  if record.get('git_commit'):
    out['git_commit'] = record['git_commit']
  return out


def _text(v) -> str:
  return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def artifact_paths(workdir: str) -> list[str]:
  """What the end of a run sends: the model summary, the plots folder and
  the exports made into the workdir (folders holding ``model.jaxexport``)."""
  out = [os.path.join(workdir, 'model_summary.txt'),
         os.path.join(workdir, 'plots')]
  out += sorted(os.path.dirname(p) for p in
                glob.glob(os.path.join(workdir, '*', 'model.jaxexport')))
  return [p for p in out if os.path.exists(p)]


def _read_state(workdir: str, name: str) -> dict:
  try:
    with open(os.path.join(workdir, STATE_DIR, f'{name}.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _write_state(workdir: str, name: str, state: dict) -> None:
  folder = os.path.join(workdir, STATE_DIR)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f'{name}.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(state, f, indent=1)
  os.replace(path + '.tmp', path)


# ---------------------------------------------------------------------------
# The two trackers: open (or reopen) the run, send lines, send files, finish.


class MlflowSink:
  """One MLflow run of one workdir (``WORKDIR/trackers/mlflow.json``)."""

  name = 'mlflow'

  def __init__(self, uri: str = ''):
    for var, value in (('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '2'),
                       ('MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR', '1'),
                       ('MLFLOW_HTTP_REQUEST_TIMEOUT', '10')):
      os.environ.setdefault(var, value)
    import mlflow  # pylint: disable=import-outside-toplevel
    self.mlflow = mlflow
    self.uri = uri or mlflow.get_tracking_uri()
    self.client = mlflow.MlflowClient(self.uri)
    self.run_id, self._have = None, set()

  def open(self, workdir: str, run_name: str = '') -> None:
    """Reopens the recorded run (same URI), else creates one; logs the
    params and config.json it lacks."""
    state = _read_state(workdir, self.name)  # {uri: {'run_id', ...}}
    if state.get(self.uri, {}).get('run_id'):
      self.run_id = state[self.uri]['run_id']
      run = self.client.get_run(self.run_id)
      if run.info.status != 'RUNNING':
        self.client.update_run(self.run_id, status='RUNNING')
      for key in run.data.metrics:
        self._have.update((key, m.step) for m in
                          self.client.get_metric_history(self.run_id, key))
      params = run.data.params
    else:
      experiment = os.environ.get(EXPERIMENT_ENV, 'dlresearch')
      found = self.client.get_experiment_by_name(experiment)
      experiment_id = (found.experiment_id if found else
                       self.client.create_experiment(experiment))
      run = self.client.create_run(
          experiment_id, run_name=run_name or os.path.basename(
              os.path.normpath(workdir)),
          tags={'dlresearch.workdir': os.path.abspath(workdir)})
      self.run_id, params = run.info.run_id, {}
      state[self.uri] = {'run_id': self.run_id,
                         'experiment_id': experiment_id}
      _write_state(workdir, self.name, state)
    from mlflow.entities import Param  # pylint: disable=import-outside-toplevel
    new = [Param(k, _text(v)[:6000]) for k, v in flat_config(workdir).items()
           if _BAD_NAME.sub('_', k) == k and k not in params]
    for i in range(0, len(new), 100):
      self.client.log_batch(self.run_id, params=new[i:i + 100])
    if os.path.isfile(os.path.join(workdir, 'config.json')):
      self.client.log_artifact(self.run_id,
                               os.path.join(workdir, 'config.json'))

  def send(self, lines: list[dict]) -> int:
    """Logs the metrics of ``lines`` the run does not hold; how many."""
    from mlflow.entities import Metric  # pylint: disable=import-outside-toplevel
    now = int(time.time() * 1000)
    out = []
    for line in lines:
      for key, value in metric_items(line).items():
        if (key, line['step']) not in self._have:
          out.append(Metric(key, value, now, int(line['step'])))
    for i in range(0, len(out), 1000):
      self.client.log_batch(self.run_id, metrics=out[i:i + 1000])
    self._have.update((m.key, m.step) for m in out)
    return len(out)

  def send_files(self, paths: list[str]) -> None:
    for p in paths:
      if os.path.isdir(p):
        self.client.log_artifacts(self.run_id, p, os.path.basename(p))
      else:
        self.client.log_artifact(self.run_id, p)

  def finish(self, status: str) -> None:
    self.client.set_terminated(self.run_id, status=status)


class WandbSink:
  """One W&B run of one workdir, written under ``WORKDIR/wandb``
  (``WANDB_MODE=offline``: no account, no network)."""

  name = 'wandb'

  def __init__(self, uri: str = ''):
    import wandb  # pylint: disable=import-outside-toplevel
    self.wandb, self.uri, self.run = wandb, uri, None
    self.workdir, self._last_step, self._final = '', -1, {}

  def open(self, workdir: str, run_name: str = '') -> None:
    self.workdir = workdir
    state = _read_state(workdir, self.name)
    run_id = state.get('run_id') or secrets.token_hex(4)
    self._last_step = int(state.get('sent_step', -1))
    config = self._config = {}
    for key, value in flat_config(workdir).items():
      section, _, field = key.rpartition('.')
      config.setdefault(section or 'run', {})[field] = value
    # console='off': the run's own stdout/stderr stay as they are.
    settings = self.wandb.Settings(console='off', **(
        {'base_url': self.uri} if self.uri else {}))
    self.run = self.wandb.init(
        project=os.environ.get('WANDB_PROJECT', 'dlresearch'), id=run_id,
        name=run_name or os.path.basename(os.path.normpath(workdir)),
        dir=workdir, config=config, resume='allow', settings=settings)
    _write_state(workdir, self.name, {'run_id': run_id,
                                      'sent_step': self._last_step})

  def send(self, lines: list[dict]) -> int:
    by_step: dict[int, dict] = {}
    for line in lines:
      items = metric_items(line)
      self._final.update(items)
      if line['step'] > self._last_step:
        by_step.setdefault(int(line['step']), {}).update(items)
    for step in sorted(by_step):
      self.run.log(by_step[step], step=step)
    if by_step:
      self._last_step = max(by_step)
      _write_state(self.workdir, self.name, {'run_id': self.run.id,
                                             'sent_step': self._last_step})
    return sum(len(v) for v in by_step.values())

  def send_files(self, paths: list[str]) -> None:
    del paths  # the workdir holds them; W&B gets the metrics and config

  def finish(self, status: str) -> None:
    # The final value of every key, also of keys logged before a resume.
    self.run.summary.update(self._final)
    files = self.run.dir  # WORKDIR/wandb/<run>/files
    self.run.finish(exit_code=0 if status == 'FINISHED' else 1)
    # wandb-core (0.31) keeps an offline run in its binary log only; its
    # files/ folder gets the usual wandb-summary.json and config.yaml here,
    # from the same values, unless wandb wrote them.
    summary = os.path.join(files, 'wandb-summary.json')
    if not os.path.exists(summary):
      with open(summary, 'w') as f:
        json.dump({**self._final, '_step': self._last_step}, f, indent=1)
    config = os.path.join(files, 'config.yaml')
    if not os.path.exists(config):
      import yaml  # pylint: disable=import-outside-toplevel
      with open(config, 'w') as f:
        yaml.safe_dump({k: {'value': v} for k, v in self._config.items()}, f)


def make_sink(name: str, uri: str = ''):
  return {'mlflow': MlflowSink, 'wandb': WandbSink}[name](uri)


# ---------------------------------------------------------------------------
# The callback.


def _cause(e: BaseException) -> str:
  text = ' '.join(str(e).split()) or type(e).__name__
  if isinstance(e, ImportError):  # the quickstart install has no trackers
    text += "; install them with: pip install -e '.[track]'"
  return f'{type(e).__name__}: {text[:300]}'


class Tracker(Callback):
  """Sends a run to one tracker (``make_sink(name, uri)``); see the module
  docstring. ``sink``: a prepared sink (tests); default: built at start."""

  def __init__(self, name: str, uri: str, workdir: str, sink=None):
    self.name, self.uri, self.workdir = name, uri, workdir
    self.sink, self.dead = sink, False
    self.chief = jax.process_index() == 0
    self.tail = MetricsTail(workdir)
    self._status = 'FAILED'
    self._started = False

  def _guard(self, fn, *args):
    if self.dead or not self.chief:
      return None
    try:
      return fn(*args)
    except Exception as e:  # pylint: disable=broad-exception-caught
      self.dead = True
      later = (f'python -m dlresearch.runs --sync_to=mlflow:'
               f'{self.uri or "URI"} {self.workdir}' if self.name == 'mlflow'
               else f'wandb sync {os.path.join(self.workdir, "wandb")}')
      logging.warning(
          'tracker %s failed (%s); training goes on without it and %s keeps '
          'every metric; send them when the run is done with: %s',
          self.name, _cause(e), self.workdir, later)
      return None

  def _open(self):
    if self.sink is None:
      self.sink = make_sink(self.name, self.uri)
    self.sink.open(self.workdir)

  def _flush(self, upto: float | None = None):
    if upto is None:
      upto = committed_step(self.workdir)
    self.sink.send(self.tail.take(upto))

  def _start(self):
    if not self._started:
      self._started = True
      self._guard(self._open)

  def on_train_start(self, loop):
    self._start()

  def on_step(self, step, state, metrics):
    if metrics.logged is not None:
      self._guard(self._flush)

  def on_eval(self, step, state, split, metrics, final):
    self._start()  # a rerun with no step left evaluates only
    self._guard(self._flush)

  def on_end(self, step, state, result):
    self._status = 'KILLED' if 'preempted' in result else 'FINISHED'

  def close(self):
    if not self._started or self.sink is None:
      return
    # The checkpoints are written (train.run closes them first): every line
    # up to the last one is committed.
    self._guard(self._flush)
    if self._status == 'FINISHED':
      self._guard(self.sink.send_files, artifact_paths(self.workdir))
    self._guard(self.sink.finish, self._status)


def sync(workdir: str, target: str) -> tuple[str, int]:
  """``--sync_to=mlflow:URI``: sends a finished run's metrics and artifacts
  that the server lacks, into the run recorded in the workdir (a new one if
  none, or another URI). ``(run id, metrics sent)``."""
  name, _, uri = target.partition(':')
  if name != 'mlflow':
    raise ValueError(f'--sync_to: expected mlflow:URI (got {target!r})')
  if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    raise FileNotFoundError(f'{workdir}: no metrics.jsonl to send')
  sink = MlflowSink(uri)
  sink.open(workdir)
  sent = sink.send(MetricsTail(workdir).take(math.inf))
  sink.send_files(artifact_paths(workdir))
  sink.finish('FINISHED')
  return sink.run_id, sent


def from_config(cfg, workdir: str) -> list[Tracker]:
  """The trackers ``--tracker`` names (none when empty)."""
  return [Tracker(n, cfg.tracker_uri, workdir) for n in parse(cfg.tracker)]
