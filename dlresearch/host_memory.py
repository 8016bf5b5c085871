"""Keep freed host memory in the process instead of returning it to the OS.

XLA:CPU allocates each executable's temporary buffers as one block per call
(315 MB for the ``gpt_small`` benchmark step) and frees it afterwards. glibc
serves blocks that large with ``mmap`` and gives them back with ``munmap``,
so every train step faults in its whole working set again: 78,000 page
faults and 140 ms of kernel time per ``gpt_small`` step (README "Speed on
CPU"). With one malloc arena, no ``mmap`` for large blocks and a high trim
threshold, the block is reused from the heap: no faults after the first step.

``import dlresearch`` calls ``keep_freed_memory()`` (the settings must be in
place before jax starts its CPU backend, whose worker threads would otherwise
take arenas of their own). It does nothing when:

- the C library is not glibc (macOS, musl);
- ``DLRESEARCH_KEEP_HOST_MEMORY=0`` is set (the opt-out);
- the user already tunes malloc (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_MAX_``,
  ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_`` or a
  ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``).

The cost: memory a process frees stays mapped to it (reused by later
allocations, not returned to the OS until exit), so the resident size of a
long run stays at its peak.
"""

import ctypes
import ctypes.util
import os

ENV = 'DLRESEARCH_KEEP_HOST_MEMORY'
_USER_SETTINGS = ('MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_',
                  'MALLOC_MMAP_THRESHOLD_')
# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8

applied = False  # whether this process runs with the settings


def _user_tunes_malloc(environ) -> bool:
  return (any(k in environ for k in _USER_SETTINGS)
          or 'glibc.malloc' in environ.get('GLIBC_TUNABLES', ''))


def keep_freed_memory() -> bool:
  """Applies the settings above once; returns whether they are in effect."""
  global applied
  if applied:
    return True
  if os.environ.get(ENV, '1') == '0' or _user_tunes_malloc(os.environ):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc
    return False
  if not hasattr(libc, 'gnu_get_libc_version'):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  applied = bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0)
                 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
  return applied
