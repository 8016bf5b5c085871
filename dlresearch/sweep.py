"""``python -m dlresearch.sweep``: the tool ``dlresearch/tools/sweep.py``
(Optuna sweeps whose trials are ordinary runs)."""

from dlresearch.tools.sweep import *  # noqa: F401,F403  pylint: disable=wildcard-import,unused-wildcard-import

if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  from dlresearch.tools import sweep as _tool  # pylint: disable=g-import-not-at-top
  sys.exit(_tool.run())
