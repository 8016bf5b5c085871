"""``python -m dlresearch.export``: the tool ``dlresearch/tools/export.py``
at its old path (``from dlresearch import export`` still finds its
functions)."""

from dlresearch.tools.export import *  # noqa: F401,F403  pylint: disable=wildcard-import,unused-wildcard-import

if __name__ == '__main__':
  from dlresearch.tools import entry, export as _tool  # pylint: disable=g-import-not-at-top
  entry.main(_tool)
