"""``python -m dlresearch.runs``: the tool ``dlresearch/tools/runs.py`` at
its old path (``from dlresearch import runs`` still finds its functions)."""

from dlresearch.tools.runs import *  # noqa: F401,F403  pylint: disable=wildcard-import,unused-wildcard-import

if __name__ == '__main__':
  from dlresearch.tools import entry, runs as _tool  # pylint: disable=g-import-not-at-top
  entry.main(_tool)
