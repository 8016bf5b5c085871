"""dlresearch.distributed: detection, and real 2-process groups on 127.0.0.1.

The multi-process tests start two copies of tests/_dist_worker.py, each with
4 fake CPU devices, and check what happens when one of them dies.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from dlresearch import distributed

WORKER = os.path.join(os.path.dirname(os.path.dirname(__file__)), '_dist_worker.py')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JAX_ABORT = 'JAX distributed service detected fatal errors'
CLUSTER_VARS = ('SLURM_JOB_ID', 'SLURM_NTASKS', 'SLURM_STEP_NODELIST',
                'SLURM_PROCID', 'SLURM_LOCALID', 'SLURM_STEP_NUM_NODES',
                'SLURM_NNODES', 'JAX_COORDINATOR_PORT', 'JOB_COMPLETION_INDEX',
                'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES')


@pytest.fixture
def clean_env(monkeypatch):
  for name in CLUSTER_VARS:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


# ---------------------------------------------------------------------------
# Detection (in process, no JAX group is formed).


def test_partial_explicit_arguments_name_the_missing_ones(clean_env):
  with pytest.raises(ValueError, match='num_processes, process_id missing'):
    distributed.initialize('127.0.0.1:1234')
  with pytest.raises(ValueError, match='coordinator_address missing'):
    distributed.initialize(num_processes=2, process_id=0)


@pytest.mark.parametrize('args, match', [
    (('127.0.0.1', 2, 0), "like 'host:port'"),
    (('127.0.0.1:99999', 2, 0), "like 'host:port'"),
    (('127.0.0.1:1234', 0, 0), 'num_processes must be an int >= 1'),
    (('127.0.0.1:1234', 2, 2), r'process_id must be in \[0, 2\)'),
])
def test_bad_explicit_arguments(clean_env, args, match):
  with pytest.raises(ValueError, match=match):
    distributed.detect(*args)


def test_bad_timeout(clean_env):
  with pytest.raises(ValueError, match='heartbeat_timeout_s must be a positive'):
    distributed.initialize(heartbeat_timeout_s=0)


def test_explicit_arguments(clean_env):
  clean_env.setenv('SLURM_JOB_ID', '7')  # explicit arguments win
  clean_env.setenv('SLURM_NTASKS', '4')
  assert distributed.detect('10.0.0.1:1234', 4, 3) == distributed.ClusterSpec(
      'explicit', '10.0.0.1:1234', 4, 3)


def test_nothing_detected_is_single_process(clean_env):
  assert distributed.detect() is None
  distributed.initialize()  # a no-op
  assert not jax.distributed.is_initialized()
  assert jax.process_count() == 1 and distributed.is_coordinator()


def test_initialize_after_jax_started_is_an_error(clean_env):
  jax.devices()  # creates the backends
  with pytest.raises(RuntimeError, match='must be called before any JAX calls'):
    distributed.initialize('127.0.0.1:1', 2, 0, init_timeout_s=5)
  assert not jax.distributed.is_initialized()


def _slurm(env, tasks, nodes, procid, localid):
  env.setenv('SLURM_JOB_ID', '123456')
  env.setenv('SLURM_NTASKS', str(tasks))
  env.setenv('SLURM_STEP_NUM_NODES', str(nodes))
  env.setenv('SLURM_STEP_NODELIST', 'gpu[017-018],gpu020')
  env.setenv('SLURM_PROCID', str(procid))
  env.setenv('SLURM_LOCALID', str(localid))


def test_slurm_one_process_per_gpu(clean_env):
  _slurm(clean_env, tasks=16, nodes=2, procid=11, localid=3)
  port = 123456 % 4096 + 65536 - 4096  # JAX's rule: job id -> port
  assert distributed.detect() == distributed.ClusterSpec(
      'slurm', f'gpu017:{port}', 16, 11, (3,))


def test_slurm_one_process_per_node_sees_all_devices(clean_env):
  _slurm(clean_env, tasks=2, nodes=2, procid=1, localid=0)
  clean_env.setenv('JAX_COORDINATOR_PORT', '2222')
  assert distributed.detect() == distributed.ClusterSpec(
      'slurm', 'gpu017:2222', 2, 1, None)


def test_slurm_single_task_is_single_process(clean_env):
  _slurm(clean_env, tasks=1, nodes=1, procid=0, localid=0)
  assert distributed.detect() is None


def test_slurm_outside_srun_is_an_error(clean_env):
  clean_env.setenv('SLURM_JOB_ID', '5')
  clean_env.setenv('SLURM_NTASKS', '4')
  with pytest.raises(ValueError, match='not an srun task'):
    distributed.detect()


def test_kubernetes_indexed_job(clean_env):
  clean_env.setenv('JOB_COMPLETION_INDEX', '2')
  clean_env.setenv('JAX_COORDINATOR_ADDRESS', 'run-workers-0-0.run:8476')
  with pytest.raises(ValueError, match='no JAX_NUM_PROCESSES'):
    distributed.detect()
  clean_env.setenv('JAX_NUM_PROCESSES', 'four')
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer"):
    distributed.detect()
  clean_env.setenv('JAX_NUM_PROCESSES', '4')
  assert distributed.detect() == distributed.ClusterSpec(
      'k8s', 'run-workers-0-0.run:8476', 4, 2)


# ---------------------------------------------------------------------------
# Real process groups.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env() -> dict:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
             XLA_FLAGS='--xla_force_host_platform_device_count=4',
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get('PYTHONPATH')])))
  for name in CLUSTER_VARS:
    env.pop(name, None)
  return env


class Group:
  """Worker processes writing to files under ``tmp``; always killed on exit."""

  def __init__(self, tmp, ids, mode, num_processes=2, **flags):
    self.port = _free_port()
    extra = [f'--{k}={v}' for k, v in flags.items()]
    self.procs, self.out, self.err = {}, {}, {}
    for i in ids:
      self.out[i], self.err[i] = tmp / f'out{i}.txt', tmp / f'err{i}.txt'
      with open(self.out[i], 'w') as out, open(self.err[i], 'w') as err:
        self.procs[i] = subprocess.Popen(
            [sys.executable, WORKER, mode,
             f'--coordinator_address=127.0.0.1:{self.port}',
             f'--num_processes={num_processes}', f'--process_id={i}'] + extra,
            env=_env(), stdout=out, stderr=err)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    for p in self.procs.values():
      if p.poll() is None:
        p.kill()
      p.wait(timeout=30)

  def wait_ready(self, timeout: float = 60):
    """Blocks until every worker printed READY (after its first collective)."""
    deadline = time.monotonic() + timeout
    for i, p in self.procs.items():
      while 'READY' not in self.out[i].read_text():
        if p.poll() is not None:
          pytest.fail(f'worker {i} exited early:\n{self.err[i].read_text()}')
        if time.monotonic() > deadline:
          pytest.fail(f'worker {i} not ready after {timeout} s')
        time.sleep(0.05)

  def finish(self, i: int, timeout: float):
    """(exit status, seconds waited, stdout, stderr) of worker ``i``."""
    start = time.monotonic()
    try:
      self.procs[i].wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      pytest.fail(f'worker {i} still running after {timeout} s (a hang)')
    return (self.procs[i].returncode, time.monotonic() - start,
            self.out[i].read_text(), self.err[i].read_text())


@pytest.mark.slow
def test_two_processes_form_one_group_and_sum_globally(tmp_path):
  with Group(tmp_path, [0, 1], 'sum') as group:
    results = []
    for i in (0, 1):
      rc, _, out, err = group.finish(i, timeout=60)
      assert rc == 0, err
      [line] = [l for l in out.splitlines() if l.startswith('{')]
      results.append(json.loads(line))
  expected = float(sum(k * k for k in range(1, 9)))  # shards hold 1..8 squared
  for i, r in enumerate(results):
    assert r == {'process_index': i, 'process_count': 2, 'device_count': 8,
                 'local_device_count': 4, 'global_shape': [8],
                 'sum': expected, 'psum': expected, 'is_coordinator': i == 0}


@pytest.mark.slow
@pytest.mark.parametrize('victim', [1, 0])
def test_sigkill_of_a_peer_ends_the_survivor(tmp_path, victim):
  survivor = 1 - victim
  with Group(tmp_path, [0, 1], 'loop', heartbeat_timeout_s=5) as group:
    group.wait_ready()
    group.procs[victim].send_signal(signal.SIGKILL)
    rc, waited, _, err = group.finish(survivor, timeout=30)
  assert rc != 0
  assert JAX_ABORT in err
  # Heartbeat timeout 5 s (immediate when the coordinator, process 0, dies).
  assert waited < 15, waited


@pytest.mark.slow
@pytest.mark.parametrize('raiser', [1, 0])
def test_uncaught_exception_in_a_peer_ends_everyone_quickly(tmp_path, raiser):
  other = 1 - raiser
  with Group(tmp_path, [0, 1], 'loop', heartbeat_timeout_s=5,
             raise_on=raiser) as group:
    group.wait_ready()
    rc, waited, _, err = group.finish(raiser, timeout=30)
    assert rc == 1
    assert f'deliberate failure in process {raiser}' in err
    assert f'process {raiser}: uncaught RuntimeError' in err
    assert waited < 10, waited  # not JAX's 300 s shutdown barrier
    rc, waited, _, err = group.finish(other, timeout=30)
  assert rc != 0 and JAX_ABORT in err
  assert waited < 15, waited


@pytest.mark.slow
def test_abort_in_the_coordinator_ends_everyone_quickly(tmp_path):
  with Group(tmp_path, [0, 1], 'loop', heartbeat_timeout_s=5,
             abort_on=0) as group:
    group.wait_ready()
    rc, waited, _, err = group.finish(0, timeout=30)
    assert rc == 2 and 'deliberate abort in process 0' in err
    assert waited < 10, waited
    rc, waited, _, err = group.finish(1, timeout=30)
  assert rc != 0 and JAX_ABORT in err
  assert waited < 10, waited


@pytest.mark.slow
@pytest.mark.parametrize('present', [0, 1])
def test_missing_peer_fails_after_init_timeout(tmp_path, present):
  with Group(tmp_path, [present], 'sum', init_timeout_s=3) as group:
    start = time.monotonic()
    rc, _, _, err = group.finish(present, timeout=40)
    took = time.monotonic() - start
  assert rc == 1
  assert (f'process {present} of 2 could not join the process group at '
          f'127.0.0.1:{group.port} within 3 s') in err
  assert 3 <= took < 20, took
