"""dlresearch.distributed: detection of the cluster and its errors, in process
(real 2-process groups: tests/e2e/test_process_groups.py)."""

import os
import socket

import jax
import pytest

from dlresearch import distributed

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
# The coordinator's address: the SLURM override, and a host that does not
# resolve (one line before anyone waits; tests/e2e/test_slurm.py does the same
# under a real SLURM).


@pytest.mark.parametrize('override, address', [
    ('10.1.2.3', '10.1.2.3:2222'),
    ('node17.cluster:9999', 'node17.cluster:9999'),
    ('[fd00::1]:9999', '[fd00::1]:9999'),
    ('fd00::1', '[fd00::1]:2222'),
])
def test_slurm_coordinator_override(clean_env, override, address):
  _slurm(clean_env, tasks=2, nodes=2, procid=1, localid=0)
  clean_env.setenv('JAX_COORDINATOR_PORT', '2222')
  clean_env.setenv('JAX_COORDINATOR_ADDRESS', override)
  assert distributed.detect() == distributed.ClusterSpec(
      'slurm', address, 2, 1, None)


def test_slurm_coordinator_override_with_a_bad_port(clean_env):
  _slurm(clean_env, tasks=2, nodes=2, procid=1, localid=0)
  clean_env.setenv('JAX_COORDINATOR_ADDRESS', 'node17:99999')
  with pytest.raises(distributed.ClusterError,
                     match=r"JAX_COORDINATOR_ADDRESS must be 'HOST' or "
                     r"'HOST:PORT' \(got 'node17:99999'\)"):
    distributed.detect()


@pytest.fixture
def no_dns(clean_env):
  """gpu017 and *.invalid do not resolve; JAX's own start-up is not reached."""
  real = socket.getaddrinfo

  def getaddrinfo(host, *args, **kwargs):
    if host == 'gpu017' or host.endswith('.invalid'):
      raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')
    return real(host, *args, **kwargs)

  def reached(**kwargs):
    raise AssertionError(f'jax.distributed.initialize({kwargs}) was called')

  clean_env.setattr(distributed.socket, 'getaddrinfo', getaddrinfo)
  clean_env.setattr(distributed.jax.distributed, 'initialize', reached)
  return clean_env


def _initialize_error(*args) -> str:
  with pytest.raises(distributed.ClusterError) as e:
    distributed.initialize(*args)
  return str(e.value)


def test_slurm_first_node_that_does_not_resolve(no_dns):
  _slurm(no_dns, tasks=2, nodes=2, procid=1, localid=0)
  assert _initialize_error() == (
      "distributed.initialize: the coordinator host 'gpu017' (first node of "
      'the SLURM step gpu[017-018],gpu020) does not resolve on '
      f'{socket.gethostname()} (Name or service not known); submit with '
      'JAX_COORDINATOR_ADDRESS=HOST[:PORT] set to an address of that node '
      'that every process can reach (e.g. its IP; for a SLURM node, NodeAddr '
      'in `scontrol show node`).')


def test_slurm_override_that_does_not_resolve(no_dns):
  _slurm(no_dns, tasks=2, nodes=2, procid=1, localid=0)
  no_dns.setenv('JAX_COORDINATOR_ADDRESS', 'head.invalid')
  message = _initialize_error()
  assert message.startswith(
      "distributed.initialize: the coordinator host 'head.invalid' "
      '(JAX_COORDINATOR_ADDRESS) does not resolve on ')
  assert '; set it to an address of that node' in message


def test_explicit_address_that_does_not_resolve(no_dns):
  message = _initialize_error('head.invalid:1234', 2, 0)
  assert message.startswith(
      "distributed.initialize: the coordinator host 'head.invalid' "
      '(coordinator_address) does not resolve on ')
  assert '; pass an address of that node' in message


