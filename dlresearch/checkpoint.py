"""Checkpoints: orbax CheckpointManager with the data iterator position.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,integrity.json}``. ``state``
is the train state pytree; ``data`` is the JSON iterator state ({'step',
'seed', 'batch_size'}), so a resumed run reads exactly the batches it would
have read. Orbax writes to ``<step>.orbax-checkpoint-tmp*`` and renames it
when complete, so a crash mid-save leaves the previous checkpoint as the
latest; such temporary directories are removed when the next run starts
holding the workdir lock (``workdir.WorkdirLock``).

Integrity: ``integrity.json`` holds the sha256 and size of every file of the
step (except orbax's own ``_CHECKPOINT_METADATA`` and ``commit_success.txt``,
which it rewrites at commit). It is computed from the files on disk, not from
the state in memory, so it also covers what orbax and tensorstore wrote; it
is written into the temporary directory from orbax's post-finalization hook,
which runs on process 0 after every process's writes and before the rename,
so a step directory never appears without it. Restoring verifies it first;
``restore_latest_good`` moves a step that fails to ``corrupt-<step>/`` (a
name orbax does not list, so it is neither restored nor rotated) and resumes
from the previous one. A step is refused the same way when its content is of
another step (the manifest's ``step``, the data iterator's ``step`` or the
state's ``step`` differ from the directory's name: a directory copied or
renamed by hand), and when it cannot be verified: no manifest (written before
manifests existed, or deleted with orbax's ``_CHECKPOINT_METADATA``) or a
manifest format newer than this version. Orbax keeps no checksum of the array
bytes (a flipped bit in ``d/*`` restores without complaint), so its own
metadata cannot stand in for the manifest. ``DLRESEARCH_ALLOW_UNVERIFIED_RESTORE=1``
restores such unverifiable steps anyway, with a warning.

Resume order (``train.run``): a checkpoint in the workdir, else the variables
of ``--init_from`` (``load_variables`` here; what loads is decided by
``dlresearch/init.py``), else a fresh init.
"""

import datetime
import glob
import hashlib
import json
import os
import shutil
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from dlresearch import workdir as workdir_lib

FORMAT_VERSION = 1
INTEGRITY_FILE = 'integrity.json'
CORRUPT_PREFIX = 'corrupt-'
TMP_MARKER = '.orbax-checkpoint-tmp'
# Top-level files orbax rewrites after the post-finalization hook.
_UNHASHED = frozenset({'_CHECKPOINT_METADATA', 'commit_success.txt',
                       INTEGRITY_FILE})
_CHUNK = 1 << 20
# Set to 1 to restore steps that cannot be verified (no integrity.json).
ALLOW_UNVERIFIED_ENV = 'DLRESEARCH_ALLOW_UNVERIFIED_RESTORE'


class CheckpointError(Exception):
  """A checkpoint problem; the message is one line."""


class CorruptCheckpointError(CheckpointError):
  """Step ``step`` cannot be read or fails verification (``reason``)."""

  def __init__(self, step: int, reason: str):
    super().__init__(f'checkpoint step {step} is unreadable ({reason})')
    self.step, self.reason = step, reason


class UnverifiedCheckpointError(CorruptCheckpointError):
  """Step ``step`` has no usable manifest, so its bytes cannot be checked.

  Refused (treated as corrupt) unless ``DLRESEARCH_ALLOW_UNVERIFIED_RESTORE=1``.
  """


def unverified_allowed() -> bool:
  """Whether the user opted in to restoring unverifiable steps."""
  return os.environ.get(ALLOW_UNVERIFIED_ENV, '').strip().lower() in (
      '1', 'true', 'yes')


class NoGoodCheckpointError(CheckpointError):
  """Checkpoints exist, but none can be restored."""


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written; earlier ones are intact."""


class CheckpointRestoreError(CheckpointError):
  """An intact (verified) checkpoint does not restore onto the given state.

  Not corruption (the bytes are as written), so nothing is moved aside: the
  state's structure, shapes or shardings differ from the checkpoint's.
  """

  def __init__(self, step: int, reason: str):
    super().__init__(f'checkpoint step {step} is intact but does not fit the '
                     f'model state ({reason})')
    self.step, self.reason = step, reason


def _one_line(e: BaseException, limit: int = 200) -> str:
  text = ' '.join(str(e).split()) or type(e).__name__
  if isinstance(e, OSError) and e.strerror:
    text = f'{e.strerror}: {e.filename}' if e.filename else e.strerror
  text = text if len(text) <= limit else text[:limit - 3] + '...'
  return f'{type(e).__name__}: {text}'


# ---------------------------------------------------------------------------
# Integrity manifests.


def _step_files(step_dir: str) -> list[str]:
  """Files of ``step_dir`` covered by the manifest, as sorted relative paths."""
  out = []
  for root, dirs, files in os.walk(step_dir, onerror=_raise):
    dirs.sort()
    for name in files:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel not in _UNHASHED:
        out.append(rel.replace(os.sep, '/'))
  return sorted(out)


def _raise(e: OSError):
  raise e


def _sha256(path: str) -> tuple[str, int]:
  digest, size = hashlib.sha256(), 0
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
      size += len(chunk)
  return digest.hexdigest(), size


def _atomic_write(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` via tmp + fsync + rename (+ dir fsync)."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
      os.fsync(dir_fd)
    finally:
      os.close(dir_fd)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_manifest(step_dir: str, step: int) -> dict:
  """Hashes every file of ``step_dir`` into ``step_dir/integrity.json``."""
  files = {}
  for rel in _step_files(step_dir):
    sha, size = _sha256(os.path.join(step_dir, rel))
    files[rel] = {'sha256': sha, 'size': size}
  manifest = {'format_version': FORMAT_VERSION, 'step': step,
              'written': datetime.datetime.now().astimezone().isoformat(),
              'files': files}
  _atomic_write(os.path.join(step_dir, INTEGRITY_FILE),
                json.dumps(manifest, indent=1, sort_keys=True))
  return manifest


def verify_step_dir(step_dir: str, step: int) -> bool:
  """True if ``step_dir`` matches its manifest and holds step ``step``.

  Raises CorruptCheckpointError on a missing, unreadable, resized or changed
  file, an unreadable manifest, a missing manifest in a step that was written
  with one, or a manifest of another step. A step that cannot be verified (no
  manifest at all, or a newer manifest format) raises
  UnverifiedCheckpointError, or returns False when the user opted in
  (``DLRESEARCH_ALLOW_UNVERIFIED_RESTORE=1``).
  """
  if not os.path.isdir(step_dir):
    raise CorruptCheckpointError(step, f'{step_dir} is missing')
  path = os.path.join(step_dir, INTEGRITY_FILE)
  if not os.path.exists(path):
    if _written_with_manifest(step_dir):
      raise CorruptCheckpointError(step, f'{INTEGRITY_FILE} is missing')
    return _unverified(step, f'it has no {INTEGRITY_FILE} (written by an '
                       'older dlresearch, or deleted)')
  try:
    with open(path) as f:
      manifest = json.load(f)
    files = manifest['files']
    version = int(manifest['format_version'])
    written_step = int(manifest['step'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpointError(
        step, f'{INTEGRITY_FILE} is unreadable: {_one_line(e)}') from None
  try:
    _read_json(os.path.join(step_dir, '_CHECKPOINT_METADATA'), missing_ok=True)
  except (OSError, ValueError) as e:
    raise CorruptCheckpointError(
        step, f'_CHECKPOINT_METADATA is unreadable: {_one_line(e)}') from None
  if written_step != step:
    raise CorruptCheckpointError(step, _other_step(written_step,
                                                   INTEGRITY_FILE))
  if version > FORMAT_VERSION:
    return _unverified(step, f'its {INTEGRITY_FILE} has format {version}, '
                       f'newer than this version reads ({FORMAT_VERSION})')
  for rel, expected in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      raise CorruptCheckpointError(step, f'{rel} is missing')
    try:
      sha, size = _sha256(full)
    except OSError as e:
      raise CorruptCheckpointError(step, f'cannot read {rel}: '
                                   f'{_one_line(e)}') from None
    if size != expected['size']:
      raise CorruptCheckpointError(
          step, f'{rel} has {size} bytes, expected {expected["size"]}')
    if sha != expected['sha256']:
      raise CorruptCheckpointError(step, f'{rel} has changed (sha256 mismatch)')
  return True


def _unverified(step: int, why: str) -> bool:
  """False (restore unverified) if the user opted in, else refuse."""
  if unverified_allowed():
    return False
  raise UnverifiedCheckpointError(
      step, f'{why}, so its bytes cannot be verified; set '
      f'{ALLOW_UNVERIFIED_ENV}=1 to restore unverified checkpoints')


def _other_step(found: int, where: str) -> str:
  return (f'it holds step {found} ({where}), not the step its directory is '
          'named for')


def content_step_mismatch(step: int, state, data_state: dict) -> str | None:
  """Why a restored ``(state, data_state)`` is not of step ``step``, or None.

  A step directory copied or renamed by hand restores fine but would resume
  at the wrong step and make the run skip its later saves.
  """
  if isinstance(data_state, dict) and 'step' in data_state:
    try:
      found = int(data_state['step'])
    except (TypeError, ValueError):
      return 'the data iterator state has no integer step'
    if found != step:
      return _other_step(found, 'data iterator state')
  leaf = state.get('step') if isinstance(state, dict) else getattr(
      state, 'step', None)
  if leaf is not None:
    shards = getattr(leaf, 'addressable_shards', None)
    value = shards[0].data if shards else leaf
    found = int(np.asarray(value).reshape(-1)[0])
    if found != step:
      return _other_step(found, 'state')
  return None


def _written_with_manifest(step_dir: str) -> bool:
  """Whether orbax's step metadata says dlresearch wrote a manifest."""
  try:
    meta = _read_json(os.path.join(step_dir, '_CHECKPOINT_METADATA'))
    return int((meta.get('custom_metadata') or {}).get(
        'dlresearch_format', 0)) >= 1
  except (OSError, ValueError, TypeError, AttributeError):
    return False


def _read_json(path: str, missing_ok: bool = False) -> dict:
  """The JSON object in ``path`` ({} if missing and ``missing_ok``)."""
  if missing_ok and not os.path.exists(path):
    return {}
  with open(path) as f:
    value = json.load(f)
  if not isinstance(value, dict):
    raise ValueError(f'{os.path.basename(path)} holds no JSON object')
  return value


# ---------------------------------------------------------------------------
# Multi-process agreement: process 0 reads and moves files, everyone decides
# the same way.


def _is_chief() -> bool:
  return jax.process_index() == 0


def _broadcast(code: int) -> int:
  if jax.process_count() == 1:
    return code
  return int(multihost_utils.broadcast_one_to_all(np.int32(code)))


def _everyone(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
      multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------
# The checkpointer.


class Checkpointer:
  """Save/restore (state, data iterator state) in ``directory``.

  Saving is asynchronous: ``save`` returns once the arrays are copied to the
  host; a write error surfaces as CheckpointWriteError from the next
  ``save``, ``wait`` or ``close``. Restoring verifies the step's manifest.
  """

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._pending = None  # the step orbax is writing in the background
    self._keep = keep
    if _is_chief():
      self._remove_stale_tmp()
    self._mngr = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, create=True,
            async_options=ocp.AsyncOptions(
                post_finalization_callback=self._on_finalized)),
        item_names=('state', 'data'),
    )

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # -- writing ---------------------------------------------------------------

  def save(self, step: int, state, data_state: dict) -> None:
    """Starts writing ``step``; the caller has checked the state is finite."""
    self._finish_pending()
    if step in self._mngr.all_steps():
      return
    self._check_space(step, state)
    self._pending = step
    try:
      self._mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state)),
                      force=True,
                      custom_metadata={'dlresearch_format': FORMAT_VERSION})
    except Exception as e:  # pylint: disable=broad-exception-caught
      self._pending = None
      self._after_write_failure()
      raise CheckpointWriteError(
          f'could not write checkpoint step {step} to {self.directory}: '
          f'{_one_line(e)}; earlier checkpoints are intact') from e

  def _check_space(self, step: int, state) -> None:
    """CheckpointWriteError, before writing anything, when the filesystem
    lacks room for ``step`` (the bytes this process writes, i.e. its
    replica-0 shards, plus 64 KiB + 5% for metadata).

    A full disk is then one clear line rather than a failed write deep in
    tensorstore; a disk that fills up during the write is still caught by
    ``wait``/``save``.
    """
    need = 0
    for leaf in jax.tree.leaves(state):
      shards = getattr(leaf, 'addressable_shards', None)
      if shards is None:
        need += np.asarray(leaf).nbytes
      else:
        need += sum(s.data.nbytes for s in shards if s.replica_id == 0)
    need = int(need * 1.05) + (64 << 10)
    try:
      stat = os.statvfs(self.directory)
      free = stat.f_bavail * stat.f_frsize
    except OSError:
      free = None  # unknown: let the write itself report
    ok = free is None or free >= need
    if not _everyone(ok):
      where = (f'{free / 2**20:.1f} MiB free' if not ok else
               'too little space on another process')
      raise CheckpointWriteError(
          f'could not write checkpoint step {step} to {self.directory}: no '
          f'space left on the device (needs ~{need / 2**20:.1f} MiB, {where});'
          ' earlier checkpoints are intact')

  def wait(self) -> None:
    """Blocks until the last save is on disk; CheckpointWriteError if not."""
    self._finish_pending()

  def close(self) -> None:
    try:
      self._finish_pending()
    except CheckpointWriteError:
      self._close_manager(quiet=True)
      raise
    self._close_manager()

  def _close_manager(self, quiet: bool = False) -> None:
    try:
      self._mngr.close()
    except Exception as e:  # pylint: disable=broad-exception-caught
      if not quiet:
        raise CheckpointWriteError(
            f'could not finish writing checkpoints to {self.directory}: '
            f'{_one_line(e)}') from e
    if _is_chief():
      self._remove_stale_tmp()  # of a failed save; only under the lock

  def _on_finalized(self) -> None:
    """Orbax hook (process 0, background thread): all items are written and
    finalized in the temporary directory, which is renamed next."""
    step = self._pending
    if step is None:
      return
    pattern = os.path.join(glob.escape(self.directory), f'{step}{TMP_MARKER}*')
    tmp = [p for p in glob.glob(pattern) if os.path.isdir(p)]
    target = max(tmp, key=os.path.getmtime) if tmp else self.step_dir(step)
    self._write_manifest(target, step)

  def _write_manifest(self, step_dir: str, step: int) -> None:
    try:
      write_manifest(step_dir, step)
    except OSError as e:
      raise CheckpointWriteError(
          f'could not write {INTEGRITY_FILE} of checkpoint step {step} in '
          f'{self.directory}: {_one_line(e)}') from e

  def _finish_pending(self) -> None:
    step = self._pending
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-exception-caught
      self._pending = None
      self._after_write_failure()
      if isinstance(e, CheckpointWriteError):
        raise CheckpointWriteError(
            f'{e}; earlier checkpoints are intact') from e
      raise CheckpointWriteError(
          f'could not write checkpoint step {step} to {self.directory}: '
          f'{_one_line(e)}; earlier checkpoints are intact') from e
    self._pending = None
    # Normally written by _on_finalized before the rename; this covers an
    # orbax that renames first or never calls the hook.
    if (step is not None and _is_chief() and os.path.isdir(self.step_dir(step))
        and not os.path.exists(os.path.join(self.step_dir(step),
                                            INTEGRITY_FILE))):
      self._write_manifest(self.step_dir(step), step)

  def _after_write_failure(self) -> None:
    """Replaces the orbax manager, which would repeat the error at every
    later save; the failed step's temporary dir is removed by ``close`` (not
    now: other items may still be writing into it)."""
    try:
      self._mngr.close()
    except Exception:  # pylint: disable=broad-exception-caught
      pass
    self._mngr = self._new_manager()

  def _remove_stale_tmp(self) -> None:
    """Removes temporary dirs of crashed writers (only under the lock)."""
    pattern = os.path.join(glob.escape(self.directory), f'*{TMP_MARKER}*')
    stale = sorted(glob.glob(pattern))
    if not stale:
      return
    names = ', '.join(os.path.basename(p) for p in stale)
    if not workdir_lib.holds_lock(self.directory):
      logging.info('leaving %s in %s: the workdir lock is not held, so they '
                   'may belong to a live writer', names, self.directory)
      return
    for path in stale:
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)
    logging.warning('removed unfinished checkpoint writes in %s: %s',
                    self.directory, names)

  # -- reading ---------------------------------------------------------------

  def verify(self, step: int) -> bool:
    """True if ``step`` matches its manifest, False if it cannot be verified
    and the user allows that (``verify_step_dir``); CorruptCheckpointError
    otherwise."""
    code, reason = 0, 'verification failed on process 0'
    if _is_chief():
      try:
        code = 1 if verify_step_dir(self.step_dir(step), step) else 2
      except UnverifiedCheckpointError as e:
        code, reason = 4, e.reason
      except CorruptCheckpointError as e:
        code, reason = 3, e.reason
    code = _broadcast(code)
    if code == 4:
      raise UnverifiedCheckpointError(step, reason)
    if code == 3:
      raise CorruptCheckpointError(step, reason)
    return code == 1

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict]:
    """Restores onto the shardings/dtypes of ``abstract_state``.

    Raises CorruptCheckpointError if the step fails verification or (without
    a manifest) orbax cannot read it; CheckpointRestoreError if a verified
    step does not fit ``abstract_state``.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise NoGoodCheckpointError(f'no checkpoint in {self.directory}')
    verified = self.verify(step)
    out, error = None, None
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore()))
      if not isinstance(out['data'], dict):
        raise ValueError('the data iterator state is not a JSON object')
    except Exception as e:  # pylint: disable=broad-exception-caught
      error = _one_line(e)
    if not _everyone(error is None):
      reason = error or 'restore failed on another process'
      if verified:
        raise CheckpointRestoreError(step, reason)
      raise CorruptCheckpointError(step, reason)
    mismatch = content_step_mismatch(step, out['state'], out['data'])
    if not _everyone(mismatch is None):
      raise CorruptCheckpointError(
          step, mismatch or 'it holds another step on another process')
    if not verified and _is_chief():
      logging.warning('checkpoint step %d cannot be verified; restored without '
                      'verifying its bytes because %s is set', step,
                      ALLOW_UNVERIFIED_ENV)
    return out['state'], dict(out['data'])

  def restore_latest_good(self, abstract_state, *, move_aside: bool = True,
                          check=None) -> tuple[Any, dict, int]:
    """(state, data_state, step) of the newest step that restores.

    Each newer step that is corrupt is logged in one warning line and, with
    ``move_aside``, moved to ``corrupt-<step>/`` (never deleted). Raises
    NoGoodCheckpointError, moving nothing, if no step restores; lets
    CheckpointRestoreError (an intact step that does not fit) through.
    ``check(state) -> reason | None`` rejects a step that reads fine but
    must not be trained on (e.g. non-finite values written by an older
    version); it is then treated as corrupt.
    """
    self._finish_pending()
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if not steps:
      raise NoGoodCheckpointError(f'no checkpoint in {self.directory}')
    bad = []
    for step in steps:
      try:
        state, data_state = self.restore(abstract_state, step)
        reason = check(state) if check is not None else None
        if reason:
          raise CorruptCheckpointError(step, reason)
      except CorruptCheckpointError as e:
        bad.append(e)
        continue
      self._set_aside(bad, step, move_aside)
      return state, data_state, step
    tried = '; '.join(f'step {e.step}: {e.reason}' for e in bad)
    raise NoGoodCheckpointError(
        f'no readable checkpoint in {self.directory} (tried {tried}); nothing '
        'was moved or deleted: fix or remove them, or use another --workdir')

  def _set_aside(self, bad: list[CorruptCheckpointError], good: int,
                 move: bool) -> None:
    if not bad:
      return
    parent = os.path.dirname(self.directory)
    for e in bad:
      where = 'left in place'
      if move and _is_chief():
        try:
          moved = self._move_aside(e.step)
          where = 'moved to ' + os.path.relpath(moved, parent)
        except OSError as err:
          where = f'could not be moved aside ({_one_line(err)})'
      if _is_chief():
        logging.warning('checkpoint step %d is unreadable (%s); %s, resuming '
                        'from the previous one (step %d)', e.step, e.reason,
                        where, good)
    if move:
      _barrier('dlresearch_checkpoint_set_aside')
      self._mngr.reload()

  def _move_aside(self, step: int) -> str:
    """Renames step ``step`` to ``corrupt-<step>[-n]``, a name orbax skips."""
    base = os.path.join(self.directory, f'{CORRUPT_PREFIX}{step}')
    dest, n = base, 0
    while os.path.lexists(dest):
      n += 1
      dest = f'{base}-{n}'
    os.rename(self.step_dir(step), dest)
    return dest


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def describe_init_from(path: str) -> str | None:
  """Why ``path`` cannot be an ``--init_from`` source, or None if it can.

  Cheap (no reading of arrays): ``path`` must be a readable workdir with
  checkpoints, a ``checkpoints/`` directory, or one ``checkpoints/<step>``.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    return f'{path} does not exist'
  if not os.path.isdir(path):
    return f'{path} is a file, not a run directory'
  if not os.access(path, os.R_OK | os.X_OK):
    return f'{path} is not readable'
  for candidate in (checkpoint_dir(path), path):
    if os.path.isdir(candidate) and any(
        n.isdigit() for n in os.listdir(candidate)):
      return None
  if os.path.isdir(os.path.join(path, 'state')):
    return None
  return (f'no checkpoint under {path}: pass a workdir of an earlier run, its '
          'checkpoints/ directory, or one checkpoints/<step> directory')


def load_variables(path: str) -> dict:
  """The params and model state of the newest good checkpoint under ``path``.

  ``path`` is a workdir, its ``checkpoints`` directory, or one step directory.
  Steps that fail verification are skipped with a warning (nothing is moved:
  the directory may belong to another run). Returned as host NumPy arrays:
  {'params': ..., 'model_state': ..., 'step': int}.
  """
  path = os.path.abspath(os.path.expanduser(path))
  for candidate in (checkpoint_dir(path), path):
    if os.path.isdir(candidate):
      mngr = ocp.CheckpointManager(candidate, item_names=('state', 'data'),
                                   options=ocp.CheckpointManagerOptions(read_only=True))
      try:
        steps = sorted(mngr.all_steps(), reverse=True)
        if steps:
          return _newest_good_variables(mngr, candidate, steps)
      finally:
        mngr.close()
  if os.path.isdir(os.path.join(path, 'state')):
    name = os.path.basename(path)
    step = int(name) if name.isdigit() else -1
    return _variables(lambda: ocp.StandardCheckpointer().restore(
        os.path.join(path, 'state')), path, step)
  raise FileNotFoundError(
      f'no checkpoint found under {path}: pass a workdir of an earlier run, its '
      f'checkpoints/ directory, or one checkpoints/<step> directory')


def _newest_good_variables(mngr, directory: str, steps: list[int]) -> dict:
  bad = []
  for step in steps:
    try:
      return _variables(lambda s=step: mngr.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))['state'],
                        os.path.join(directory, str(step)), step)
    except CorruptCheckpointError as e:
      logging.warning('%s; trying an older one', e)
      bad.append(e)
  tried = '; '.join(f'step {e.step}: {e.reason}' for e in bad)
  raise NoGoodCheckpointError(f'no readable checkpoint in {directory} '
                              f'(tried {tried})')


def _variables(restore, step_dir: str, step: int) -> dict:
  verify_step_dir(step_dir, step)
  try:
    state = restore()
    out = {'params': state['params'], 'model_state': state['model_state'],
           'step': int(np.asarray(state['step']))}
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CorruptCheckpointError(step, _one_line(e)) from e
  if step >= 0 and out['step'] != step:
    raise CorruptCheckpointError(step, _other_step(out['step'], 'state'))
  return out
