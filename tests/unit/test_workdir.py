"""Workdir checks and the one-writer lock, with real competing processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from dlresearch import workdir as workdir_lib
from dlresearch.workdir import (WorkdirBusyError, WorkdirError, WorkdirLock,
                                check_workdir)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_HOLD = textwrap.dedent('''
    import sys, time
    from dlresearch.workdir import WorkdirLock
    WorkdirLock(sys.argv[1]).acquire()
    print('locked', flush=True)
    time.sleep(120)
''')

_TRY = textwrap.dedent('''
    import sys
    from dlresearch.workdir import WorkdirBusyError, WorkdirLock
    try:
      WorkdirLock(sys.argv[1]).acquire()
    except WorkdirBusyError as e:
      print(e)
      sys.exit(7)
    print('acquired')
''')


def _python(code: str, *args, **kwargs):
  env = {**os.environ, 'PYTHONPATH': REPO}
  return subprocess.Popen([sys.executable, '-c', code, *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kwargs)


@pytest.fixture
def holder(tmp_path):
  """A live process holding the lock of tmp_path/work."""
  work = str(tmp_path / 'work')
  proc = _python(_HOLD, work)
  line = proc.stdout.readline().strip()
  assert line == 'locked', proc.stderr.read()
  yield work, proc
  if proc.poll() is None:
    proc.kill()
  proc.wait()


def test_second_process_refused_then_takes_over_after_sigkill(holder):
  work, proc = holder
  # Another process is refused, naming the holder.
  other = _python(_TRY, work)
  out, err = other.communicate(timeout=60)
  assert other.returncode == 7, err
  assert f'pid {proc.pid} on host {socket.gethostname()} started ' in out
  # So is this one, in one line.
  with pytest.raises(WorkdirBusyError) as e:
    WorkdirLock(work).acquire()
  assert '\n' not in str(e.value) and f'pid {proc.pid} ' in str(e.value)
  assert not workdir_lib.holds_lock(work)

  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  with WorkdirLock(work) as lock:  # the kernel released the dead one's lock
    assert lock.held and workdir_lib.holds_lock(os.path.join(work, 'checkpoints'))
    with open(os.path.join(work, '.lock')) as f:
      info = json.load(f)
    assert info['pid'] == os.getpid() and info['host'] == socket.gethostname()
    other = _python(_TRY, work)
    out, _ = other.communicate(timeout=60)
    assert other.returncode == 7 and f'pid {os.getpid()} ' in out
  assert not workdir_lib.holds_lock(work)
  other = _python(_TRY, work)
  out, _ = other.communicate(timeout=60)
  assert other.returncode == 0 and out.strip() == 'acquired'


def test_lock_in_process(tmp_path):
  work = str(tmp_path / 'new' / 'work')
  lock = WorkdirLock(work)
  assert lock.acquire() is lock and lock.acquire() is lock  # idempotent
  assert os.path.isdir(work)
  with pytest.raises(WorkdirBusyError, match=f'pid {os.getpid()} '):
    WorkdirLock(work).acquire()  # a second writer in the same process, too
  lock.release()
  lock.release()
  assert not lock.held
  with WorkdirLock(work):
    pass


def test_lock_in_unusable_dir(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(WorkdirError, match='cannot create the lock file'):
    WorkdirLock(str(tmp_path / 'file' / 'work')).acquire()


def test_check_workdir_accepts_and_creates_nothing(tmp_path):
  before = sorted(os.listdir(tmp_path))
  new = tmp_path / 'a' / 'b'
  assert check_workdir(str(new)) == str(new)
  assert check_workdir(str(tmp_path)) == str(tmp_path)
  assert check_workdir(str(tmp_path), must_exist=True) == str(tmp_path)
  assert sorted(os.listdir(tmp_path)) == before


def test_check_workdir_errors(tmp_path):
  (tmp_path / 'file').write_text('x')
  cases = [((str(tmp_path / 'file'),), {}, 'is a file, not a directory'),
           ((str(tmp_path / 'file' / 'sub' / 'w'),), {},
            f'{tmp_path / "file"} is a file'),
           ((str(tmp_path / 'missing'),), {'must_exist': True}, 'does not exist')]
  for args, kwargs, message in cases:
    with pytest.raises(WorkdirError, match=message) as e:
      check_workdir(*args, **kwargs)
    assert '\n' not in str(e.value)


def test_check_workdir_not_writable(tmp_path):
  ro = tmp_path / 'ro'
  ro.mkdir()
  if os.geteuid() == 0:  # root ignores mode bits: use a read-only mount
    try:
      subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs',
                      str(ro)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
      pytest.skip(f'root, and cannot mount a read-only tmpfs: {e}')
  else:
    ro.chmod(0o555)
  try:
    with pytest.raises(WorkdirError, match=f'workdir {ro} is not writable'):
      check_workdir(str(ro))
    with pytest.raises(WorkdirError,
                       match=f'cannot create workdir {ro / "w"}: {ro} is not '
                       'writable'):
      check_workdir(str(ro / 'w'))
  finally:
    if os.geteuid() == 0:
      subprocess.run(['umount', '-l', str(ro)], check=False)
    else:
      ro.chmod(0o755)
