"""Stopping cleanly: SIGTERM or Ctrl-C -> checkpoint at the next step, stop.

``train.run`` installs a ``Preemption`` for the whole run (start-up
included) and asks ``reached(step)`` after every step.
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
  """SIGTERM or Ctrl-C (SIGINT) -> checkpoint at the next step and stop.

  One process: our own handlers, installed for the whole of ``run`` (start-up
  included). A second Ctrl-C stops at once (``KeyboardInterrupt``). In a
  notebook, interrupting the kernel is the first Ctrl-C. Several processes:
  JAX's preemption notifier (SIGTERM, installed by ``jax.distributed``) and a
  sync point, so that every host stops at the same step.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: str | None = None
    self._old = {}
    if (jax.process_count() == 1 and
        threading.current_thread() is threading.main_thread()):
      self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received == 'SIGINT' and name == 'SIGINT':
      raise KeyboardInterrupt
    logging.warning('%s: checkpointing at the next step, then stopping%s',
                    name, ' (Ctrl-C again stops at once)'
                    if name == 'SIGINT' else '')
    self.received = self.received or name

  def reached(self, step: int) -> bool:
    if self.received:
      return True
    if jax.process_count() > 1:  # every host must agree on the step
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = 'SIGTERM'
        return True
    return False

  def close(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)
