"""Checkpointer integrity: corrupt steps are detected, set aside, never lost.

Tiny states written by the real Checkpointer (orbax, OCDBT) and damaged the
way disks and crashes damage them. The layout of a step, as orbax 0.12
writes it: ``<step>/{_CHECKPOINT_METADATA, integrity.json, data/metadata,
state/{_METADATA, manifest.ocdbt, d/*, ocdbt.process_0/{manifest.ocdbt, d/*}}}``.
"""

import errno
import logging as std_logging
import os
import random
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dlresearch import checkpoint, workdir as workdir_lib
from dlresearch.checkpoint import (CheckpointRestoreError, CheckpointWriteError,
                                   Checkpointer, CorruptCheckpointError,
                                   NoGoodCheckpointError)


def make_state(step: int, size: int = 4096) -> dict:
  return {'params': {'w': jnp.arange(size, dtype=jnp.float32) + step,
                     'b': jnp.full((2, 3), 0.5 * step, jnp.float32)},
          'model_state': {'mean': jnp.ones((4,), jnp.float32) * step},
          'step': jnp.int32(step)}


ABSTRACT = jax.eval_shape(lambda: make_state(0))


def data_state(step: int) -> dict:
  return {'step': step, 'seed': 0, 'batch_size': 4}


def assert_state(state, step: int):
  want = make_state(step)
  for got, expected in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def save_steps(directory: str, steps, keep: int = 3) -> None:
  ckpt = Checkpointer(directory, keep)
  for step in steps:
    ckpt.save(step, make_state(step), data_state(step))
  ckpt.close()


@pytest.fixture
def ckpt_dir(tmp_path):
  directory = str(tmp_path / 'work' / 'checkpoints')
  save_steps(directory, (1, 2, 3))
  return directory


def tree(directory: str) -> dict:
  """{relative path: bytes} of every file under ``directory``."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


# -- ways to damage a step ---------------------------------------------------


def _array_file(step_dir: str) -> str:
  """The largest array data file of the state item (ocdbt.process_0/d/*)."""
  d = os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd')
  files = [os.path.join(d, n) for n in os.listdir(d)]
  assert files, f'no array files in {d}'
  return max(files, key=os.path.getsize)


def _truncate(path: str, keep: float = 0.5) -> None:
  os.truncate(path, int(os.path.getsize(path) * keep))


def truncate_array(step_dir):
  _truncate(_array_file(step_dir))


def empty_ocdbt_manifest(step_dir):
  _truncate(os.path.join(step_dir, 'state', 'manifest.ocdbt'), 0)


def truncate_state_metadata(step_dir):
  _truncate(os.path.join(step_dir, 'state', '_METADATA'))


def truncate_data_json(step_dir):
  _truncate(os.path.join(step_dir, 'data', 'metadata'))


def delete_state_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'state'))


def random_array_bytes(step_dir):
  path = _array_file(step_dir)
  with open(path, 'r+b') as f:
    f.write(random.Random(0).randbytes(os.path.getsize(path)))


def flip_one_bit(step_dir):
  path = _array_file(step_dir)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))


def overwrite_64_bytes(step_dir):
  path = _array_file(step_dir)
  with open(path, 'r+b') as f:
    f.seek(max(0, os.path.getsize(path) - 64) // 2)
    f.write(b'\xa5' * 64)


CORRUPTIONS = [truncate_array, empty_ocdbt_manifest, truncate_state_metadata,
               truncate_data_json, delete_state_item, random_array_bytes,
               flip_one_bit, overwrite_64_bytes]


# -- tests ---------------------------------------------------------------------


def test_save_restore_and_manifest(ckpt_dir):
  ckpt = Checkpointer(ckpt_dir)
  assert ckpt.all_steps() == [1, 2, 3] and ckpt.latest_step() == 3
  for step in (1, 2, 3):
    assert ckpt.verify(step) is True
  state, data = ckpt.restore(ABSTRACT)
  assert_state(state, 3)
  assert data == data_state(3)
  state, data, step = ckpt.restore_latest_good(ABSTRACT)
  assert step == 3 and data == data_state(3)
  assert_state(state, 3)
  ckpt.close()
  assert not any(checkpoint.TMP_MARKER in n for n in os.listdir(ckpt_dir))


@pytest.mark.parametrize('corrupt', CORRUPTIONS, ids=lambda f: f.__name__)
def test_corrupt_latest_falls_back(ckpt_dir, corrupt, caplog):
  corrupt(os.path.join(ckpt_dir, '3'))
  ckpt = Checkpointer(ckpt_dir)
  with caplog.at_level(std_logging.WARNING):
    state, data, step = ckpt.restore_latest_good(ABSTRACT)
  assert step == 2 and data == data_state(2)
  assert_state(state, 2)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno >= std_logging.WARNING and 'unreadable' in r.getMessage()]
  assert len(warnings) == 1 and '\n' not in warnings[0], warnings
  assert warnings[0].startswith('checkpoint step 3 is unreadable (')
  assert 'moved to checkpoints/corrupt-3, resuming from the previous one' in warnings[0]
  assert sorted(os.listdir(ckpt_dir)) == ['1', '2', 'corrupt-3']
  with pytest.raises(CorruptCheckpointError):
    checkpoint.verify_step_dir(os.path.join(ckpt_dir, 'corrupt-3'), 3)

  # Training goes on: corrupt-3 is neither a step nor counted by rotation.
  assert ckpt.latest_step() == 2
  for new in (3, 4, 5):
    ckpt.save(new, make_state(new), data_state(new))
  ckpt.wait()
  assert ckpt.all_steps() == [3, 4, 5]
  assert sorted(os.listdir(ckpt_dir)) == ['3', '4', '5', 'corrupt-3']
  state, data, step = ckpt.restore_latest_good(ABSTRACT)
  assert step == 5 and data == data_state(5)
  assert_state(state, 5)
  ckpt.close()


def test_second_corruption_of_same_step_gets_new_name(ckpt_dir):
  ckpt = Checkpointer(ckpt_dir)
  for _ in range(2):
    flip_one_bit(os.path.join(ckpt_dir, '3'))
    assert ckpt.restore_latest_good(ABSTRACT)[2] == 2
    ckpt.save(3, make_state(3), data_state(3))
    ckpt.wait()
  ckpt.close()
  assert sorted(os.listdir(ckpt_dir)) == ['1', '2', '3', 'corrupt-3', 'corrupt-3-1']


def test_all_corrupt_raises_and_moves_nothing(ckpt_dir):
  for step, corrupt in zip((1, 2, 3), (flip_one_bit, truncate_data_json,
                                       delete_state_item)):
    corrupt(os.path.join(ckpt_dir, str(step)))
  before = tree(ckpt_dir)
  ckpt = Checkpointer(ckpt_dir)
  with pytest.raises(NoGoodCheckpointError) as e:
    ckpt.restore_latest_good(ABSTRACT)
  ckpt.close()
  message = str(e.value)
  assert '\n' not in message
  for step in (1, 2, 3):
    assert f'step {step}: ' in message
  assert 'nothing was moved or deleted' in message
  assert tree(ckpt_dir) == before


def test_verify(ckpt_dir):
  ckpt = Checkpointer(ckpt_dir)
  assert ckpt.verify(3)
  overwrite_64_bytes(os.path.join(ckpt_dir, '3'))
  with pytest.raises(CorruptCheckpointError, match=r'step 3 .*sha256 mismatch'):
    ckpt.verify(3)
  with pytest.raises(CorruptCheckpointError, match='step 3'):
    ckpt.restore(ABSTRACT)
  os.remove(os.path.join(ckpt_dir, '2', checkpoint.INTEGRITY_FILE))
  with pytest.raises(CorruptCheckpointError, match='integrity.json is missing'):
    ckpt.verify(2)
  with open(os.path.join(ckpt_dir, '1', checkpoint.INTEGRITY_FILE), 'w') as f:
    f.write('{"files": ')
  with pytest.raises(CorruptCheckpointError, match='integrity.json is unreadable'):
    ckpt.verify(1)
  ckpt.close()


def _save_legacy(directory: str, steps) -> None:
  """Steps as the previous dlresearch wrote them: plain orbax, no manifest."""
  mngr = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True),
      item_names=('state', 'data'))
  for step in steps:
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(make_state(step)),
        data=ocp.args.JsonSave(data_state(step))))
  mngr.wait_until_finished()
  mngr.close()


def test_checkpoint_without_manifest_is_refused(tmp_path, monkeypatch):
  """No manifest: nothing can vouch for the bytes, so nothing restores
  (orbax keeps no checksum of them) unless the user opts in."""
  monkeypatch.delenv(checkpoint.ALLOW_UNVERIFIED_ENV, raising=False)
  directory = str(tmp_path / 'checkpoints')
  _save_legacy(directory, (1, 2))
  before = tree(directory)
  ckpt = Checkpointer(directory)
  with pytest.raises(checkpoint.UnverifiedCheckpointError,
                     match='no integrity.json.*DLRESEARCH_ALLOW_UNVERIFIED'):
    ckpt.verify(2)
  with pytest.raises(NoGoodCheckpointError,
                     match=r'step 2: it has no integrity.json.*'
                     'DLRESEARCH_ALLOW_UNVERIFIED_RESTORE=1'):
    ckpt.restore_latest_good(ABSTRACT)
  ckpt.close()
  assert tree(directory) == before


@pytest.mark.parametrize('corrupt', [None, truncate_array, truncate_data_json,
                                     delete_state_item],
                         ids=lambda f: getattr(f, '__name__', 'intact'))
def test_legacy_checkpoint_without_manifest(tmp_path, corrupt, caplog,
                                            monkeypatch):
  monkeypatch.setenv(checkpoint.ALLOW_UNVERIFIED_ENV, '1')  # the opt-in
  directory = str(tmp_path / 'checkpoints')
  _save_legacy(directory, (1, 2))
  if corrupt:
    corrupt(os.path.join(directory, '2'))
  ckpt = Checkpointer(directory)
  assert ckpt.verify(1) is False
  with caplog.at_level(std_logging.WARNING):
    state, data, step = ckpt.restore_latest_good(ABSTRACT)
  ckpt.close()
  want = 1 if corrupt else 2
  assert step == want and data == data_state(want)
  assert_state(state, want)
  assert any('cannot be verified' in r.getMessage() for r in caplog.records)
  assert ('corrupt-2' in os.listdir(directory)) == bool(corrupt)


def test_intact_checkpoint_that_does_not_fit_is_not_moved(ckpt_dir):
  other = jax.eval_shape(lambda: make_state(0, size=4097))
  ckpt = Checkpointer(ckpt_dir)
  with pytest.raises(CheckpointRestoreError, match='step 3 is intact'):
    ckpt.restore_latest_good(other)
  ckpt.close()
  assert sorted(os.listdir(ckpt_dir)) == ['1', '2', '3']


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_manifest(monkeypatch):
  monkeypatch.setattr(os, 'fsync', _no_space)  # our integrity.json


def _fail_orbax_json(monkeypatch):
  from etils import epath  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(type(epath.Path('/')), 'write_text', _no_space)


@pytest.mark.parametrize('inject', [_fail_manifest, _fail_orbax_json],
                         ids=['manifest', 'orbax_json'])
def test_write_error_keeps_earlier_checkpoints(ckpt_dir, monkeypatch, inject):
  before = tree(ckpt_dir)
  with workdir_lib.WorkdirLock(os.path.dirname(ckpt_dir)):
    ckpt = Checkpointer(ckpt_dir)
    inject(monkeypatch)
    with pytest.raises(CheckpointWriteError) as e:
      ckpt.save(4, make_state(4), data_state(4))
      ckpt.wait()
    monkeypatch.undo()
    message = str(e.value)
    assert '\n' not in message
    assert 'checkpoint step 4' in message and ckpt_dir in message
    assert 'No space left on device' in message
    assert ckpt.all_steps() == [1, 2, 3]
    assert {n for n in tree(ckpt_dir) if not n.startswith('4.')} == set(before)
    assert all(tree(ckpt_dir)[n] == before[n] for n in before)
    assert ckpt.restore_latest_good(ABSTRACT)[2] == 3
    ckpt.save(4, make_state(4), data_state(4))  # the disk is back: retry
    ckpt.close()  # also removes the failed attempt's temporary dir
  assert sorted(os.listdir(ckpt_dir)) == ['2', '3', '4']
  ckpt = Checkpointer(ckpt_dir)
  assert ckpt.verify(4)
  assert_state(ckpt.restore(ABSTRACT)[0], 4)
  ckpt.close()


def test_disk_full_on_small_tmpfs(tmp_path):
  mount = tmp_path / 'small'
  mount.mkdir()
  try:
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=200k', 'tmpfs',
                    str(mount)], check=True, capture_output=True)
  except (OSError, subprocess.CalledProcessError) as e:
    pytest.skip(f'cannot mount a tmpfs here: {e}')
  try:
    directory = str(mount / 'work' / 'checkpoints')
    size = 5_000  # ~20 KB a step: a few fit in 200 KB, not all
    saved, error = [], None
    with workdir_lib.WorkdirLock(str(mount / 'work')):
      ckpt = Checkpointer(directory, keep=3)
      try:
        for step in range(1, 10):
          ckpt.save(step, make_state(step, size), data_state(step))
          ckpt.wait()
          saved.append(step)
      except CheckpointWriteError as e:
        error = e
      ckpt.close()
      assert error is not None, 'the tmpfs never filled up'
      assert '\n' not in str(error) and directory in str(error)
      assert saved, 'not even one checkpoint fitted'
      ckpt = Checkpointer(directory, keep=3)
      abstract = jax.eval_shape(lambda: make_state(0, size))
      state, data, step = ckpt.restore_latest_good(abstract)
      ckpt.close()
    assert step == saved[-1] and data == data_state(step)
    np.testing.assert_array_equal(state['params']['w'],
                                  make_state(step, size)['params']['w'])
    assert not any(n.startswith('corrupt') for n in os.listdir(directory))
  finally:
    subprocess.run(['umount', '-l', str(mount)], check=False)


def test_stale_tmp_dirs_removed_only_under_lock(tmp_path):
  work = tmp_path / 'work'
  directory = str(work / 'checkpoints')
  save_steps(directory, (1,))
  stale = os.path.join(directory, '7' + checkpoint.TMP_MARKER + '-1234')
  os.makedirs(os.path.join(stale, 'state'))
  open(os.path.join(stale, 'state', 'x'), 'w').close()
  Checkpointer(directory).close()  # no lock: it may be a live writer's
  assert os.path.isdir(stale)
  with workdir_lib.WorkdirLock(str(work)):
    ckpt = Checkpointer(directory)
    assert not os.path.exists(stale)
    assert ckpt.all_steps() == [1]
    ckpt.close()


def test_load_variables_skips_corrupt_steps(ckpt_dir):
  flip_one_bit(os.path.join(ckpt_dir, '3'))
  before = tree(ckpt_dir)
  variables = checkpoint.load_variables(os.path.dirname(ckpt_dir))
  np.testing.assert_array_equal(variables['params']['w'],
                                make_state(2)['params']['w'])
  assert tree(ckpt_dir) == before  # another run's directory: nothing moved
  with pytest.raises(CorruptCheckpointError):
    checkpoint.load_variables(os.path.join(ckpt_dir, '3'))
  variables = checkpoint.load_variables(os.path.join(ckpt_dir, '1'))
  np.testing.assert_array_equal(variables['model_state']['mean'],
                                make_state(1)['model_state']['mean'])


def test_sharded_state_round_trip(tmp_path):
  """As train.run saves it: arrays laid out over a mesh of all devices."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  spec = jax.sharding.PartitionSpec('data')
  sharding = jax.sharding.NamedSharding(mesh, spec)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  n = 8 * jax.device_count()

  def state(step):
    w = jnp.arange(n, dtype=jnp.float32) + step
    return {'w': jax.device_put(w, sharding),
            'step': jax.device_put(jnp.int32(step), replicated)}

  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state(0))
  directory = str(tmp_path / 'checkpoints')
  ckpt = Checkpointer(directory)
  for step in (1, 2):
    ckpt.save(step, state(step), data_state(step))
  ckpt.wait()
  assert ckpt.verify(2)
  flip_one_bit(os.path.join(directory, '2'))
  restored, data, step = ckpt.restore_latest_good(abstract)
  ckpt.close()
  assert step == 1 and data == data_state(1)
  assert restored['w'].sharding == sharding
  np.testing.assert_array_equal(restored['w'], np.arange(n) + 1)


@pytest.mark.parametrize('rewrite_manifest', [False, True],
                         ids=['as_copied', 'manifest_step_rewritten'])
def test_step_holding_another_steps_files_is_refused(ckpt_dir, caplog,
                                                     rewrite_manifest):
  """``3/`` holding step 2's files (a valid manifest of step 2, or one whose
  step was rewritten to 3): refused like a damaged step, and step 3 is saved
  again rather than skipped."""
  step3 = os.path.join(ckpt_dir, '3')
  shutil.rmtree(step3)
  shutil.copytree(os.path.join(ckpt_dir, '2'), step3)
  if rewrite_manifest:
    checkpoint.write_manifest(step3, 3)
  ckpt = Checkpointer(ckpt_dir)
  with pytest.raises(CorruptCheckpointError, match='holds step 2'):
    ckpt.restore(ABSTRACT, 3)
  with caplog.at_level(std_logging.WARNING):
    state, data, step = ckpt.restore_latest_good(ABSTRACT)
  assert step == 2 and data == data_state(2)
  assert_state(state, 2)
  warnings = [r.getMessage() for r in caplog.records
              if 'checkpoint step 3' in r.getMessage()]
  assert len(warnings) == 1 and 'holds step 2' in warnings[0], warnings
  assert 'moved to checkpoints/corrupt-3' in warnings[0]
  ckpt.save(3, make_state(3), data_state(3))  # not skipped
  ckpt.close()
  assert checkpoint.verify_step_dir(step3, 3)
  ckpt = Checkpointer(ckpt_dir)
  state, data = ckpt.restore(ABSTRACT, 3)
  ckpt.close()
  assert_state(state, 3)
  assert data == data_state(3)
