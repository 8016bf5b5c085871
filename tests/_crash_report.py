"""When a pytest-xdist worker dies, its last words go into the report.

xdist alone says only ``worker 'gw0' crashed while running T`` (``node
down: Not properly terminated``): the test's stderr, where XLA writes its
fatal check message, sat in pytest's anonymous capture file and died with
the worker, and Python's fatal-error traceback went to the terminal, apart
from the report. Here (loaded by ``tests/conftest.py``, or ``-p
tests._crash_report``):

- the controller makes a folder for the session and names it in
  ``DLRESEARCH_WORKER_LOGS`` (the workers inherit it);
- each worker points pytest's stderr capture file at
  ``<folder>/<worker>.stderr`` (so what a test writes to file descriptor 2,
  C/C++ included, is on disk while the test runs) and has faulthandler
  write Python's traceback of every thread on a fatal signal to the same file;
- when a worker crashes, the failed report of its test carries that file's
  first and last lines (``pytest_handlecrashitem``).

Nothing changes without xdist, and a pytest whose capture internals differ
keeps only the faulthandler part.
"""

import faulthandler
import os
import shutil
import tempfile

import pytest

ENV = 'DLRESEARCH_WORKER_LOGS'
HEAD_CHARS = TAIL_CHARS = 3000  # the message first, the traceback last


def _capture_file(config):
  """The file behind pytest's global stderr capture, or None."""
  capman = config.pluginmanager.getplugin('capturemanager')
  capturing = getattr(capman, '_global_capturing', None)
  err = getattr(capturing, 'err', None)
  tmpfile = getattr(err, 'tmpfile', None)
  if err is None or getattr(err, 'targetfd', None) != 2 or tmpfile is None:
    return None
  return tmpfile


@pytest.hookimpl(trylast=True)  # after pytest's faulthandler plugin
def pytest_configure(config):
  worker = os.environ.get('PYTEST_XDIST_WORKER')
  if worker is None:
    if getattr(config.option, 'numprocesses', None):
      os.environ.setdefault(ENV, tempfile.mkdtemp(prefix='pytest-workers-'))
    return
  folder = os.environ.get(ENV)
  if not folder:
    return
  path = os.path.join(folder, f'{worker}.stderr')
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
  tmpfile = _capture_file(config)
  if tmpfile is not None:
    # The capture file's descriptor now names a file on disk: pytest reads,
    # seeks and truncates it as before; fd 2 follows it on the next resume.
    os.dup2(fd, tmpfile.fileno())
    os.close(fd)
    fd = tmpfile.fileno()
  config._dlresearch_crash_fd = fd  # pylint: disable=protected-access
  faulthandler.enable(file=fd, all_threads=True)


def crash_log(worker_id: str) -> str:
  """What a crashed worker left on disk: its first and last characters."""
  folder = os.environ.get(ENV)
  if not folder:
    return ''
  try:
    with open(os.path.join(folder, f'{worker_id}.stderr'), 'rb') as f:
      text = f.read().decode('utf-8', 'replace')
  except OSError:
    return ''
  text = text.strip()
  if len(text) > HEAD_CHARS + TAIL_CHARS:
    cut = len(text) - HEAD_CHARS - TAIL_CHARS
    text = f'{text[:HEAD_CHARS]}\n[... {cut} characters ...]\n{text[-TAIL_CHARS:]}'
  return text


@pytest.hookimpl(optionalhook=True)  # an xdist hook
def pytest_handlecrashitem(crashitem, report, sched):
  del crashitem, sched
  worker = getattr(report, 'node', None)
  gateway = getattr(worker, 'gateway', None)
  log = crash_log(getattr(gateway, 'id', ''))
  report.longrepr = (f'{report.longrepr}\n--- the worker\'s stderr and '
                     'faulthandler output before it died ---\n'
                     f'{log or "(nothing written)"}')


def pytest_unconfigure(config):
  """The controller removes the folder (a crash's log is in the report)."""
  folder = os.environ.get(ENV)
  if folder and os.environ.get('PYTEST_XDIST_WORKER') is None and getattr(
      config.option, 'numprocesses', None):
    shutil.rmtree(folder, ignore_errors=True)
