"""Loading the native kernels (``_native/*.cc``) and registering them with XLA.

The extension is built by ``pip install -e .`` (``setup.py``, optional: a
failed build leaves it out) as ``dlresearch/kernels/_gemm*.so``; ``build()``
compiles the same files by hand (g++, the FFI headers of jaxlib) for a source
tree that was not installed. It links no BLAS: ``load`` opens the BLAS of a
wheel with ctypes (``scipy-openblas32``'s ``libscipy_openblas.so``, or MKL's
``libmkl_rt.so``) and hands the address of its ``cblas_sgemm`` to the
extension, then registers the FFI targets on the CPU platform: ``dlr_sgemm``
(``gemm.cc``) and the LSTM's time loops ``dlr_lstm_fwd``/``dlr_lstm_bwd``
(``lstm.cc``). Whatever is missing makes ``load`` raise ``Unavailable`` with
the reason.
"""

import ctypes
import glob
import os
import subprocess
import sys
import sysconfig

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(HERE, '_native', f) for f in ('gemm.cc', 'lstm.cc'))
# setup.py compiles with the same flags.
COMPILE_FLAGS = ('-O3', '-fno-trapping-math', '-ffp-contract=fast', '-std=c++17', '-w')
TARGET = 'dlr_sgemm'
LSTM_TARGETS = ('dlr_lstm_fwd', 'dlr_lstm_bwd')
LIBRARIES = ('openblas', 'mkl')


class Unavailable(RuntimeError):
  """The extension or its BLAS cannot be loaded (the message says why)."""


def built_extension() -> str | None:
  """The path of the extension ``pip install`` built, or None."""
  found = sorted(glob.glob(os.path.join(HERE, '_gemm*.so')))
  return found[0] if found else None


def build(out: str, extra_flags: tuple[str, ...] = ()) -> str:
  """Compiles the sources into the shared library ``out`` (g++); returns it."""
  cmd = [os.environ.get('CXX', 'g++'), *COMPILE_FLAGS, '-shared', '-fPIC',
         f'-I{jax.ffi.include_dir()}', *SOURCES, '-o', out, *extra_flags]
  try:
    subprocess.run(cmd, check=True, capture_output=True, text=True)
  except (OSError, subprocess.CalledProcessError) as e:
    raise Unavailable(f'building {", ".join(SOURCES)} failed: '
                      f'{getattr(e, "stderr", e)}') from e
  return out


def _lib_dirs() -> list[str]:
  return [os.path.join(sys.prefix, 'lib'), sysconfig.get_paths()['purelib']]


def blas_sgemm(library: str, threads: int) -> tuple[ctypes.CDLL, int]:
  """Opens ``library``'s BLAS, sets its thread count; (handle, sgemm address)."""
  if library == 'openblas':
    try:
      import scipy_openblas32  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise Unavailable('scipy-openblas32 is not installed (pip install '
                        'scipy-openblas32)') from e
    path = os.path.join(scipy_openblas32.get_lib_dir(), 'libscipy_openblas.so')
    lib = ctypes.CDLL(path)
    lib.scipy_openblas_set_num_threads(ctypes.c_int(threads))
    fn = lib.scipy_cblas_sgemm
  elif library == 'mkl':
    paths = [p for d in _lib_dirs() for p in glob.glob(os.path.join(d, 'libmkl_rt.so*'))]
    if not paths:
      raise Unavailable('MKL is not installed (pip install mkl)')
    # Intel OpenMP threads otherwise spin 200 ms after each call, taking the
    # cores from XLA's own pool (read when libiomp5 loads: set it first).
    os.environ.setdefault('KMP_BLOCKTIME', '0')
    lib = ctypes.CDLL(paths[0])
    lib.MKL_Set_Num_Threads(ctypes.c_int(threads))
    fn = lib.cblas_sgemm
  else:
    raise ValueError(f'unknown BLAS {library!r}; choose from {", ".join(LIBRARIES)}')
  return lib, ctypes.cast(fn, ctypes.c_void_p).value


_LOADED: dict = {}


def load(library: str = 'openblas', threads: int | None = None,
         extension: str | None = None, target: str = TARGET) -> str:
  """Loads the extension with ``library``'s sgemm and registers ``target``.

  Once per target name and process (later calls return at once). ``threads``:
  the BLAS's thread count (default 1: the call runs on the XLA thread that
  reaches it, while XLA's pool runs other work on the other cores; more BLAS
  threads spin beside that pool, and on the 2-core host that made a nanoGPT
  step 12x slower than XLA's dots instead of 1.4x faster, docs/speed.md).
  ``extension``: a built library (default: the installed one). Returns the
  target's name.
  """
  if target in _LOADED:
    return target
  path = extension or built_extension()
  if path is None:
    raise Unavailable('the native GEMM extension was not built (pip install -e . '
                      'needs a C++ compiler)')
  threads = threads or 1
  blas, sgemm = blas_sgemm(library, threads)
  try:
    ext = ctypes.CDLL(path)
  except OSError as e:
    raise Unavailable(f'cannot load {path}: {e}') from e
  ext.dlr_set_sgemm(ctypes.c_void_p(sgemm))
  jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(ext.dlr_sgemm), platform='cpu')
  if target == TARGET and all(hasattr(ext, name) for name in LSTM_TARGETS):
    for name in LSTM_TARGETS:
      if name not in _LOADED:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(ext, name)),
                                    platform='cpu')
        _LOADED[name] = (ext, blas, library)
  _LOADED[target] = (ext, blas, library)
  return target


def lstm_loaded() -> bool:
  """The LSTM loop targets are registered (an extension built before
  ``lstm.cc`` existed has only the GEMM)."""
  return all(name in _LOADED for name in LSTM_TARGETS)
