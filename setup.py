"""The optional native extension (dlresearch/kernels/_native/*.cc).

Everything else about the package is in pyproject.toml. The extension is an
XLA FFI target compiled against jaxlib's FFI headers (jaxlib is a build
requirement); it links no BLAS (dlresearch.kernels.native opens one at
run time). ``optional=True``: a missing compiler or a failed build leaves the
extension out and the install goes on (``--cpu_kernels=native`` then warns
once and runs XLA's dots).
"""

import importlib.util
import os

from setuptools import Extension, setup


def ffi_include_dir() -> str | None:
  spec = importlib.util.find_spec('jaxlib')
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], 'include')
  return path if os.path.isdir(os.path.join(path, 'xla', 'ffi', 'api')) else None


include = ffi_include_dir()
if include is None:
  print('dlresearch: jaxlib FFI headers not found; building without the native '
        'GEMM extension')
# The same sources and flags as dlresearch.kernels.native.build (not
# imported here: it imports jax).
ext_modules = [] if include is None else [Extension(
    'dlresearch.kernels._gemm',
    sources=['dlresearch/kernels/_native/gemm.cc',
             'dlresearch/kernels/_native/lstm.cc'],
    include_dirs=[include], language='c++', optional=True,
    extra_compile_args=['-O3', '-fno-trapping-math', '-ffp-contract=fast', '-g0',
                        '-std=c++17', '-w'])]

setup(ext_modules=ext_modules)
