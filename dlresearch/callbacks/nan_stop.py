"""NaN stop: a non-finite loss, gradient or state ends the run, unsaved.

Checked where the values reach the host anyway: the train line of a log
step (the window mean of ``loss`` and ``grad_norm``), and before every
checkpoint (that step's loss and gradient norm, then every float of the
params, optimizer state and model state: an overflowing update makes them
inf/NaN from finite gradients). ``NonFiniteLossError`` says where; the CLI
turns it into exit code 3.
"""

import math

from dlresearch import state as state_lib
from dlresearch.callbacks.base import Callback, StepMetrics


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/inf; nothing non-finite was saved."""


class NanStop(Callback):
  """Raises ``NonFiniteLossError`` on non-finite metrics or state."""

  def __init__(self):
    self._metrics: StepMetrics | None = None

  @staticmethod
  def _fail(what: str) -> None:
    raise NonFiniteLossError(
        f'{what}: the run diverged; no checkpoint of this state was written')

  def check(self, step: int, metrics) -> None:
    bad = [k for k in ('loss', 'grad_norm')
           if k in metrics and not math.isfinite(metrics[k])]
    if bad:
      self._fail(f'non-finite {" and ".join(bad)} '
                 f'({", ".join(str(metrics[k]) for k in bad)}) at step {step}')

  def on_step(self, step, state, metrics):
    self._metrics = metrics
    if metrics.logged is not None:
      self.check(step, metrics.logged)

  def on_checkpoint(self, step, state):
    if self._metrics is not None and self._metrics.step == step:
      self.check(step, self._metrics)
    # The loss and gradients come from before the update; the state saved
    # is after it (an overflowing learning rate turns it to inf/NaN).
    reason = state_lib.non_finite_reason(state)
    if reason:
      self._fail(f'{reason} after the update of step {step}')
