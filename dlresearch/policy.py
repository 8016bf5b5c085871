"""Keep-best and early-stopping policy, and the keep-best checkpoint.

``BestTracker`` is a small pure object fed every eval line::

    tracker = BestTracker('accuracy', mode='max', patience=5)
    decision = tracker.update(step, eval_metrics)
    if decision.is_best:
      best_ckpt.save(step, state.params, state.model_state, eval_metrics)
    if decision.should_stop:
      ...  # early stop

An eval improves on the best only when strictly better. ``patience=N``
(N > 0) stops right after the N-th eval in a row that did not improve;
``patience=0`` never stops. ``state_dict()`` / ``load_state_dict()`` carry
the best value, best step and evals since the best across a resume, so a
resumed run makes the same decisions as an uninterrupted one.

``BestCheckpoint`` keeps one orbax checkpoint of the params and model state
of the best step under ``WORKDIR/checkpoints_best/<step>``, separate from
the keep-last-K checkpoints: a new best is written completely before the old
one is deleted.
"""

import dataclasses
import math
import os
from typing import Any, Mapping

import orbax.checkpoint as ocp

_MODES = ('max', 'min')


@dataclasses.dataclass(frozen=True)
class Decision:
  is_best: bool
  should_stop: bool


class BestTracker:
  """Tracks the best value of ``metric`` over evals; decides keep-best/stop."""

  def __init__(self, metric: str, mode: str = 'max', patience: int = 0):
    if mode not in _MODES:
      raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}")
    if patience < 0:
      raise ValueError(f'patience must be >= 0 (0: never stop); got {patience}')
    self.metric, self.mode, self.patience = metric, mode, patience
    self.best_value: float | None = None
    self.best_step: int | None = None
    self.evals_since_best = 0

  def _value(self, step: int, metrics: Mapping[str, Any]) -> float:
    if self.metric not in metrics:
      raise ValueError(
          f'best-checkpoint metric {self.metric!r} is not in the eval metrics at '
          f'step {step}; available: {", ".join(sorted(metrics)) or "none"}')
    try:
      value = float(metrics[self.metric])
    except (TypeError, ValueError):
      raise ValueError(f'eval metric {self.metric!r} at step {step} is not a number: '
                       f'{metrics[self.metric]!r}') from None
    if not math.isfinite(value):
      raise ValueError(f'eval metric {self.metric!r} is {value} at step {step}; '
                       'cannot rank checkpoints by it')
    return value

  def _better(self, value: float) -> bool:
    if self.best_value is None:
      return True
    return value > self.best_value if self.mode == 'max' else value < self.best_value

  def update(self, step: int, metrics: Mapping[str, Any]) -> Decision:
    """Records the eval at ``step``; ValueError if the metric is missing or NaN."""
    value = self._value(step, metrics)
    if self._better(value):
      self.best_value, self.best_step, self.evals_since_best = value, int(step), 0
      return Decision(is_best=True, should_stop=False)
    self.evals_since_best += 1
    return Decision(is_best=False,
                    should_stop=self.patience > 0 and self.evals_since_best >= self.patience)

  def state_dict(self) -> dict:
    """JSON-able state, e.g. for the checkpoint's data item."""
    return {'metric': self.metric, 'mode': self.mode, 'best_value': self.best_value,
            'best_step': self.best_step, 'evals_since_best': self.evals_since_best}

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    for key in ('metric', 'mode'):
      if state[key] != getattr(self, key):
        raise ValueError(f'saved best-tracker state is for {key}={state[key]!r}, '
                         f'not {getattr(self, key)!r}')
    self.best_value = None if state['best_value'] is None else float(state['best_value'])
    self.best_step = None if state['best_step'] is None else int(state['best_step'])
    self.evals_since_best = int(state['evals_since_best'])


def best_checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints_best')


class BestCheckpoint:
  """One orbax checkpoint of ``{'params', 'model_state'}`` at the best step.

  ``save`` is called only for a new best (``Decision.is_best``); it writes
  ``directory/<step>`` (``variables`` and a JSON ``info`` item with the step
  and the eval metrics), then deletes the previous best. Every process calls
  it, as with the regular checkpointer.
  """

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
        item_names=('variables', 'info'),
    )

  def best_step(self) -> int | None:
    """The step of the kept checkpoint (the newest if a crash left two)."""
    return self._mngr.latest_step()

  def save(self, step: int, params: Any, model_state: Any,
           metrics: Mapping[str, Any] | None = None) -> None:
    step = int(step)
    if step in self._mngr.all_steps():  # the same eval again after a resume
      self._mngr.delete(step)
    info = {'step': step, 'metrics': {k: v for k, v in (metrics or {}).items()
                                      if isinstance(v, (int, float, str))}}
    self._mngr.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave({'params': params, 'model_state': model_state}),
        info=ocp.args.JsonSave(info)), force=True)
    self._mngr.wait_until_finished()
    for old in self._mngr.all_steps():
      if old != step:
        self._mngr.delete(old)

  def restore(self, abstract_variables: Any = None) -> tuple[dict, dict]:
    """``({'params', 'model_state'}, info)`` of the best step.

    With ``abstract_variables`` (a pytree of ``jax.ShapeDtypeStruct`` with
    shardings), arrays are restored onto those; otherwise as saved.
    FileNotFoundError when nothing was saved.
    """
    step = self.best_step()
    if step is None:
      raise FileNotFoundError(f'no best checkpoint in {self.directory}')
    out = self._mngr.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(abstract_variables),
        info=ocp.args.JsonRestore()))
    return dict(out['variables']), dict(out['info'])

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
