"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere.

Their collectives may wait up to 30 minutes for a starved device thread
(XLA's default, 40 s, aborted a worker on a loaded machine).

Also, for speed on small CPU machines: a persistent compilation cache shared
by the whole session (subprocess tests inherit it through the environment),
and XLA's backend optimisation level 0 (the tests' programs are tiny, so
compile time dominates; results are only compared within one setting).

Tests live in unit/ (one file per module) and e2e/ (forked CLI, multi-process,
faults); the helpers they share (``_forked``, ``_archives``, ...) stay here
in tests/, which is put on ``sys.path`` so ``import _forked`` works from both.
"""

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

os.environ['XLA_FLAGS'] = ' '.join([
    os.environ.get('XLA_FLAGS', ''),
    '--xla_force_host_platform_device_count=8',
    '--xla_backend_optimization_level=0',
    # The 8 fake devices are 8 threads that must all reach each all-reduce;
    # on a loaded 2-core machine one can be starved past XLA's 40 s
    # rendezvous limit, and XLA then aborts the whole process (a pytest-xdist
    # worker "node down: Not properly terminated", seen under a CPU hog).
    '--xla_cpu_collective_call_warn_stuck_timeout_seconds=300',
    '--xla_cpu_collective_call_terminate_timeout_seconds=1800',
]).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='dlresearch-test-jax-cache-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

# A suite started in the background of a non-interactive shell (`cmd &`,
# nohup, some CI runners) inherits SIGINT ignored, and so would every
# process a test starts: the Ctrl-C tests would then test nothing. They test
# what a terminal gives, Python's own handler (children start with the
# default disposition again).
import signal  # noqa: E402  pylint: disable=g-import-not-at-top
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)

# A crashed xdist worker's stderr and faulthandler traceback in its report.
from _crash_report import pytest_configure, pytest_handlecrashitem, pytest_unconfigure  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import


import pytest  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(autouse=True)
def _absl_flags_as_found():
  """absl's FLAGS left unparsed by a test that found them so.

  Starting a grain pipeline in-process marks them parsed (grain reads its
  absl flags), and ``logging._emit_line`` then logs through absl instead of
  printing to stderr; without this a later test's captured stderr depended
  on which tests ran before it in the same worker.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  was_parsed = flags.FLAGS.is_parsed()
  yield
  if not was_parsed and flags.FLAGS.is_parsed():
    flags.FLAGS.unparse_flags()
