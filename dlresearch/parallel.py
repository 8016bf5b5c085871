"""Device meshes, sharding rules and global batches.

The mesh has a ``data`` axis and an optional ``fsdp`` axis. Batches are split
over both (every device sees different examples). Parameters and optimizer
state follow a rule, not per-model annotations:

- replicated (no ``fsdp`` axis): every device holds everything;
- fsdp: each array's largest dimension divisible by the fsdp size is split
  over the ``fsdp`` axis; small or indivisible arrays stay replicated.

Under ``jax.jit`` XLA inserts the collectives: gradients and batch-norm
statistics are reduced over the batch axes because the batch is one global
array.

On CPU the jitted steps are compiled with ``CPU_CONV_OPTIONS`` (``--cpu_eigen_convs``,
on by default): XLA:CPU (jax 0.10) hands convolutions to YNNPACK, which is
slow on small-batch training shapes; the option keeps YNNPACK for dots and
reductions and lowers convolutions to Eigen (2-2.6x on a LeNet step on 2
cores; README "Speed on CPU"). Results equal the default to float32
accumulation order. If XLA rejects the option (it is experimental) the steps
compile without it. ``jax.pmap`` takes no compiler options: under
``--parallelism=pmap`` the option applies only when set before JAX starts,
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE``.
"""

import functools
import os

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dlresearch import kernels
from dlresearch.config import Config

AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')


class MeshError(ValueError):
  """A mesh spec that does not fit the devices (the CLI names --mesh)."""


class StrategyError(ValueError):
  """A parallelism strategy that cannot run this mesh (--parallelism)."""


def make_mesh(spec: str = '', devices=None) -> Mesh:
  """A mesh from ``'data:8'`` / ``'data:4,fsdp:2'``; '' = all devices on data.

  One axis size may be -1 (whatever the other axes leave). A mesh smaller
  than the device count uses the first devices (single-process runs only,
  e.g. ``data:1`` to compare against one device).
  """
  devices = jax.devices() if devices is None else devices
  sizes = {'data': -1, 'fsdp': 1}
  for part in filter(None, spec.split(',')):
    name, _, size = (t.strip() for t in part.partition(':'))
    if name not in AXES or not size.lstrip('-').isdigit():
      raise MeshError(f'expected axes like data:4,fsdp:2 (axes '
                      f'{", ".join(AXES)}), got {spec!r}')
    sizes[name] = int(size)
    if sizes[name] == 0 or sizes[name] < -1:
      raise MeshError(f'axis sizes must be >= 1 (or -1 for the rest), got '
                      f'{spec!r}')
  if list(sizes.values()).count(-1) > 1:
    raise MeshError(f'at most one axis may be -1, got {spec!r}')
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  sizes = {k: (len(devices) // known if s == -1 else s) for k, s in sizes.items()}
  total = int(np.prod(list(sizes.values())))
  if total > len(devices) or (total < len(devices) and jax.process_count() > 1):
    raise MeshError(f'{spec!r} asks for {total} devices but '
                      f'{len(devices)} are present'
                      + (' (across processes a mesh must use them all)'
                         if total < len(devices) else ''))
  devices = devices[:total]
  # Auto axes: shardings are propagated by the compiler, not carried in types.
  return jax.make_mesh(tuple(sizes.values()), AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def use_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache in ``directory`` ('none'/'': off).

  The default directory yields to one already configured (e.g. by
  ``JAX_COMPILATION_CACHE_DIR``); an explicit one replaces it. Programs that
  took at least 0.2 s to compile are kept, unless
  ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` sets another threshold.
  JAX opens its cache once, at the first compile of the process; a change
  here (another directory, on or off: a second ``run`` in a notebook)
  resets it so that the next compile opens the new one.
  """
  if directory.lower() in ('', 'none'):
    enabled, path = False, jax.config.jax_compilation_cache_dir
  else:
    enabled, path = True, os.path.expanduser(directory)
    default = Config.__dataclass_fields__['compilation_cache'].default
    if directory == default and jax.config.jax_compilation_cache_dir:
      path = jax.config.jax_compilation_cache_dir
    os.makedirs(path, exist_ok=True)
    if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
  if (enabled, path) != (jax.config.jax_enable_compilation_cache,
                         jax.config.jax_compilation_cache_dir):
    jax.config.update('jax_enable_compilation_cache', enabled)
    jax.config.update('jax_compilation_cache_dir', path)
    compilation_cache.reset_cache()


# XLA:CPU compiler options for the jitted steps (see the module docstring).
CPU_CONV_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE',
}


@functools.cache
def _accepted_cpu_options() -> tuple[tuple[str, str], ...]:
  """``CPU_CONV_OPTIONS`` if this XLA compiles with them, else empty."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_CONV_OPTIONS).lower(
        np.zeros((), np.float32)).compile()
  except Exception:  # pylint: disable=broad-exception-caught
    return ()  # an XLA that rejects the (experimental) option: go without
  return tuple(CPU_CONV_OPTIONS.items())


def compiler_options(mesh: Mesh, cpu_eigen_convs: bool = True) -> dict | None:
  """The compiler options the jitted steps get on ``mesh``'s devices.

  ``CPU_CONV_OPTIONS`` on a CPU mesh when ``cpu_eigen_convs`` and XLA accepts
  them; None (XLA's defaults) otherwise.
  """
  if not cpu_eigen_convs or any(d.platform != 'cpu' for d in mesh.devices.flat):
    return None
  return dict(_accepted_cpu_options()) or None


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 2**10) -> P:
  """Split the largest divisible dimension over ``fsdp``; else replicate."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh):
  """Shardings for every leaf of a state pytree, chosen by the rule above."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp)),
      abstract_state)


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's slice of the batch -> global jax.Arrays."""
  n = jax.process_count()
  return {
      k: jax.make_array_from_process_local_data(
          sharding, v, (v.shape[0] * n,) + v.shape[1:])
      for k, v in local_batch.items()
  }


# ---------------------------------------------------------------------------
# How steps are compiled and how state/batches are laid out. The loop in
# train.py talks only to these two small classes.


class JitStrategy:
  """``jax.jit`` with explicit in/out shardings over the mesh (the default).

  ``cpu_eigen_convs``: compile with ``CPU_CONV_OPTIONS`` on CPU meshes.
  ``cpu_kernels='native'``: trace the steps with Dense layers on the native
  GEMM (``dlresearch.kernels``) on a one-device CPU mesh; elsewhere XLA's.
  ``'auto'`` (``assemble`` found no convolution in the model): the same, but
  other meshes take XLA's dots without a warning.
  """

  def __init__(self, mesh: Mesh, shardings, cpu_eigen_convs: bool = True,
               cpu_kernels: str = 'xla'):
    self.mesh, self.shardings = mesh, shardings
    self._batch = batch_sharding(mesh)
    self.compiler_options = compiler_options(mesh, cpu_eigen_convs)
    self._native = (cpu_kernels in ('native', 'auto') and
                    kernels.use_native(mesh, quiet=cpu_kernels == 'auto'))

  def gradients(self, grad_fn):
    """``grad_fn`` as the step calls it: unchanged (the compiler reduces)."""
    return grad_fn

  def train_step(self, fn):
    fn = kernels.traced_with_native(fn) if self._native else fn
    return jax.jit(fn, in_shardings=(self.shardings, self._batch),
                   out_shardings=(self.shardings, replicated(self.mesh)),
                   donate_argnums=0, compiler_options=self.compiler_options)

  def eval_step(self, fn):
    fn = kernels.traced_with_native(fn) if self._native else fn
    return jax.jit(fn, in_shardings=(self.shardings, self._batch),
                   out_shardings=replicated(self.mesh),
                   compiler_options=self.compiler_options)

  def batch(self, local_batch: dict) -> dict:
    return global_batch(local_batch, self._batch)

  def to_saved(self, state):
    """The state as checkpointed: global arrays with ``self.shardings``."""
    return state

  def from_saved(self, state):
    """The state as the steps take it, from global arrays."""
    return state

  def host(self, tree):
    return jax.device_get(tree)


class PmapStrategy:
  """``jax.pmap`` over this process's devices, ``lax.pmean`` across them.

  The state is replicated with a leading device axis; checkpoints hold the
  same unreplicated global arrays as the jit path, so either strategy can
  resume the other's runs. Batch-norm statistics are computed per device in
  the forward pass and averaged across devices after each step.
  """

  axis_name = 'batch'

  def __init__(self, mesh: Mesh, shardings, cpu_eigen_convs: bool = True,
               cpu_kernels: str = 'xla'):
    del cpu_eigen_convs  # pmap takes no compiler options (module docstring)
    del cpu_kernels  # XLA's dots (dlresearch.kernels: one-device jit only)
    if mesh.shape['fsdp'] != 1:
      raise StrategyError('pmap replicates the state; it cannot '
                        'be combined with an fsdp mesh axis')
    self.mesh, self.shardings = mesh, shardings
    self.devices = [d for d in mesh.devices.flat
                    if d.process_index == jax.process_index()]

  def gradients(self, grad_fn):
    """``grad_fn(params, model_state, batch, rng)`` across the devices: a
    different dropout key per device, gradients and batch statistics
    averaged, metric sums added."""
    axis = self.axis_name

    def fn(params, model_state, batch, rng):
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis))
      grads, sums, model_state = grad_fn(params, model_state, batch, rng)
      return (jax.lax.pmean(grads, axis), jax.lax.psum(sums, axis),
              jax.lax.pmean(model_state, axis))

    return fn

  def train_step(self, fn):
    """``fn``: a step whose ``grad_fn`` went through ``gradients``."""
    return jax.pmap(fn, axis_name=self.axis_name, donate_argnums=0)

  def eval_step(self, fn):
    """``fn(state, batch) -> sums`` added across the devices."""
    axis = self.axis_name
    return jax.pmap(lambda state, batch: jax.lax.psum(fn(state, batch), axis),
                    axis_name=axis)

  def batch(self, local_batch: dict) -> dict:
    n = len(self.devices)
    return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:])
            for k, v in local_batch.items()}

  def to_saved(self, state):
    return jax.tree.map(
        lambda x, s: jax.make_array_from_process_local_data(
            s, np.asarray(x.addressable_data(0))), state, self.shardings)

  def from_saved(self, state):
    n = len(self.devices)
    stacked = NamedSharding(Mesh(np.array(self.devices), ('d',)), P('d'))
    return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(
        np.asarray(x.addressable_data(0)), (n,) + x.shape), stacked), state)

  def host(self, tree):
    return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def strategy(name: str, mesh: Mesh, shardings, cpu_eigen_convs: bool = True,
             cpu_kernels: str = 'xla'):
  return {'jit': JitStrategy, 'pmap': PmapStrategy}[name](
      mesh, shardings, cpu_eigen_convs=cpu_eigen_convs, cpu_kernels=cpu_kernels)
