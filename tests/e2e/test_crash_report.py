"""A dying xdist worker: its stderr and Python traceback are in the report."""

import os
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CRASHING = textwrap.dedent('''
    import os

    def test_passes():
      assert True

    def test_aborts():
      os.write(2, b'F1207 12:00:00 external/xla/fake.cc:1] Check failed: size > 0\\n')
      os.abort()
''')


def test_crashed_worker_report_carries_its_stderr_and_traceback(tmp_path):
  (tmp_path / 'test_dies.py').write_text(CRASHING)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [TESTS, os.environ.get('PYTHONPATH', '')]))
  env.pop('DLRESEARCH_WORKER_LOGS', None)
  env.pop('PYTEST_XDIST_WORKER', None)
  out = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-n', '1', '-p', '_crash_report',
       '-p', 'no:cacheprovider', '--max-worker-restart=0', '-o',
       'addopts=', 'test_dies.py'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  text = out.stdout + out.stderr
  assert out.returncode != 0, text
  report = text[text.index("crashed while running"):]
  assert 'test_dies.py::test_aborts' in text
  assert "the worker's stderr and faulthandler output" in report
  assert 'Check failed: size > 0' in report  # the C-level write to fd 2
  assert 'Fatal Python error: Aborted' in report  # faulthandler
  assert 'test_dies.py", line 9 in test_aborts' in report  # where it died
