"""The ``Callback`` protocol: what the loop calls, and when.

``train.run(cfg, workdir, callbacks=[...])`` calls, in list order after the
built-in ones:

- ``on_train_start(loop)``: once per process start, before the first step
  of this start (a resumed run calls it again; a run with no step left to
  do does not call it). ``loop`` is a ``LoopInfo``:
  the config, workdir, model, first step, number of steps, the first batch
  and the compiled step ``step_fn``, which a callback may replace with an
  equivalent one (``ModelSummary`` hands back the step it compiled ahead of
  time).
- ``on_step_begin(step)``: before each step, ``step`` steps done so far.
- ``on_step(step, state, metrics)``: after every step; ``step`` counts the
  steps done (1 after the first). ``metrics`` is a ``StepMetrics``: this
  step's metrics, fetched to the host only when read (no host sync
  otherwise), and ``metrics.logged``, the train line of a log step, which
  is written after every ``on_step`` returned (``NanStop`` raises first).
- ``on_eval(step, state, split, metrics, final)``: after an eval line was
  written; ``split`` is 'eval' or 'test', ``final`` is True for the final
  eval (after the last step, or after a stop).
- ``on_checkpoint(step, state)``: before the checkpoint of ``step`` is
  written (``state`` as saved: global arrays); raising stops the run with
  nothing written for that step.
- ``on_end(step, state, result)``: the run ended (finished, stopped early
  or preempted); ``result`` is what ``train.run`` returns.
- ``close()``: when ``train.run`` exits, also on an error.

With ``--eval_only`` only ``on_eval`` (``final`` True) and ``on_end`` are
called, and no built-in callback runs.

**Stopping.** ``on_step`` or ``on_eval`` returning True asks the loop to
stop: it finishes the step (its train line, eval and checkpoint),
checkpoints, runs the final eval (not ranked by keep-best) and returns
``{'stopped_early': True, ...}``. Asked at the last step, it is simply the
end of the run. Raising an exception ends the run with that exception.

**Resume: restored, not replayed.** The loop never re-creates a callback:
the caller passes callback objects to every ``run``, the resumed one too.
A callback with a ``state_key`` keeps ``state_dict()`` (a fresh JSON-able
dict: the checkpoint is written in the background) in every checkpoint's
data item under that key, and the resumed run hands the one of the
checkpoint it resumes from to ``load_state_dict`` before the first step,
so the callback continues as if never stopped. Steps and evals seen after
that checkpoint and before the stop are seen again (the run redoes them);
those before it are not. A callback without a ``state_key`` starts a
resumed run as the caller built it.
"""

import dataclasses
from typing import Any, Callable, Iterator, Mapping


@dataclasses.dataclass
class LoopInfo:
  """What ``on_train_start`` gets to see of the run."""

  cfg: Any
  workdir: str
  model: Any
  start_step: int
  num_steps: int
  state: Any  # before the first step (donated to it: read it only here)
  batch: Any
  step_fn: Callable
  stopping: bool = False  # set by the loop once a callback asked to stop


class StepMetrics(Mapping):
  """One step's metrics (``loss``, ``grad_norm``, ...), fetched when read.

  Reading a key fetches all of them once (a host sync); not reading them
  costs nothing. ``logged`` is the train line written at this step (the
  mean since the last line, with ``learning_rate``), None between log
  steps.
  """

  def __init__(self, step: int, device_metrics, host: Callable,
               logged: dict | None = None):
    self.step, self.logged = step, logged
    self._device, self._host_fn, self._host = device_metrics, host, None

  def _fetch(self) -> dict:
    if self._host is None:
      self._host = {k: float(v) for k, v in self._host_fn(self._device).items()}
    return self._host

  def __getitem__(self, key: str) -> float:
    return self._fetch()[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self._device)

  def __len__(self) -> int:
    return len(self._device)


class Callback:
  """Does nothing; override the methods you need (see the module docstring).

  ``state_key``: set it (a unique name) to keep ``state_dict()`` in the
  checkpoints.
  """

  state_key: str | None = None

  def on_train_start(self, loop: LoopInfo) -> None:
    """Before the first step of this process's run (a resumed run too)."""

  def on_step_begin(self, step: int) -> None:
    """Before step ``step`` (0-based) runs."""

  def on_step(self, step: int, state, metrics: StepMetrics) -> bool | None:
    """After ``step`` steps; True stops the run."""

  def on_eval(self, step: int, state, split: str, metrics: Mapping[str, Any],
              final: bool) -> bool | None:
    """After each eval line (``split`` 'eval' or 'test'); True stops the run."""

  def on_checkpoint(self, step: int, state) -> None:
    """Before the checkpoint of ``step`` is written (``state`` as saved)."""

  def on_end(self, step: int, state, result: dict) -> None:
    """After the final eval, or after a preemption's checkpoint."""

  def close(self) -> None:
    """Called once when ``train.run`` exits, errors included."""

  def state_dict(self) -> dict:
    return {}

  def load_state_dict(self, state: dict) -> None:
    """Takes back what ``state_dict`` returned, on resume."""
