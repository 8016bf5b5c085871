"""From a test: command lines run by ``tests/_fork_cli.py`` (see there).

``run(cases, tmp)`` starts one warm interpreter that forks each case as its
own process (``python -m MODULE ARGV...`` minus the imports) and returns
one ``{"code", "stdout", "stderr", "seconds", "pid", "before"}`` per case,
in order. ``snapshot(path)`` is how a case's ``before`` hashes a path.
"""

import hashlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cases: list[dict], tmp, jobs: int = 1, timeout: float = 600,
        env: dict | None = None) -> list[dict]:
  path = os.path.join(str(tmp), f'cases-{time.monotonic_ns()}.json')
  with open(path, 'w') as f:
    json.dump(cases, f)
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tests', '_fork_cli.py'), path,
       path + '.out'], cwd=ROOT, timeout=timeout, capture_output=True,
      text=True, env={**os.environ, **(env or {}), 'FORK_CLI_JOBS': str(jobs)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(path + '.out') as f:
    return json.load(f)


def snapshot(path):
  """sha256 of a file's bytes; for a directory, relative path -> sha256 of
  every file under it; None for a missing path."""
  def digest(p):
    with open(p, 'rb') as f:
      return hashlib.sha256(f.read()).hexdigest()
  if os.path.isdir(path):
    return {os.path.relpath(os.path.join(d, n), path): digest(os.path.join(
        d, n)) for d, _, names in sorted(os.walk(path)) for n in sorted(names)}
  return digest(path) if os.path.exists(path) else None
