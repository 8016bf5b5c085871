"""orbax's log lines below ERROR in a process's stderr (for the tests that
check a run's console stays quiet)."""

import os
import re

import orbax.checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_basenames(package_dir):
  return {f for _, _, files in os.walk(package_dir) for f in files
          if f.endswith('.py')}


def _orbax_only_files():
  """Basenames of orbax's modules that no other logging package shares.

  absl log lines name only the file's basename; ``checkpoint.py`` (ours,
  grain's and orbax's) and the like are left out, so a line counted as
  orbax's is orbax's.
  """
  site = orbax.checkpoint.__file__.split(f'{os.sep}orbax{os.sep}')[0]
  mine = _module_basenames(os.path.join(site, 'orbax'))
  others = _module_basenames(os.path.join(ROOT, 'dlresearch'))
  for name in ('tensorflow_datasets', 'jax', 'jaxlib', 'absl', 'grain', 'flax',
               'etils', 'optax', 'tensorstore'):
    others |= _module_basenames(os.path.join(site, name))
  return mine - others


ABSL_LINE = re.compile(r'^([IWEF])\d{4} [\d:.]+\s+\d+ ([^:\s]+):\d+\]')


PY_WARNING = re.compile(r'/orbax/\S+\.py:\d+: \w*Warning')


def orbax_lines_below_error(stderr):
  """stderr lines from orbax below ERROR: absl INFO/WARNING lines of an
  orbax-only file, and Python warnings raised in orbax's code."""
  files = _orbax_only_files()
  out = []
  for line in stderr.splitlines():
    m = ABSL_LINE.match(line)
    if m and m.group(1) in 'IW' and m.group(2) in files:
      out.append(line)
    elif PY_WARNING.search(line):
      out.append(line)
  return out
