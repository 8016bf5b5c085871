"""Ctrl-C / SIGTERM at each moment of start-up, and a full disk at start-up.

Each case is a real ``python -m experiments.cnn_imagenet`` process (not a
fork of a warm interpreter: the imports are one of the moments under test).
The signal is sent by the process to itself at a chosen point, so the test
does not depend on timing:

- ``import``: while ``jax`` is being imported (before any flag is parsed);
- ``data``: right after the workdir lock is taken, i.e. as the data are
  prepared (``train.run`` has installed its handler);
- ``compile``: at the first call of a jitted function (compilation).

Promised (docs/resume.md): before ``train.run`` one line on stderr, exit 130
for SIGINT and 0 for SIGTERM, nothing written; inside ``train.run`` the stop
is a checkpoint at the next step, the same exit codes, and no traceback.
"""

import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
ARGS = ['--preset=quickstart', '--tiny', '--num_steps=4', '--log_every=2',
        '--checkpoint_every=2', '--eval_every=0']

# Runs experiments.cnn_imagenet as ``python -m`` would, after arranging for
# the process to signal itself at the stage named in argv[1].
WRAPPER = r'''
import os, runpy, signal, sys
stage, sig = sys.argv[1], getattr(signal, sys.argv[2])
del sys.argv[1:3]

def fire():
  os.kill(os.getpid(), sig)

if stage == 'import':
  import importlib.abc
  class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
      if name == 'jax':
        sys.meta_path.remove(self)
        fire()
      return None
  sys.meta_path.insert(0, Hook())
elif stage == 'data':
  from dlresearch import workdir
  acquire = workdir.WorkdirLock.acquire
  def acquire_then_fire(self):
    held = acquire(self)
    fire()
    return held
  workdir.WorkdirLock.acquire = acquire_then_fire
elif stage == 'compile':
  import jax
  jit = jax.jit
  class FireOnFirstCall:
    fired = False
    def __init__(self, fn):
      self._fn = fn
    def __call__(self, *args, **kwargs):
      if not FireOnFirstCall.fired:
        FireOnFirstCall.fired = True
        fire()
      return self._fn(*args, **kwargs)
    def __getattr__(self, name):
      return getattr(self._fn, name)
  def jit_then_fire(*args, **kwargs):
    jitted = jit(*args, **kwargs)
    return FireOnFirstCall(jitted) if callable(jitted) else jitted
  jax.jit = jit_then_fire
sys.argv[0] = 'experiments.cnn_imagenet'
runpy.run_module('experiments.cnn_imagenet', run_name='__main__',
                 alter_sys=True)
'''


def _start(stage: str, sig: str, workdir: str, env_extra=None):
  env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
  return subprocess.run(
      [sys.executable, '-c', WRAPPER, stage, sig, *ARGS,
       f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=600, check=False)


def _user_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines()
          if l.strip() and not l.startswith(('I1', 'W1', 'I0', 'W0', 'E1',
                                             'E0'))]


@pytest.mark.parametrize('sig,code', [('SIGINT', 130), ('SIGTERM', 0)])
def test_signal_while_importing_is_one_line_and_writes_nothing(
    tmp_path, sig, code):
  workdir = tmp_path / 'wd'
  p = _start('import', sig, str(workdir))
  assert p.returncode == code, p.stderr[-3000:]
  assert _user_lines(p.stderr) == [
      f'stopped by {sig} during start-up, before training began: nothing '
      'was written; rerun the same command to start (or resume)'], p.stderr
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize('stage,sig,code', [('data', 'SIGINT', 130),
                                            ('compile', 'SIGTERM', 0)])
def test_signal_inside_run_checkpoints_and_resumes(tmp_path, stage, sig,
                                                   code):
  workdir = tmp_path / 'wd'
  p = _start(stage, sig, str(workdir))
  assert p.returncode == code, p.stderr[-3000:]
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  assert f'stopped by {sig} at step 1; checkpoint saved' in p.stdout, (
      p.stdout[-2000:], p.stderr[-2000:])
  assert '1' in os.listdir(workdir / 'checkpoints')
  # The same command resumes to the end.
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.cnn_imagenet', *ARGS,
       f'--workdir={workdir}'], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
      capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'final eval at step 4' in done.stdout


def test_full_disk_at_start_up_is_one_line(tmp_path):
  # A filesystem with no room: a 64 KiB tmpfs is not available without root,
  # so the free-space floor is raised above what any disk has instead.
  workdir = tmp_path / 'wd'
  p = subprocess.run(
      [sys.executable, '-c',
       'import sys, runpy; from dlresearch import workdir; '
       'workdir.MIN_FREE_BYTES = 1 << 62; '
       "sys.argv[0] = 'experiments.cnn_imagenet'; "
       "runpy.run_module('experiments.cnn_imagenet', run_name='__main__', "
       'alter_sys=True)', *ARGS, f'--workdir={workdir}'],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
      text=True, timeout=600, check=False)
  assert p.returncode != 0
  lines = _user_lines(p.stderr)
  assert len(lines) == 1 and lines[0].startswith(
      f'error: no space left on the device of workdir {workdir}'), p.stderr
  assert not workdir.exists()
