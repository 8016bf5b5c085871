"""Runs experiment command lines as forked children of one warm process.

    python tests/_fork_cli.py CASES.json RESULTS.json

CASES.json is a list of ``{"module": "experiments.x", "argv": [...],
"env": {...}, "cwd": "...", "signal_at": [step, "SIGINT", count],
"fsize_limit": bytes, "after": [i, ...], "start_when_file": path,
"snapshot": [path, ...], "stop_signal": "SIGTERM"}``. ``signal_at`` makes
the child send itself the signal ``count`` times right after metrics.jsonl
gets the train line of ``step`` (a Ctrl-C at a known point);
``fsize_limit`` sets RLIMIT_FSIZE, so writing past that many bytes into one
file fails (EFBIG), a write error at the file layer. This process imports
the libraries once (without starting a JAX backend), then forks one child
per case; the child runs the module exactly as ``python -m MODULE ARGV...``
does (``runpy`` as ``__main__``), with stdout/stderr captured to files.
RESULTS.json gets, per case, ``{"code", "stdout", "stderr", "seconds",
"pid", "before"}``; ``code`` is the child's exit status (negative: killed
by that signal).

Up to ``FORK_CLI_JOBS`` children (default 1; cases with ``stop_signal``
not counted) run at once. A case starts only after the cases listed in
``after`` (indices) have ended and, with ``start_when_file``, once that
file exists and is not empty (two processes that overlap); ``before``
maps each ``snapshot`` path, as it was just before the case started, to
the sha256 of its bytes (a directory: relative path -> sha256 of every
file under it; missing: null). A
case with ``stop_signal`` is sent that signal once every case without one
has ended (a long run stopped from outside).

Each case is a real, separate process (own pid, signals, exit code, JAX
backend); forking just spares the 3-4 s of imports per case on small CPUs.
"""

import json
import os
import resource
import runpy
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.environ.get('FORK_CLI_ROOT') or
                os.path.join(os.path.dirname(__file__), '..'))

# The imports every experiment makes; nothing here initialises a backend.
import jax  # noqa: E402,F401
import orbax.checkpoint  # noqa: E402,F401
from dlresearch import cli, train  # noqa: E402,F401
from dlresearch import problems  # noqa: E402

problems.names()  # imports the problem modules (problems/, apps/*/problem.py)

import _forked  # noqa: E402  (this directory: the snapshot shared with tests)


def _signal_at(step: int, name: str, count: int) -> None:
  from dlresearch import logging as log_lib  # pylint: disable=g-import-not-at-top
  write = log_lib.JsonlWriter.write

  def write_then_signal(self, at, split, metrics):
    write(self, at, split, metrics)
    if split == 'train' and at == step:
      for _ in range(count):
        os.kill(os.getpid(), getattr(signal, name))

  log_lib.JsonlWriter.write = write_then_signal


def _start_case(case: dict, out_path: str, err_path: str) -> int:
  """Forks the child that becomes `python -m MODULE ARGV...`; its pid."""
  pid = os.fork()
  if pid:
    return pid
  code = 1
  try:
    with open(out_path, 'wb') as out, open(err_path, 'wb') as err:
      os.dup2(out.fileno(), 1)
      os.dup2(err.fileno(), 2)
    os.environ.update(case.get('env', {}))
    if case.get('signal_at'):
      _signal_at(*case['signal_at'])
    if case.get('fsize_limit'):
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (case['fsize_limit'],) * 2)
    if case.get('cwd'):
      os.chdir(case['cwd'])
    sys.argv = [case['module'], *case['argv']]
    try:
      runpy.run_module(case['module'], run_name='__main__', alter_sys=True)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None
                                                     else 1)
    except BaseException:  # pylint: disable=broad-exception-caught
      traceback.print_exc()  # as the interpreter would, then exit 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def _read(path: str) -> str:
  with open(path, errors='replace') as f:
    return f.read()


def _ready(case: dict, done: dict) -> bool:
  if not all(i in done for i in case.get('after', ())):
    return False
  path = case.get('start_when_file')
  return not path or (os.path.exists(path) and os.path.getsize(path) > 0)


def run_cases(cases: list[dict], tmp: str, jobs: int = 1) -> list[dict]:
  """Runs every case as its own forked process; results in case order."""
  pending = list(range(len(cases)))
  running = {}  # pid -> (index, start time, snapshot)
  done = {}
  stopped = set()
  while pending or running:
    for i in list(pending):
      busy = sum('stop_signal' not in cases[j] for j, _, _ in running.values())
      if _ready(cases[i], done) and (busy < jobs or 'stop_signal' in cases[i]):
        pending.remove(i)
        before = {p: _forked.snapshot(p) for p in cases[i].get('snapshot', ())}
        start = time.monotonic()
        pid = _start_case(cases[i], os.path.join(tmp, f'out{i}'),
                          os.path.join(tmp, f'err{i}'))
        running[pid] = (i, start, before)
    waiting = [i for i in pending if not _ready(cases[i], done)]
    if not running and waiting:  # nothing left that could make them ready
      for i in waiting:
        pending.remove(i)
        done[i] = {'code': None, 'stdout': '', 'pid': None, 'before': {},
                   'stderr': 'never started: its condition was not met',
                   'seconds': 0.0}
      continue
    if all('stop_signal' in cases[i] for i, _, _ in running.values()) and (
        not pending):
      for pid, (i, _, _) in running.items():
        if pid not in stopped:
          os.kill(pid, getattr(signal, cases[i]['stop_signal']))
          stopped.add(pid)
    pid, status = os.waitpid(-1, os.WNOHANG if waiting else 0)
    if not pid:
      time.sleep(0.05)
      continue
    i, start, before = running.pop(pid)
    done[i] = {'code': os.waitstatus_to_exitcode(status),
               'stdout': _read(os.path.join(tmp, f'out{i}')),
               'stderr': _read(os.path.join(tmp, f'err{i}')),
               'seconds': time.monotonic() - start, 'pid': pid,
               'before': before}
  return [done[i] for i in range(len(cases))]


def main():
  cases_path, results_path = sys.argv[1:3]
  with open(cases_path) as f:
    cases = json.load(f)
  jobs = max(1, int(os.environ.get('FORK_CLI_JOBS', '1')))
  with tempfile.TemporaryDirectory() as tmp:
    results = run_cases(cases, tmp, jobs)
  with open(results_path, 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  main()
