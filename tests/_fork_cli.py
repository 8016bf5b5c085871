"""Runs experiment command lines as forked children of one warm process.

    python tests/_fork_cli.py CASES.json RESULTS.json

CASES.json is a list of ``{"module": "experiments.x", "argv": [...],
"env": {...}, "cwd": "...", "signal_at": [step, "SIGINT", count],
"fsize_limit": bytes}``. ``signal_at`` makes the child send itself the
signal ``count`` times right after metrics.jsonl gets the train line of
``step`` (a Ctrl-C at a known point); ``fsize_limit`` sets RLIMIT_FSIZE, so
writing past that many bytes into one file fails (EFBIG), a write error at
the file layer. This process imports the libraries once
(without starting a JAX backend), then forks one child per case; the child
runs the module exactly as ``python -m MODULE ARGV...`` does (``runpy`` as
``__main__``), with stdout/stderr captured to files. RESULTS.json gets, per
case, ``{"code", "stdout", "stderr", "seconds"}``; ``code`` is the child's
exit status (negative: killed by that signal).

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
from dlresearch.data import kinds  # noqa: E402

kinds.names()  # imports the kinds_*.py modules


def _signal_at(step: int, name: str, count: int) -> None:
  from dlresearch import logging as log_lib  # pylint: disable=g-import-not-at-top
  write = log_lib.JsonlWriter.write

  def write_then_signal(self, at, split, metrics):
    write(self, at, split, metrics)
    if split == 'train' and at == step:
      for _ in range(count):
        os.kill(os.getpid(), getattr(signal, name))

  log_lib.JsonlWriter.write = write_then_signal


def run_case(case: dict, tmp: str) -> dict:
  out_path, err_path = os.path.join(tmp, 'out'), os.path.join(tmp, 'err')
  start = time.monotonic()
  pid = os.fork()
  if pid == 0:  # the child: become `python -m MODULE ARGV...`
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
  _, status = os.waitpid(pid, 0)
  code = os.waitstatus_to_exitcode(status)
  with open(out_path, errors='replace') as f:
    stdout = f.read()
  with open(err_path, errors='replace') as f:
    stderr = f.read()
  return {'code': code, 'stdout': stdout, 'stderr': stderr,
          'seconds': time.monotonic() - start}


def main():
  cases_path, results_path = sys.argv[1:3]
  with open(cases_path) as f:
    cases = json.load(f)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for case in cases:
      results.append(run_case(case, tmp))
  with open(results_path, 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  main()
