"""``--pipeline=grain --grain_workers=N``: real worker processes.

Each run is a real ``python -m experiments.cnn_imagenet`` process on the
quickstart (digits) with grain. A run may signal itself after writing the
train line of a given step (the wrapper below), so nothing depends on timing.
Every process a run starts carries a tag in its environment, so the test can
find leftover worker processes in the process table (/proc).
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
ARGS = ['--preset=quickstart', '--tiny', '--pipeline=grain', '--log_every=5',
        '--checkpoint_every=10', '--eval_every=0']

WRAPPER = r'''
import os, runpy, signal, sys
at, name = int(sys.argv[1]), sys.argv[2]
del sys.argv[1:3]
if at >= 0:
  from dlresearch import logging as log_lib
  write = log_lib.JsonlWriter.write
  def write_then_signal(self, step, split, metrics):
    write(self, step, split, metrics)
    if split == 'train' and step == at:
      os.kill(os.getpid(), getattr(signal, name))
  log_lib.JsonlWriter.write = write_then_signal
sys.argv[0] = 'experiments.cnn_imagenet'
runpy.run_module('experiments.cnn_imagenet', run_name='__main__',
                 alter_sys=True)
'''


def _run(workdir, *flags, signal_at=(-1, 'SIGTERM'), tag=None):
  env = dict(os.environ, PYTHONPATH=ROOT, DLRESEARCH_TEST_TAG=tag or '-')
  return subprocess.run(
      [sys.executable, '-c', WRAPPER, str(signal_at[0]), signal_at[1], *ARGS,
       *flags, f'--workdir={workdir}'], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=600, check=False)


def _tagged_processes(tag: str) -> list[int]:
  """Pids of live processes whose environment holds DLRESEARCH_TEST_TAG=tag."""
  found = []
  needle = f'DLRESEARCH_TEST_TAG={tag}'.encode()
  for pid in os.listdir('/proc'):
    if not pid.isdigit():
      continue
    try:
      with open(f'/proc/{pid}/environ', 'rb') as f:
        environ = f.read().split(b'\0')
      with open(f'/proc/{pid}/stat') as f:
        zombie = f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except OSError:
      continue
    if needle in environ and not zombie:
      found.append(int(pid))
  return found


def _no_tagged_processes(tag: str, wait_s: float = 30.0) -> list[int]:
  """Waits (up to wait_s; workers exit asynchronously) for none to remain."""
  deadline = time.monotonic() + wait_s
  while (left := _tagged_processes(tag)) and time.monotonic() < deadline:
    time.sleep(0.2)
  return left


def _lines(workdir) -> list[dict]:
  """metrics.jsonl without the wall-clock field."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(l).items() if k != 'time'}
            for l in f]


@pytest.fixture(scope='module')
def in_process(tmp_path_factory):
  """The reference: grain read threads, no worker processes."""
  workdir = tmp_path_factory.mktemp('w0') / 'run'
  p = _run(workdir, '--grain_workers=0')
  assert p.returncode == 0, p.stderr[-3000:]
  return workdir


def test_workers_give_the_batches_of_the_in_process_path(tmp_path, in_process):
  tag = uuid.uuid4().hex
  p = _run(tmp_path / 'run', '--grain_workers=2', tag=tag)
  assert p.returncode == 0, p.stderr[-3000:]
  assert _lines(tmp_path / 'run') == _lines(in_process)
  assert not _no_tagged_processes(tag)


@pytest.mark.parametrize('sig,code', [('SIGTERM', 0), ('SIGINT', 130)])
def test_stop_with_workers_checkpoints_leaves_no_worker_and_resumes(
    tmp_path, in_process, sig, code):
  tag = uuid.uuid4().hex
  workdir = tmp_path / 'run'
  p = _run(workdir, '--grain_workers=1', signal_at=(5, sig), tag=tag)
  assert p.returncode == code, p.stderr[-3000:]
  assert f'stopped by {sig} at step 5' in p.stdout, p.stdout[-2000:]
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  assert not _no_tagged_processes(tag)
  p = _run(workdir, '--grain_workers=1', tag=tag)
  assert p.returncode == 0, p.stderr[-3000:]
  assert _lines(workdir) == _lines(in_process)
  assert not _no_tagged_processes(tag)


def test_kill_9_with_workers_then_rerun_is_identical(tmp_path, in_process):
  tag = uuid.uuid4().hex
  workdir = tmp_path / 'run'
  p = _run(workdir, '--grain_workers=1', signal_at=(15, 'SIGKILL'), tag=tag)
  assert p.returncode == -signal.SIGKILL
  # The workers notice their parent is gone and exit.
  assert not _no_tagged_processes(tag)
  p = _run(workdir, '--grain_workers=1')
  assert p.returncode == 0, p.stderr[-3000:]
  # Lines after the checkpoint of step 10 may be written twice (before the
  # kill and after the resume); they must be equal, and the run identical.
  lines = _lines(workdir)
  dedup = []
  for l in lines:
    if l in dedup:
      continue
    dedup.append(l)
  assert dedup == _lines(in_process)
