"""Ctrl-C and SIGTERM during start-up: one line and the documented exit.

Between the start of ``python -m experiments.X`` and the moment the command
line hands over to ``train.run`` (whose ``train.Preemption`` handler then
checkpoints at the next step), Python's defaults would turn Ctrl-C into a
``KeyboardInterrupt`` raised wherever the program happens to be (a traceback,
or nothing at all when a library's import swallows it) and SIGTERM into
death by signal (exit 143). ``install`` replaces both, for that window only,
with a handler that writes one line to stderr and ends the process at once::

    stopped by SIGINT during start-up, before training began: nothing was written; rerun the same command to start (or resume)

with exit 130 for SIGINT (the shell's convention for Ctrl-C, as a Ctrl-C
during training) and 0 for SIGTERM (a preemption notice, as during
training). Nothing is half-written because nothing has been written yet:
``cli`` creates no file before ``train.run`` (``workdir.check_workdir``
creates nothing). The handler never raises into the code it interrupts, so
no ``except`` in a library can swallow the stop. ``end()`` marks the
hand-over: from then on the handler behaves exactly like the default it
replaced (``train.Preemption`` restores it when ``train.run`` returns, and
multi-process runs, where ``Preemption`` installs nothing, keep it).

``cli`` calls ``install_for_program`` when it is imported, so the imports of
``python -m experiments.X`` that follow (absl, jax, the data kinds) are
covered, and ``install`` again in ``cli.main`` (a program that imported
``cli`` some other way). A notebook or a test that imports ``cli`` keeps
Python's own handlers.
"""

import os
import signal
import sys
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 0}

_previous: dict = {}  # signal -> the handler ``install`` replaced
_ended = False


def install_for_program() -> None:
  """``install`` when the process runs an ``experiments.*`` module as main."""
  main = sys.modules.get('__main__')
  spec = getattr(main, '__spec__', None)
  if spec is not None and (spec.name or '').startswith('experiments.'):
    install()


def install() -> None:
  """Start-up handlers for SIGINT and SIGTERM (idempotent).

  A signal whose handler is not Python's default (someone else manages it)
  is left alone; so is everything outside the main thread.
  """
  global _ended
  if threading.current_thread() is not threading.main_thread():
    return
  _ended = False
  defaults = {signal.SIGINT: signal.default_int_handler,
              signal.SIGTERM: signal.SIG_DFL}
  for sig in _SIGNALS:
    current = signal.getsignal(sig)
    if current is _handle:
      continue
    if current is defaults[sig]:
      _previous[sig] = current
      signal.signal(sig, _handle)


def end() -> None:
  """Start-up is over: the handler now acts as the default it replaced."""
  global _ended
  _ended = True


def _handle(signum, frame):
  sig = signal.Signals(signum)
  if _ended:
    _default(sig, frame)
    return
  line = (f'stopped by {sig.name} during start-up, before training began: '
          'nothing was written; rerun the same command to start (or '
          'resume)\n')
  try:
    os.write(2, line.encode())
  except OSError:
    pass
  os._exit(_EXIT[sig])  # pylint: disable=protected-access


def _default(sig: signal.Signals, frame) -> None:
  previous = _previous.get(sig, signal.SIG_DFL)
  if callable(previous):
    previous(int(sig), frame)  # default_int_handler: KeyboardInterrupt
    return
  signal.signal(sig, signal.SIG_DFL)  # die by the signal, as without us
  os.kill(os.getpid(), sig)
