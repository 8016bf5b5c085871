"""launch/: the exact commands each script runs (--dry-run), and local.sh for real."""

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(ROOT, 'launch')
# An experiment command whose quoting must survive: spaces, quotes, $, &.
EXPERIMENT = ['python', '-m', 'experiments.mnist', '--preset=cnn',
              "--note=it's a \"test\" & $HOME"]


def run(script, *args, env=None, timeout=30):
  base = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  return subprocess.run(['bash', os.path.join(LAUNCH, script), *args],
                        env={**base, **(env or {})}, capture_output=True,
                        text=True, timeout=timeout)


def _flags(argv):
  return {a.split('=', 1)[0]: a.split('=', 1)[1] for a in argv[len(EXPERIMENT):]}


# ---------------------------------------------------------------------------
# local.sh


def test_local_dry_run_prints_one_command_per_process():
  out = run('local.sh', '--dry-run', '3', '--', *EXPERIMENT)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert len(lines) == 3
  ports = set()
  for i, line in enumerate(lines):
    argv = shlex.split(line)
    assert argv[:len(EXPERIMENT)] == EXPERIMENT
    flags = _flags(argv)
    assert list(flags) == ['--coordinator_address', '--num_processes',
                           '--process_id']
    host, port = flags['--coordinator_address'].split(':')
    assert host == '127.0.0.1' and 1024 <= int(port) < 65536
    assert flags['--num_processes'] == '3' and flags['--process_id'] == str(i)
    ports.add(port)
  assert len(ports) == 1


def test_local_runs_n_copies_with_their_flags():
  # One write per line: the copies share the pipe.
  echo = [sys.executable, '-c',
          'import json, os, sys; '
          'os.write(1, (json.dumps(sys.argv[1:]) + "\\n").encode())',
          'a b', '$X']
  out = run('local.sh', '2', '--', *echo, env={'XLA_FLAGS': '--marker'})
  assert out.returncode == 0, out.stderr
  argvs = sorted((json.loads(l) for l in out.stdout.splitlines()),
                 key=lambda a: a[-1])
  assert len(argvs) == 2
  port = argvs[0][2].split(':')[1]
  for i, argv in enumerate(argvs):
    assert argv == ['a b', '$X', f'--coordinator_address=127.0.0.1:{port}',
                    '--num_processes=2', f'--process_id={i}']


def test_local_passes_the_environment_through():
  show = [sys.executable, '-c',
          'import os; print(os.environ["XLA_FLAGS"], os.environ["PATH"])']
  out = run('local.sh', '1', '--', *show, env={'XLA_FLAGS': '--a --b'})
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['--a', '--b', os.environ['PATH']]


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/status') as f:
      return 'State:\tZ' not in f.read()  # a zombie has finished
  except FileNotFoundError:
    return False


def test_local_failure_stops_the_others_and_returns_its_status(tmp_path):
  # Process 1 fails with status 3; 0 sleeps; 2 sleeps and ignores SIGTERM, as
  # a JAX process does (JAX takes SIGTERM for a preemption notice).
  script = (
      'import os, signal, sys, time\n'
      'i = int(sys.argv[-1].split("=")[1])\n'
      f'open(os.path.join({str(tmp_path)!r}, f"pid{{i}}"), "w").write(str(os.getpid()))\n'
      'if i == 1:\n'
      '  time.sleep(1.0); sys.exit(3)\n'
      'if i == 2:\n'
      '  signal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
      'time.sleep(120)\n')
  start = time.monotonic()
  out = run('local.sh', '3', '--', sys.executable, '-c', script, timeout=60)
  took = time.monotonic() - start
  assert out.returncode == 3
  assert re.search(r'process 1 \(pid \d+\) exited with status 3; stopping the '
                   'others', out.stderr)
  assert took < 15, took  # 3 s grace before SIGKILL, not the 120 s sleep
  pids = [int((tmp_path / f'pid{i}').read_text()) for i in (0, 2)]
  deadline = time.monotonic() + 5
  while any(map(_alive, pids)) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not any(map(_alive, pids))


@pytest.mark.parametrize('args, message', [
    (['--', 'python'], 'missing N'),
    (['2'], 'missing the command after --'),
    (['two', '--', 'python'], "unexpected argument 'two'"),
])
def test_local_bad_arguments(args, message):
  out = run('local.sh', *args)
  assert out.returncode == 2 and message in out.stderr


# ---------------------------------------------------------------------------
# SLURM


@pytest.mark.parametrize('env, nodes, per_node', [
    ({}, '2', '1'),
    ({'SLURM_NNODES': '4', 'SLURM_NTASKS_PER_NODE': '8'}, '4', '8'),
])
def test_slurm_dry_run_prints_the_srun_command(env, nodes, per_node):
  out = run('slurm/train.sbatch', '--dry-run', '--', *EXPERIMENT, env=env)
  assert out.returncode == 0, out.stderr
  assert shlex.split(out.stdout) == [
      'srun', f'--nodes={nodes}', f'--ntasks-per-node={per_node}',
      '--kill-on-bad-exit=1', '--label', *EXPERIMENT]


def test_slurm_outside_a_job_refuses_to_run():
  out = run('slurm/train.sbatch', '--', 'python', '-c', 'pass')
  assert out.returncode == 2 and 'not inside a SLURM job' in out.stderr


def test_slurm_header_matches_the_dry_run_defaults():
  text = open(os.path.join(LAUNCH, 'slurm', 'train.sbatch')).read()
  assert '#SBATCH --nodes=2\n' in text and '#SBATCH --ntasks-per-node=1\n' in text
  # No GPUs or other generic resources: a CPU cluster refuses the whole job
  # at submission ("Invalid generic resource (gres) specification").
  header = [l for l in text.splitlines() if l.startswith('#SBATCH')]
  assert not [l for l in header if re.search(r'gpu|gres|tres', l)], header


# ---------------------------------------------------------------------------
# Kubernetes (JobSet)


def _render(kind, *options):
  out = run('k8s/render.sh', kind, '--dry-run', *options, '--', *EXPERIMENT)
  assert out.returncode == 0, out.stderr
  comments = [l for l in out.stdout.splitlines() if l.startswith('# host ')]
  docs = [d for d in yaml.safe_load_all(out.stdout) if d]
  assert len(docs) == 1
  return comments, docs[0]


def _pod_spec(manifest, num_hosts):
  [job] = manifest['spec']['replicatedJobs']
  spec = job['template']['spec']
  assert job['replicas'] == 1
  assert spec['parallelism'] == spec['completions'] == num_hosts
  assert spec['completionMode'] == 'Indexed' and spec['backoffLimit'] == 0
  assert manifest['spec']['failurePolicy'] == {'maxRestarts': 0}
  return spec['template']['spec']


def test_k8s_gpu_dry_run():
  comments, manifest = _render('gpu', '--image', 'gcr.io/p/train:1',
                               '--num-hosts', '3', '--name', 'run7',
                               '--gpus-per-host', '4')
  assert manifest['kind'] == 'JobSet' and manifest['metadata']['name'] == 'run7'
  [container] = _pod_spec(manifest, 3)['containers']
  assert container['image'] == 'gcr.io/p/train:1'
  assert container['command'] == EXPERIMENT
  assert {e['name']: e['value'] for e in container['env']} == {
      'JAX_COORDINATOR_ADDRESS': 'run7-workers-0-0.run7:8476',
      'JAX_NUM_PROCESSES': '3'}
  assert container['resources']['limits'] == {'nvidia.com/gpu': 4}
  assert len(comments) == 3
  for i, line in enumerate(comments):
    argv = shlex.split(line.split(':', 1)[1])
    assert argv == [f'JOB_COMPLETION_INDEX={i}',
                    'JAX_COORDINATOR_ADDRESS=run7-workers-0-0.run7:8476',
                    'JAX_NUM_PROCESSES=3', *EXPERIMENT]


def test_k8s_tpu_dry_run():
  comments, manifest = _render('tpu', '--image', 'img', '--num-hosts', '4',
                               '--tpu-topology', '4x4')
  pod = _pod_spec(manifest, 4)
  assert pod['nodeSelector'] == {
      'cloud.google.com/gke-tpu-accelerator': 'tpu-v5-lite-podslice',
      'cloud.google.com/gke-tpu-topology': '4x4'}
  [container] = pod['containers']
  assert container['command'] == EXPERIMENT
  assert container['resources']['limits'] == {'google.com/tpu': 4}
  assert [shlex.split(c.split(':', 1)[1]) for c in comments] == [
      [f'TPU_WORKER_ID={i}', *EXPERIMENT] for i in range(4)]


@pytest.mark.parametrize('args, message', [
    (['cpu', '--image', 'i', '--num-hosts', '2'], 'must be gpu or tpu'),
    (['gpu', '--num-hosts', '2'], '--image is required'),
    (['gpu', '--image', 'i', '--num-hosts', '0'], '--num-hosts must be a positive'),
    (['gpu', '--image', 'i', '--num-hosts', '2', '--name', 'Bad_Name'],
     '--name must be lower-case'),
])
def test_k8s_bad_arguments(args, message):
  out = run('k8s/render.sh', *args, '--dry-run', '--', 'python')
  assert out.returncode == 2 and message in out.stderr


# ---------------------------------------------------------------------------
# Cloud TPU VM


@pytest.mark.parametrize('workdir', [None, 'src/dl research'])
def test_tpu_vm_dry_run_prints_the_gcloud_command(workdir):
  extra = ['--workdir', workdir] if workdir else []
  out = run('tpu_vm.sh', '--dry-run', *extra, 'my-tpu', 'us-central2-b', '--',
            *EXPERIMENT)
  assert out.returncode == 0, out.stderr
  argv = shlex.split(out.stdout)
  assert argv[:-1] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu',
                       '--zone', 'us-central2-b', '--worker=all', '--command']
  remote = argv[-1]
  if workdir:
    cd, remote = remote.split(' && ', 1)
    assert shlex.split(cd) == ['cd', workdir]
  assert shlex.split(remote) == EXPERIMENT  # what the remote shell runs


def test_tpu_vm_needs_name_and_zone():
  out = run('tpu_vm.sh', '--dry-run', 'my-tpu', '--', 'python')
  assert out.returncode == 2 and 'need TPU_NAME and ZONE' in out.stderr


# ---------------------------------------------------------------------------
# local.sh with real JAX processes (tests/_dist_worker.py)

WORKER = os.path.join(ROOT, 'tests', '_dist_worker.py')
JAX_ENV = {'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1',
           'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}


@pytest.mark.slow
def test_local_starts_a_jax_process_group():
  out = run('local.sh', '2', '--', sys.executable, WORKER, 'sum', env=JAX_ENV,
            timeout=90)
  assert out.returncode == 0, out.stderr
  results = sorted(map(json.loads, re.findall(r'\{"process_index"[^{}]*\}',
                                               out.stdout)),
                   key=lambda r: r['process_index'])
  assert [(r['process_index'], r['process_count'], r['device_count'], r['psum'])
          for r in results] == [(0, 2, 8, 204.0), (1, 2, 8, 204.0)]


@pytest.mark.slow
def test_local_jax_failure_in_one_process_ends_the_run():
  start = time.monotonic()
  out = run('local.sh', '2', '--', sys.executable, WORKER, 'loop',
            '--raise_on=1', '--heartbeat_timeout_s=5', env=JAX_ENV, timeout=90)
  assert out.returncode == 1, out.stderr
  assert 'deliberate failure in process 1' in out.stderr
  assert re.search(r'process 1 \(pid \d+\) exited with status 1', out.stderr)
  assert time.monotonic() - start < 40
