"""Checkpoints: orbax CheckpointManager with the data iterator position.

Layout: ``WORKDIR/checkpoints/<step>/{state,data}``. ``state`` is the train
state pytree; ``data`` is the JSON iterator state ({'step', 'seed',
'batch_size'}), so a resumed run reads exactly the batches it would have read.
Orbax writes to a temporary directory and renames it when complete, so a
crash mid-save leaves the previous checkpoint as the latest.

Resume order (``train.run``): a checkpoint in the workdir, else the params of
``--init_from``, else a fresh init.
"""

import os
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Save/restore (state, data iterator state) in ``directory``."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'data'),
    )

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, data_state: dict) -> None:
    if step in self._mngr.all_steps():
      return
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
                    force=True)

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict]:
    """Restores onto the shardings/dtypes of ``abstract_state``."""
    step = self.latest_step() if step is None else step
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out['state'], dict(out['data'])

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def load_variables(path: str) -> dict:
  """The params and model state of the latest checkpoint under ``path``.

  ``path`` is a workdir, its ``checkpoints`` directory, or one step directory.
  Returned as host NumPy arrays: {'params': ..., 'model_state': ...}.
  """
  path = os.path.abspath(os.path.expanduser(path))
  for candidate in (checkpoint_dir(path), path):
    if os.path.isdir(candidate):
      mngr = ocp.CheckpointManager(candidate, item_names=('state', 'data'),
                                   options=ocp.CheckpointManagerOptions(read_only=True))
      step = mngr.latest_step()
      if step is not None:
        state = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))['state']
        mngr.close()
        return {'params': state['params'], 'model_state': state['model_state']}
      mngr.close()
  step_dir = os.path.join(path, 'state')
  if os.path.isdir(step_dir):
    state = ocp.StandardCheckpointer().restore(step_dir)
    return {'params': state['params'], 'model_state': state['model_state']}
  raise FileNotFoundError(
      f'no checkpoint found under {path}: pass a workdir of an earlier run, its '
      f'checkpoints/ directory, or one checkpoints/<step> directory')


def merge_pretrained(target, pretrained, what: str = 'params'):
  """Copies every leaf of ``pretrained`` whose path and shape match ``target``.

  Leaves that are missing or differ in shape (e.g. a new classifier head)
  keep their fresh values. Returns (merged tree, loaded paths, skipped paths).
  """
  flat_t = flax.traverse_util.flatten_dict(flax.core.unfreeze(target), sep='/')
  flat_p = flax.traverse_util.flatten_dict(flax.core.unfreeze(pretrained), sep='/')
  loaded, skipped = [], []
  for key, value in flat_t.items():
    src = flat_p.get(key)
    if src is not None and tuple(np.shape(src)) == tuple(value.shape):
      flat_t[key] = jax.device_put(np.asarray(src, dtype=value.dtype), value.sharding)
      loaded.append(key)
    else:
      skipped.append(key)
  logging.info('init_from %s: loaded %d arrays, kept %d fresh: %s', what,
               len(loaded), len(skipped), skipped[:10])
  return flax.traverse_util.unflatten_dict(flat_t, sep='/'), loaded, skipped
