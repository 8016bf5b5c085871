"""Trackers against real servers: an ``mlflow server`` started here on
127.0.0.1 (SQLite backend store, local artifact root), read back with
``MlflowClient``; W&B in offline mode (no account, no network).

What the server holds must equal the final ``metrics.jsonl``
(``logging.read_metrics``: the last line per step and split), step by step,
after a kill -9 and a resume, and after the server died mid-run and the run
was sent later with ``python -m dlresearch.runs --sync_to``.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from dlresearch import logging as log_lib
from dlresearch.callbacks import trackers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
DRIVER = os.path.join(ROOT, 'tests', '_tracked_driver.py')
BIN = os.path.dirname(sys.executable)
WARNING = 'tracker mlflow failed'

pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Server:
  """``mlflow server`` on 127.0.0.1 with its store under ``root``."""

  def __init__(self, root, port=None):
    self.root, self.port = str(root), port or _free_port()
    self.uri = f'http://127.0.0.1:{self.port}'
    self.proc = None

  def start(self, timeout=180):
    os.makedirs(self.root, exist_ok=True)
    self.log = open(os.path.join(self.root, 'server.log'), 'ab')
    self.proc = subprocess.Popen(
        [os.path.join(BIN, 'mlflow'), 'server', '--backend-store-uri',
         f'sqlite:///{self.root}/mlflow.db', '--artifacts-destination',
         f'{self.root}/artifacts', '--host', '127.0.0.1', '--port',
         str(self.port), '--workers', '1'],
        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      assert self.proc.poll() is None, open(
          os.path.join(self.root, 'server.log')).read()[-3000:]
      try:
        with urllib.request.urlopen(f'{self.uri}/health', timeout=2) as r:
          if r.status == 200:
            return self
      except OSError:
        time.sleep(1)
    raise AssertionError(f'mlflow server did not start in {timeout} s')

  def kill(self):
    if self.proc:
      try:  # its uvicorn workers too, also when the CLI process is gone
        os.killpg(self.proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass  # already gone with its process group
      self.proc.wait()
    self.log.close()


@pytest.fixture
def server(tmp_path):
  s = Server(tmp_path / 'mlflow').start()
  yield s
  s.kill()


def _drive(workdir, num_steps, tracker, uri, kill_at=0, kill_pid=0, env=None):
  return subprocess.run(
      [sys.executable, DRIVER, str(workdir), str(num_steps), str(kill_at),
       str(kill_pid), tracker, uri], cwd=ROOT, capture_output=True, text=True,
      timeout=600, env={**os.environ, 'PYTHONPATH': ROOT, **(env or {})})


def _expected(workdir) -> dict:
  """``{key: {step: value}}`` of the final metrics.jsonl, as sent."""
  out = {}
  for line in log_lib.read_metrics(str(workdir)):
    for key, value in trackers.metric_items(line).items():
      out.setdefault(key, {})[line['step']] = value
  return out


def _on_server(uri, run_id) -> dict:
  """``{key: [(step, value), ...]}`` of every metric the run holds."""
  import mlflow  # pylint: disable=import-outside-toplevel
  client = mlflow.MlflowClient(uri)
  run = client.get_run(run_id)
  return {k: sorted((m.step, m.value) for m in
                    client.get_metric_history(run_id, k))
          for k in run.data.metrics}


def _assert_server_equals_file(uri, workdir):
  run_id = json.load(open(os.path.join(workdir, 'trackers',
                                       'mlflow.json')))[uri]['run_id']
  held, want = _on_server(uri, run_id), _expected(workdir)
  assert set(held) == set(want)
  for key, points in held.items():
    steps = [s for s, _ in points]
    assert len(steps) == len(set(steps)), (key, steps)  # none twice
    assert dict(points) == pytest.approx(want[key], rel=1e-6), key
  return run_id


def test_kill_9_then_resume_continues_the_same_run_equal_to_the_file(
    tmp_path, server):
  import mlflow  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'run'
  p = _drive(workdir, 40, 'mlflow', server.uri, kill_at=25)
  assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
  run_id = json.load(open(workdir / 'trackers' / 'mlflow.json'))[
      server.uri]['run_id']
  held = _on_server(server.uri, run_id)
  # Only committed lines were sent: at most up to the checkpoint of step 20
  # (if it was on disk at the last send), never the train line of step 25
  # that the resumed run writes again.
  sent = [s for s, _ in held.get('train/loss', [])]
  assert sent == [5, 10, 15, 20][:len(sent)], sent
  assert all(s <= 20 for points in held.values() for s, _ in points)
  p = _drive(workdir, 40, 'mlflow', server.uri)
  assert p.returncode == 0, p.stderr[-3000:]
  assert WARNING not in p.stderr
  raw = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  assert [l['step'] for l in raw if l['split'] == 'train'].count(25) == 2
  assert _assert_server_equals_file(server.uri, workdir) == run_id
  client = mlflow.MlflowClient(server.uri)
  run = client.get_run(run_id)
  assert run.info.status == 'FINISHED'
  assert run.data.params['optimisation.learning_rate'] == '0.003'
  assert run.data.params['loop.num_steps'] == '40'
  top = {a.path for a in client.list_artifacts(run_id)}
  assert {'config.json', 'model_summary.txt', 'plots'} <= top
  assert 'plots/curves.png' in {a.path for a in
                                client.list_artifacts(run_id, 'plots')}
  assert len(client.search_runs([run.info.experiment_id])) == 1


def test_server_dies_mid_run_training_goes_on_then_sync_to_sends_it(tmp_path):
  srv = Server(tmp_path / 'mlflow').start()
  workdir = tmp_path / 'run'
  try:
    p = _drive(workdir, 40, 'mlflow', srv.uri, kill_at=25,
               kill_pid=srv.proc.pid)
  finally:
    srv.kill()
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'RESULT' in p.stdout
  assert p.stderr.count(WARNING) == 1, p.stderr[-3000:]
  line = next(l for l in p.stderr.splitlines() if WARNING in l)
  assert 'ConnectionError' in line or 'onnection' in line, line
  assert f'--sync_to=mlflow:{srv.uri} {workdir}' in line
  evals = log_lib.read_metrics(str(workdir), 'eval')
  assert [l['step'] for l in evals] == [15, 30, 40]  # nothing lost locally
  # The same server comes back (same store, same port); the run is sent.
  srv = Server(tmp_path / 'mlflow', srv.port).start()
  try:
    p = subprocess.run(
        [sys.executable, '-m', 'dlresearch.runs',
         f'--sync_to=mlflow:{srv.uri}', str(workdir)], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
        env={**os.environ, 'PYTHONPATH': ROOT})
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'sent' in p.stdout, p.stdout
    _assert_server_equals_file(srv.uri, str(workdir))
  finally:
    srv.kill()


def test_server_down_at_start_is_one_warning_and_the_run_finishes(tmp_path):
  workdir = tmp_path / 'run'
  uri = f'http://127.0.0.1:{_free_port()}'  # nothing listens there
  p = _drive(workdir, 20, 'mlflow', uri)
  assert p.returncode == 0, p.stderr[-3000:]
  assert p.stderr.count(WARNING) == 1, p.stderr[-3000:]
  assert [l['step'] for l in log_lib.read_metrics(str(workdir), 'eval')] == [
      15, 20]


def test_wandb_offline_summary_holds_the_final_metrics_and_config(tmp_path):
  workdir = tmp_path / 'run'
  p = _drive(workdir, 20, 'wandb', '',
             env={'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true',
                  'HOME': str(tmp_path)})
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'tracker wandb failed' not in p.stderr
  runs = glob.glob(str(workdir / 'wandb' / 'offline-run-*'))
  assert len(runs) == 1, runs
  summary = json.load(open(os.path.join(runs[0], 'files',
                                        'wandb-summary.json')))
  final = log_lib.read_metrics(str(workdir), 'eval')[-1]
  train = log_lib.read_metrics(str(workdir), 'train')[-1]
  assert summary['eval/accuracy'] == pytest.approx(final['accuracy'])
  assert summary['train/loss'] == pytest.approx(train['loss'])
  assert summary['_step'] == 20
  config = open(os.path.join(runs[0], 'files', 'config.yaml')).read()
  assert 'learning_rate' in config and '0.003' in config
