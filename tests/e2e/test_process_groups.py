"""dlresearch.distributed: real 2-process groups on 127.0.0.1.

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

import pytest

WORKER = os.path.join(os.path.dirname(os.path.dirname(__file__)), '_dist_worker.py')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JAX_ABORT = 'JAX distributed service detected fatal errors'
CLUSTER_VARS = ('SLURM_JOB_ID', 'SLURM_NTASKS', 'SLURM_STEP_NODELIST',
                'SLURM_PROCID', 'SLURM_LOCALID', 'SLURM_STEP_NUM_NODES',
                'SLURM_NNODES', 'JAX_COORDINATOR_PORT', 'JOB_COMPLETION_INDEX',
                'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES')


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
