"""The workdir: checked before anything is written, and one writer at a time.

``check_workdir`` runs before anything is created and turns an unusable path
(a file, an uncreatable or read-only directory, a full disk) into one line;
``out_of_space`` turns a write that fails later for lack of space (ENOSPC,
EDQUOT, EFBIG) into one line too. ``WorkdirLock``
makes a second run on the same workdir refuse to start instead of
interleaving its checkpoints with the first one's. ``claim`` holds the lock
for one start and undoes what a start that fails before training wrote.

The lock is ``fcntl.flock`` on ``WORKDIR/.lock``, held on an open descriptor
for as long as the lock object lives. The kernel releases it when the process
dies however it dies (SIGKILL, OOM), so a stale lock is taken over by simply
acquiring it; the JSON inside ({pid, host, started}) only names the holder in
the error message. On NFS, Linux maps flock to POSIX locks, which lockd/NFSv4
honour across machines.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile

LOCK_FILE = '.lock'
# Less free space than this where the workdir goes: refused at start-up (the
# config, lock and first metrics lines need a few KiB; checkpoints are
# checked before each save, in checkpoint.py).
MIN_FREE_BYTES = 64 << 10
_NO_ROOM = {errno.ENOSPC: 'no space left on the device',
            errno.EDQUOT: 'disk quota exceeded',
            errno.EFBIG: 'file too large (filesystem or process size limit)'}

_HELD: dict[str, 'WorkdirLock'] = {}  # realpath of workdir -> held lock


class WorkdirError(Exception):
  """The workdir cannot be used; the message is one line."""


class WorkdirBusyError(WorkdirError):
  """Another live process holds the workdir lock."""


def check_workdir(path: str, *, must_exist: bool = False) -> str:
  """The absolute ``path`` if a run can write there; creates nothing.

  Raises WorkdirError when ``path`` is a file, lies under a file, does not
  exist (with ``must_exist``), or it or its nearest existing parent is not
  writable or has less than ``MIN_FREE_BYTES`` free.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise WorkdirError(f'workdir {path} is a file, not a directory')
    _check_writable(path, f'workdir {path} is not writable')
    _check_free(path, path)
    return path
  if must_exist:
    raise WorkdirError(f'workdir {path} does not exist')
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise WorkdirError(f'cannot create workdir {path}: {parent} is a file')
  _check_writable(parent, f'cannot create workdir {path}: {parent} is not '
                  'writable')
  _check_free(path, parent)
  return path


def _check_free(path: str, existing: str) -> None:
  try:
    stat = os.statvfs(existing)
  except OSError:
    return  # unknown: the writes themselves report (out_of_space)
  free = stat.f_bavail * stat.f_frsize
  if free < MIN_FREE_BYTES:
    raise WorkdirError(
        f'no space left on the device of workdir {path} ({free // 1024} KiB '
        f'free, {MIN_FREE_BYTES // 1024} KiB needed to start): free some space '
        'or use another --workdir')


def out_of_space(e: BaseException) -> str | None:
  """One line for a write that failed for lack of space, else None."""
  if not isinstance(e, OSError) or e.errno not in _NO_ROOM:
    return None
  where = f' writing {e.filename}' if e.filename else ''
  return (f'{_NO_ROOM[e.errno]}{where}: free some space (or use another '
          '--workdir or --data_dir) and rerun the same command')


def _check_writable(directory: str, message: str) -> None:
  if not os.access(directory, os.W_OK | os.X_OK):
    raise WorkdirError(message)
  try:  # os.access trusts mode bits; root and some mounts need a real try.
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    raise WorkdirError(f'{message} ({e.strerror})') from None


def holds_lock(path: str) -> bool:
  """Whether this process holds the lock of ``path`` or of a parent of it."""
  path = os.path.realpath(path)
  return any(path == d or path.startswith(d + os.sep) for d in _HELD)


def busy_holder(workdir: str) -> str | None:
  """Who holds ``workdir``'s lock when another live process does, else None
  (``--eval_only`` beside a training run writes nothing into its workdir)."""
  path = os.path.join(os.path.abspath(os.path.expanduser(workdir)), LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  except OSError:
    return None  # no lock file: nobody holds it
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError as e:
    holder = _describe_holder(fd)
    os.close(fd)
    return holder if e.errno in (errno.EAGAIN, errno.EACCES) else None
  fcntl.flock(fd, fcntl.LOCK_UN)
  os.close(fd)
  return None


class WorkdirLock:
  """One writer per workdir: ``with WorkdirLock(workdir): ...``.

  ``acquire`` creates the workdir if needed and raises WorkdirBusyError,
  naming the holder, when another live process holds it.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> 'WorkdirLock':
    if self._fd is not None:
      return self
    try:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      raise WorkdirError(f'cannot create the lock file {self.path}: '
                         f'{e.strerror}') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _describe_holder(fd)
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise WorkdirBusyError(
            f'workdir {self.workdir} is in use by {holder}; wait for that run '
            'to finish or use another --workdir') from None
      raise WorkdirError(f'cannot lock {self.path}: {e.strerror}') from None
    info = {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': datetime.datetime.now().astimezone().isoformat(
                timespec='seconds')}
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
      os.fsync(fd)
    except OSError:
      pass  # informational only; the flock is what excludes other writers
    self._fd = fd
    _HELD[os.path.realpath(self.workdir)] = self
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    _HELD.pop(os.path.realpath(self.workdir), None)
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)  # the file stays (unlinking a flocked file races)
    except OSError:
      pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _describe_holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode())
    return (f'pid {info["pid"]} on host {info["host"]} started '
            f'{info["started"]}')
  except (OSError, ValueError, KeyError, TypeError):
    return 'another process (holder unknown)'


@contextlib.contextmanager
def claim(workdir: str, *, lock: bool, clean_up: bool):
  """One start's hold on ``workdir``: locked (``lock``) while inside; if the
  start fails before ``metrics.jsonl`` exists, or at its first batch (an
  error with a true ``first_batch``, e.g. ``pipeline.ExampleError``: an
  unreadable example, a grain worker that died), and ``clean_up`` is set,
  what it wrote (config.json, a tokenizer, an empty metrics.jsonl and
  tensorboard/, empty checkpoints/, the lock file, while still held) is
  removed, and a directory it created with it."""
  created = not os.path.exists(workdir)
  before = set() if created else set(os.listdir(workdir))
  held = WorkdirLock(workdir).acquire() if lock else None
  try:
    yield
  except BaseException as e:
    if clean_up and 'metrics.jsonl' not in before and (
        getattr(e, 'first_batch', False) or
        not os.path.exists(os.path.join(workdir, 'metrics.jsonl'))):
      _remove_new(workdir, created, before)
    raise
  finally:
    if held is not None:
      held.release()


def _remove_new(workdir: str, created: bool, before: set) -> None:
  if created:
    shutil.rmtree(workdir, ignore_errors=True)
    return
  for name in set(os.listdir(workdir)) - before:
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
