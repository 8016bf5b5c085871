"""Multi-host start-up: ``jax.distributed`` from flags or the cluster's env.

Call :func:`initialize` once, before anything touches a JAX device. Where the
process group comes from, in order:

1. explicit ``coordinator_address``, ``num_processes``, ``process_id`` (what
   ``launch/local.sh`` passes as flags);
2. SLURM, inside an ``srun`` step with more than one task: JAX's own SLURM
   support reads the job (coordinator = first node of the step, port from the
   job id or ``JAX_COORDINATOR_PORT``; ``JAX_COORDINATOR_ADDRESS=HOST[:PORT]``
   replaces the node's name where it does not resolve). One task per node
   sees all of that node's GPUs; several tasks per node get one GPU each
   (``SLURM_LOCALID``);
3. a Kubernetes indexed Job / JobSet (``launch/k8s/jobset-gpu.yaml``):
   ``JOB_COMPLETION_INDEX`` (set by Kubernetes) is the process id,
   ``JAX_COORDINATOR_ADDRESS`` and ``JAX_NUM_PROCESSES`` are set by the
   manifest;
4. a Cloud TPU VM or GKE TPU pod: JAX finds its peers itself;
5. otherwise nothing happens: one process.

Failure behaviour (measured with jax 0.10.2, see tests/e2e/test_process_groups.py):

- A peer that is SIGKILLed, crashes or stops answering: JAX's coordination
  service notices the missing heartbeats (after ``heartbeat_timeout_s``; at
  once when process 0, which hosts the service, dies) and aborts every other
  process with "Terminating process because the JAX distributed service
  detected fatal errors" (SIGABRT, exit status 134), also while it waits
  inside a collective.
- A peer that raises an uncaught Python exception would, left to JAX, wait
  at the shutdown barrier for ``shutdown_timeout_s`` (default 300 s) while
  the others sit in their next collective. :func:`initialize` therefore
  installs an exception hook for multi-process runs: it prints the traceback
  and leaves with ``os._exit(1)``, so the peers see a dead process and stop
  within the heartbeat timeout. ``sys.exit(nonzero)`` is not an exception the
  hook sees; call :func:`abort` instead where only some processes may fail.
- A coordinator host that does not resolve (SLURM node names often do not
  outside the cluster's own DNS): :func:`initialize` says so in one line,
  naming the host and the override, before it waits for anyone.
- A peer that never shows up: every process that did start exits with status
  1 after ``init_timeout_s`` with a message naming the coordinator and the
  process count (a watchdog thread, since JAX itself aborts with a bare gRPC
  DEADLINE_EXCEEDED).
- JAX treats SIGTERM as a preemption notice (the process keeps running until
  ``multihost_utils.reached_preemption_sync_point``); use SIGKILL to stop a
  process group for good.
"""

import dataclasses
import importlib.metadata
import importlib.util
import logging as py_logging
import os
import pkgutil
import socket
import sys
import threading
from typing import NoReturn

import jax
from absl import logging

# Extra seconds JAX's own initialization timeout gets beyond ``init_timeout_s``
# so that the watchdog's clearer message comes first.
_INIT_GRACE_S = 10


class ClusterError(ValueError):
  """The process group cannot form as set up; the message is one line."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """How this process joins its group; ``None`` fields are left to JAX."""

  kind: str  # 'explicit', 'slurm', 'k8s' or 'tpu'
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None


def detect(coordinator_address: str | None = None,
           num_processes: int | None = None,
           process_id: int | None = None) -> ClusterSpec | None:
  """What :func:`initialize` would do here; ``None`` means single process."""
  given = {'coordinator_address': coordinator_address,
           'num_processes': num_processes, 'process_id': process_id}
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise ClusterError(
          f'distributed.initialize: {", ".join(missing)} missing; '
          'coordinator_address, num_processes and process_id must be given '
          'together (or none of them, to detect SLURM/Kubernetes/TPU).')
    _check_explicit(coordinator_address, num_processes, process_id)
    return ClusterSpec('explicit', coordinator_address, num_processes, process_id)
  return _detect_slurm() or _detect_k8s() or _detect_tpu()


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               *,
               heartbeat_timeout_s: int = 60,
               init_timeout_s: int = 300,
               shutdown_timeout_s: int = 300) -> None:
  """Joins the process group (see the module docstring); single process: no-op.

  Call it before anything creates JAX's backends (``jax.devices()``, the first
  computation); a second call in the same program does nothing.

  Args:
    coordinator_address: 'host:port' of process 0; give all three of these
      or none.
    num_processes: total number of processes.
    process_id: this process's index in ``[0, num_processes)``.
    heartbeat_timeout_s: a peer silent this long is dead; everyone aborts.
    init_timeout_s: all peers must have joined within this time.
    shutdown_timeout_s: at a normal exit, how long to wait for the others.
  """
  for name, value in (('heartbeat_timeout_s', heartbeat_timeout_s),
                      ('init_timeout_s', init_timeout_s),
                      ('shutdown_timeout_s', shutdown_timeout_s)):
    if not (isinstance(value, int) and value > 0):
      raise ClusterError(f'distributed.initialize: {name} must be a '
                         f'positive int (got {value!r}).')
  spec = detect(coordinator_address, num_processes, process_id)
  if spec is None:
    return
  if jax.distributed.is_initialized():  # e.g. a second train.run in one program
    logging.info('distributed.initialize: already initialized')
    return
  if spec.kind in ('explicit', 'slurm'):  # k8s: the service's DNS may lag
    _check_coordinator_resolves(spec)
  if _cpu_only():
    # Cross-process collectives on CPU, so N local processes act like N hosts.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = dict(initialization_timeout=init_timeout_s + _INIT_GRACE_S,
                heartbeat_timeout_seconds=heartbeat_timeout_s,
                shutdown_timeout_seconds=shutdown_timeout_s)
  if spec.kind != 'tpu':
    kwargs.update(coordinator_address=spec.coordinator_address,
                  num_processes=spec.num_processes, process_id=spec.process_id,
                  local_device_ids=(list(spec.local_device_ids)
                                    if spec.local_device_ids else None),
                  cluster_detection_method='deactivate')
    host = spec.coordinator_address.rsplit(':', 1)[0]
    if (host in ('127.0.0.1', 'localhost', '[::1]')
        and 'JAX_COORDINATOR_BIND_ADDRESS' not in os.environ):
      # JAX binds to all interfaces by default; a local run stays on loopback.
      kwargs['coordinator_bind_address'] = spec.coordinator_address
  logging.info('distributed.initialize via %s: %s', spec.kind, spec)

  watchdog = _InitWatchdog(spec, init_timeout_s)
  try:
    jax.distributed.initialize(**kwargs)
  finally:
    watchdog.cancel()
  if jax.process_count() > 1:
    _exit_on_uncaught_exception(jax.process_index())
  logging.info('process %d of %d; %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def is_coordinator() -> bool:
  """True on process 0 (the one that writes logs and files)."""
  return jax.process_index() == 0


def abort(message: str, status: int = 1) -> NoReturn:
  """Prints ``message`` to stderr and exits now, skipping JAX's shutdown.

  For an error that may hit only some processes of a multi-process run, use
  this rather than ``sys.exit(status)``: ``sys.exit`` waits at JAX's shutdown
  barrier (``shutdown_timeout_s``) while the other processes wait in their
  next collective; after ``abort`` they see a dead peer and stop within the
  heartbeat timeout.
  """
  try:
    py_logging.shutdown()
    sys.stdout.flush()
    sys.stderr.write(message + '\n')
    sys.stderr.flush()
  finally:
    os._exit(status)  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# Detection.


def _check_explicit(address: str, num_processes: int, process_id: int) -> None:
  host, sep, port = str(address).rpartition(':')
  if not (isinstance(address, str) and sep and host and port.isdigit()
          and 0 < int(port) < 65536):
    raise ClusterError('distributed.initialize: coordinator_address must '
                       f"look like 'host:port' (got {address!r}).")
  if not (isinstance(num_processes, int) and num_processes >= 1):
    raise ClusterError('distributed.initialize: num_processes must be an int '
                       f'>= 1 (got {num_processes!r}).')
  if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
    raise ClusterError(f'distributed.initialize: process_id must be in [0, '
                       f'{num_processes}) (got {process_id!r}).')


def _env_int(name: str) -> int:
  value = os.environ[name]
  try:
    return int(value)
  except ValueError:
    raise ClusterError(f'distributed.initialize: environment variable {name} '
                       f'must be an integer (got {value!r}).') from None


def _detect_slurm() -> ClusterSpec | None:
  if 'SLURM_JOB_ID' not in os.environ or 'SLURM_NTASKS' not in os.environ:
    return None
  num_tasks = _env_int('SLURM_NTASKS')
  if num_tasks <= 1:
    return None
  # JAX's own SLURM support (coordinator = first host of the step's node list).
  from jax._src.clusters.slurm_cluster import SlurmCluster  # pylint: disable=g-import-not-at-top
  if not SlurmCluster.is_env_present():
    raise ClusterError(
        f'distributed.initialize: SLURM_NTASKS={num_tasks} but this process is '
        'not an srun task (SLURM_STEP_NODELIST/SLURM_PROCID/SLURM_LOCALID '
        'unset). Start it with srun (see launch/slurm/train.sbatch), or pass '
        'coordinator_address/num_processes/process_id explicitly.')
  num_nodes = _env_int('SLURM_STEP_NUM_NODES' if 'SLURM_STEP_NUM_NODES'
                       in os.environ else 'SLURM_NNODES')
  address = SlurmCluster.get_coordinator_address(
      timeout_secs=None,
      override_coordinator_port=os.environ.get('JAX_COORDINATOR_PORT'))
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    address = _with_port(os.environ['JAX_COORDINATOR_ADDRESS'],
                         address.rsplit(':', 1)[1])
  # One task per node: all the node's devices; several: one device each.
  local = None if num_tasks == num_nodes else (SlurmCluster.get_local_process_id(),)
  return ClusterSpec('slurm', address, SlurmCluster.get_process_count(),
                     SlurmCluster.get_process_id(), local)


def _with_port(address: str, port: str) -> str:
  """``HOST`` or ``HOST:PORT`` (``[v6]:PORT``, bare ``v6``) -> ``HOST:PORT``."""
  host, sep, given = address.rpartition(':')
  if sep and given.isdigit() and (address.startswith('[') or ':' not in host):
    if not (host and 0 < int(given) < 65536):
      raise ClusterError('distributed.initialize: JAX_COORDINATOR_ADDRESS '
                         f"must be 'HOST' or 'HOST:PORT' (got {address!r}).")
    return address
  return f'[{address}]:{port}' if ':' in address else f'{address}:{port}'


def _check_coordinator_resolves(spec: ClusterSpec) -> None:
  """One line naming the coordinator host if it does not resolve here."""
  host = spec.coordinator_address.rsplit(':', 1)[0].strip('[]')
  try:
    socket.getaddrinfo(host, None)
    return
  except (OSError, UnicodeError) as e:
    why = getattr(e, 'strerror', None) or str(e)
  if spec.kind == 'explicit':
    origin, fix = 'coordinator_address', 'pass'
  elif os.environ.get('JAX_COORDINATOR_ADDRESS'):
    origin, fix = 'JAX_COORDINATOR_ADDRESS', 'set it to'
  else:
    origin = ('first node of the SLURM step '
              f'{os.environ.get("SLURM_STEP_NODELIST", "")}')
    fix = 'submit with JAX_COORDINATOR_ADDRESS=HOST[:PORT] set to'
  raise ClusterError(
      f'distributed.initialize: the coordinator host {host!r} ({origin}) does '
      f'not resolve on {socket.gethostname()} ({why}); {fix} an address of '
      'that node that every process can reach (e.g. its IP; for a SLURM node, '
      'NodeAddr in `scontrol show node`).')


def _detect_k8s() -> ClusterSpec | None:
  if ('JOB_COMPLETION_INDEX' not in os.environ
      or 'JAX_COORDINATOR_ADDRESS' not in os.environ):
    return None
  if 'JAX_NUM_PROCESSES' not in os.environ:
    raise ClusterError(
        'distributed.initialize: Kubernetes indexed Job with '
        'JAX_COORDINATOR_ADDRESS but no JAX_NUM_PROCESSES; set it to the Job '
        'parallelism (launch/k8s/render.sh does).')
  spec = ClusterSpec('k8s', os.environ['JAX_COORDINATOR_ADDRESS'],
                     _env_int('JAX_NUM_PROCESSES'),
                     _env_int('JOB_COMPLETION_INDEX'))
  _check_explicit(spec.coordinator_address, spec.num_processes, spec.process_id)
  return spec


def _detect_tpu() -> ClusterSpec | None:
  try:  # private; moved or gone in later jax versions
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if (getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False)
      and not _cpu_only()):
    return ClusterSpec('tpu')
  return None


def _cpu_only() -> bool:
  """True if JAX is limited to CPU or has no accelerator plugin installed."""
  platforms = jax.config.jax_platforms
  if platforms:
    return {p.strip() for p in platforms.split(',')} <= {'cpu'}
  if importlib.util.find_spec('libtpu') is not None:
    return False
  if importlib.metadata.entry_points(group='jax_plugins'):
    return False
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
  except ImportError:
    return True
  return not any(pkgutil.iter_modules(jax_plugins.__path__))


# ---------------------------------------------------------------------------
# Failure handling.


class _InitWatchdog:
  """Ends the process with a clear message if start-up outlives its timeout."""

  def __init__(self, spec: ClusterSpec, timeout_s: int):
    self._spec = spec
    self._timeout_s = timeout_s
    self._done = threading.Event()
    self._timer = threading.Timer(timeout_s, self._fire)
    self._timer.daemon = True
    self._timer.start()

  def cancel(self) -> None:
    self._done.set()
    self._timer.cancel()

  def _fire(self) -> None:
    if self._done.is_set():
      return
    spec = self._spec
    if spec.num_processes is None:
      who = f'this host ({spec.kind} cluster)'
      fix = 'check that every host of the slice started the program'
    else:
      who = f'process {spec.process_id} of {spec.num_processes}'
      fix = (f'check that all {spec.num_processes} processes were started with '
             'the same coordinator address and process count, that process 0 '
             'is running, and that the port is reachable')
    abort(f'distributed.initialize: {who} could not join the process group at '
         f'{spec.coordinator_address or "(auto)"} within {self._timeout_s} s '
         f'(init_timeout_s); {fix}.', 1)


def _exit_on_uncaught_exception(process_id: int) -> None:
  """After the traceback, exit at once instead of at JAX's shutdown barrier."""
  previous = sys.excepthook

  def hook(exc_type, exc, tb):
    try:
      previous(exc_type, exc, tb)
    finally:
      status = 130 if issubclass(exc_type, KeyboardInterrupt) else 1
      abort(f'process {process_id}: uncaught {exc_type.__name__}; exiting with '
           f'status {status} so that the other processes stop too.', status)

  sys.excepthook = hook
