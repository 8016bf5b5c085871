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


def _no_shared_memory_leak(stderr: str) -> bool:
  """No "resource_tracker: There appear to be N leaked shared_memory
  objects" warning: every block a worker passed a batch in was unlinked."""
  return 'resource_tracker' not in stderr and 'leaked' not in stderr


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
  assert _no_shared_memory_leak(p.stderr), p.stderr[-3000:]
  assert _lines(tmp_path / 'run') == _lines(in_process)
  assert not _no_tagged_processes(tag)


@pytest.mark.slow
@pytest.mark.parametrize('sig,code', [('SIGTERM', 0), ('SIGINT', 130)])
def test_stop_with_workers_checkpoints_leaves_no_worker_and_resumes(
    tmp_path, in_process, sig, code):
  tag = uuid.uuid4().hex
  workdir = tmp_path / 'run'
  p = _run(workdir, '--grain_workers=1', signal_at=(5, sig), tag=tag)
  assert p.returncode == code, p.stderr[-3000:]
  assert f'stopped by {sig} at step 5' in p.stdout, p.stdout[-2000:]
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  assert _no_shared_memory_leak(p.stderr), p.stderr[-3000:]
  assert not _no_tagged_processes(tag)
  p = _run(workdir, '--grain_workers=1', tag=tag)
  assert p.returncode == 0, p.stderr[-3000:]
  assert _no_shared_memory_leak(p.stderr), p.stderr[-3000:]
  assert _lines(workdir) == _lines(in_process)
  assert not _no_tagged_processes(tag)


@pytest.mark.slow
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


# A worker that dies: the train examples' transform (pickled by value into
# the spawned worker, as it is defined here in __main__) kills its own
# process at its ``at``-th example, once the path ``after`` exists (a
# checkpoint); the trainer never calls it on train data.
DIE_WRAPPER = r'''
import multiprocessing, os, runpy, signal, sys, time
at, after = int(sys.argv[1]), sys.argv[2]
del sys.argv[1:3]
from dlresearch.data import pipeline
image_example_fn = pipeline.image_example_fn
calls = [0]
def dying_example_fn(augment, image_size, train, input_key='image', **recipe):
  inner = image_example_fn(augment, image_size, train, input_key, **recipe)
  if not train:
    return inner
  def fn(ex, rng):
    if multiprocessing.parent_process() is not None:
      calls[0] += 1
      if calls[0] == at:
        deadline = time.monotonic() + 120
        while not os.path.exists(after) and time.monotonic() < deadline:
          time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    return inner(ex, rng)
  return fn
pipeline.image_example_fn = dying_example_fn
sys.argv[0] = 'experiments.cnn_imagenet'
runpy.run_module('experiments.cnn_imagenet', run_name='__main__',
                 alter_sys=True)
'''


def _error_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith('error:')]


def _complete_lines(workdir) -> list[dict]:
  """Every line of metrics.jsonl, each a whole JSON object."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    data = f.read()
  assert data.endswith('\n')
  return [json.loads(l) for l in data.splitlines()]


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_run_in_one_line(tmp_path):
  tag = uuid.uuid4().hex
  workdir = tmp_path / 'run'
  env = dict(os.environ, PYTHONPATH=ROOT, DLRESEARCH_TEST_TAG=tag)
  # 64 examples a step: the worker dies reading step 12, once the trainer
  # has saved the checkpoint of step 10.
  p = subprocess.run(
      [sys.executable, '-c', DIE_WRAPPER, str(64 * 12 + 5),
       str(workdir / 'checkpoints' / '10'), *ARGS,
       '--augment=flip', '--grain_workers=1', f'--workdir={workdir}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert p.returncode == 2, p.stderr[-3000:]
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  errors = _error_lines(p.stderr)
  assert len(errors) == 1, p.stderr[-3000:]
  assert errors[0].startswith(
      'error: a grain worker process died (killed by SIGKILL (often the '
      'out-of-memory killer'), errors[0]
  assert 'while reading the batch of step ' in errors[0]
  assert not _no_tagged_processes(tag)
  # Nothing half-written: whole metric lines, finished checkpoints only.
  steps = [l['step'] for l in _complete_lines(workdir)]
  assert steps and steps == sorted(steps) and max(steps) <= 12
  saved = os.listdir(workdir / 'checkpoints')
  assert '10' in saved and all(n.isdigit() for n in saved), saved
  # And the run resumes from there to the end.
  p = _run(workdir, '--augment=flip', '--grain_workers=1', tag=tag)
  assert p.returncode == 0, p.stderr[-3000:]
  assert _complete_lines(workdir)[-1]['step'] == 20
  assert not _no_tagged_processes(tag)


def test_a_corrupt_example_at_the_first_batch_names_its_file_writes_nothing(
    tmp_path):
  from tests.unit import test_image_folder  # pylint: disable=g-import-not-at-top
  from dlresearch.data import datasets, images  # pylint: disable=g-import-not-at-top
  root, data_dir = tmp_path / 'pictures', tmp_path / 'tfds'
  test_image_folder.write_digits(root, per_class=5)  # 15 + broken.jpg
  # A prepared copy holding an undecodable record (prepared elsewhere, or
  # damaged since): preparation here would have skipped it.
  real = images.decode
  images.decode = lambda data, mode, name: (
      None if name.endswith('broken.jpg') else real(data, mode, name))
  try:
    info = datasets.dataset_info(f'image_folder:{root}', str(data_dir))
  finally:
    images.decode = real
  assert info.splits['train'] == 16
  tag = uuid.uuid4().hex
  workdir = tmp_path / 'run'
  env = dict(os.environ, PYTHONPATH=ROOT, DLRESEARCH_TEST_TAG=tag)
  # One step takes the whole split, so the first batch holds the bad record.
  p = subprocess.run(
      [sys.executable, '-m', 'experiments.cnn_imagenet',
       '--preset=resnet50_imagenet', '--tiny', f'--dataset=image_folder:{root}',
       f'--data_dir={data_dir}', '--grain_workers=1', '--batch_size=16',
       f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=600, check=False)
  assert p.returncode == 2, p.stderr[-3000:]
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  errors = _error_lines(p.stderr)
  assert len(errors) == 1, p.stderr[-3000:]
  assert errors[0].startswith('error: could not read example '), errors[0]
  assert ('train/digit_0/broken.jpg: not a readable image' in errors[0]
          ), errors[0]
  assert _no_shared_memory_leak(p.stderr), p.stderr[-3000:]
  assert not workdir.exists()  # a failed start writes nothing
  assert not _no_tagged_processes(tag)


@pytest.mark.slow
def test_a_worker_that_dies_at_the_first_batch_leaves_no_workdir(tmp_path):
  tag = uuid.uuid4().hex
  workdir = tmp_path / 'run'
  env = dict(os.environ, PYTHONPATH=ROOT, DLRESEARCH_TEST_TAG=tag)
  p = subprocess.run(
      [sys.executable, '-c', DIE_WRAPPER, '1', ROOT, *ARGS, '--augment=flip',
       '--grain_workers=1', f'--workdir={workdir}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert p.returncode == 2, p.stderr[-3000:]
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  errors = _error_lines(p.stderr)
  assert len(errors) == 1 and 'while reading the batch of step 0;' in (
      errors[0]), p.stderr[-3000:]
  assert not workdir.exists()  # a failed start writes nothing
  assert not _no_tagged_processes(tag)
