"""launch/slurm/train.sbatch under a real SLURM, started by this module.

munged, slurmctld and two slurmd run as local processes of the test, with
their configuration, state and logs under a temporary directory (nothing in
/etc or /var is read or written): nodes named after this machine and
``HOSTNAME-nodns`` (2 CPUs each, both this machine, each slurmd on its own
port; the second name does not resolve, as cluster node names often do not). The jobs are the
commands of docs/scaling.md, submitted with sbatch: the CPU smoke test
(1 node x 2 tasks), the header's default layout (2 nodes x 1 task) stopped
by scancel and resumed (with the coordinator override), and a first node
whose name does not resolve.

Needs the Debian packages slurm-wlm and munge (SLURM 22.05 on bookworm;
.ci/run installs them) and root (slurmd starts job steps as their user).
Outside CI the module skips, saying why, where the daemons cannot start;
under CI (CI=true) that is a failure.
"""

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
# The first node is this machine's name (it resolves, as a cluster node's
# name should); the second does not resolve, and sorts after the first (SLURM
# orders nodes by name; the first node of a step is the coordinator).
HOST = socket.gethostname().split('.')[0]
NODES = (HOST, f'{HOST}-nodns')
DAEMONS = ('munged', 'slurmctld', 'slurmd')
pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _unavailable(reason: str):
  if os.environ.get('CI') == 'true':
    pytest.fail(f'SLURM is required under CI: {reason}')
  pytest.skip(reason)


class Cluster:
  """A one-machine SLURM: two nodes, one partition, state under ``root``."""

  def __init__(self, root):
    self.root = str(root)
    self.procs = []
    d = lambda *p: os.path.join(self.root, *p)
    for sub in ('munge', 'run', 'ctld', 'spool', 'log', 'jobs'):
      os.makedirs(d(sub), exist_ok=True)
    os.chmod(d('munge'), 0o700)
    os.chmod(d('run'), 0o755)  # munged wants its socket's folder traversable
    with open(d('munge', 'munge.key'), 'wb') as f:
      f.write(os.urandom(128))
    os.chmod(d('munge', 'munge.key'), 0o600)
    self.socket = d('run', 'munge.sock')
    user = pwd.getpwuid(os.getuid()).pw_name
    lines = [
        'ClusterName=dlrtest', f'SlurmctldHost={HOST}(127.0.0.1)',
        f'SlurmctldPort={_free_port()}', f'SlurmdPort={_free_port()}',
        f'SlurmUser={user}', f'SlurmdUser={user}',
        'AuthType=auth/munge', 'CredType=cred/munge',
        f'AuthInfo=socket={self.socket}',
        f'StateSaveLocation={d("ctld")}', f'SlurmdSpoolDir={d("spool", "%n")}',
        f'SlurmctldPidFile={d("ctld", "pid")}',
        f'SlurmdPidFile={d("spool", "%n.pid")}',
        f'SlurmctldLogFile={d("log", "slurmctld.log")}',
        f'SlurmdLogFile={d("log", "slurmd-%n.log")}',
        'ProctrackType=proctrack/pgid', 'TaskPlugin=task/none',
        'JobAcctGatherType=jobacct_gather/none',
        'AccountingStorageType=accounting_storage/none',
        'SelectType=select/cons_tres', 'SelectTypeParameters=CR_CPU',
        'MpiDefault=none', 'ReturnToService=2', 'MinJobAge=600',
        'KillWait=30',  # SIGTERM, then SIGKILL 30 s later (as on clusters)
        # JAX's port is derived from the job id: keep two sessions apart.
        f'FirstJobId={int.from_bytes(os.urandom(3), "big") + 1}',
    ]
    for name in NODES:
      lines.append(f'NodeName={name} NodeHostname={HOST} NodeAddr=127.0.0.1 '
                   f'Port={_free_port()} CPUs=2 State=UNKNOWN')
    lines.append('PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE '
                 'State=UP')
    self.conf = d('slurm.conf')
    with open(self.conf, 'w') as f:
      f.write('\n'.join(lines) + '\n')
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(('SLURM_', 'SBATCH_', 'SRUN_', 'SALLOC_',
                                 'JAX_COORDINATOR'))}
    # The jobs' environment (sbatch exports it): `python` is this venv's; one
    # CPU device per process; the session's compilation cache.
    self.env = {**base, 'SLURM_CONF': self.conf, 'PYTHONUNBUFFERED': '1',
                'PATH': os.path.dirname(sys.executable) + os.pathsep
                        + base.get('PATH', ''),
                'JAX_PLATFORMS': 'cpu',
                'XLA_FLAGS': '--xla_backend_optimization_level=0'}

  def start(self, timeout_s: float = 30):
    missing = [p for p in (*DAEMONS, 'sbatch') if not shutil.which(p, path=(
        os.environ.get('PATH', '') + ':/usr/sbin:/sbin'))]
    if missing:
      _unavailable(f'{", ".join(missing)} not installed (Debian: apt-get '
                   'install slurm-wlm munge)')
    if os.getuid() != 0:
      _unavailable('slurmd must run as root to start job steps')
    try:
      socket.getaddrinfo(HOST, None)
    except OSError as e:
      _unavailable(f'this machine\'s name {HOST!r} does not resolve ({e}); '
                   'the first node of a job is named after it')
    d = lambda *p: os.path.join(self.root, *p)
    self._spawn(['munged', '--foreground', '--force', f'--socket={self.socket}',
                 f'--key-file={d("munge", "munge.key")}',
                 f'--pid-file={d("munge", "pid")}',
                 f'--log-file={d("log", "munged.log")}',
                 f'--seed-file={d("munge", "seed")}'], 'munged')
    self._wait(lambda: os.path.exists(self.socket), 10, 'munged')
    self._spawn(['slurmctld', '-D', '-c', '-f', self.conf], 'slurmctld')
    for name in NODES:
      self._spawn(['slurmd', '-D', '-N', name, '-f', self.conf],
                  f'slurmd-{name}')
    self._wait(lambda: self.node_states() == ['idle'] * len(NODES), timeout_s,
               'the nodes to be idle')

  def _spawn(self, argv, name):
    log = open(os.path.join(self.root, 'log', f'{name}.stdout'), 'wb')
    path = os.environ.get('PATH', '') + ':/usr/sbin:/sbin'
    argv = [shutil.which(argv[0], path=path), *argv[1:]]
    self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT))

  def _wait(self, ready, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not ready():
      dead = [p.args[0] for p in self.procs if p.poll() is not None]
      if dead or time.monotonic() > deadline:
        _unavailable(f'SLURM did not start (waited for {what}; exited: '
                     f'{dead}); logs:\n{self.logs()}')
      time.sleep(0.3)

  def logs(self) -> str:
    out = []
    for name in sorted(os.listdir(os.path.join(self.root, 'log'))):
      with open(os.path.join(self.root, 'log', name), errors='replace') as f:
        out.append(f'--- {name}\n' + ''.join(f.readlines()[-15:]))
    return '\n'.join(out)

  def stop(self):
    # A job left running by a failed test: SIGKILL its processes first.
    running = any(p.poll() is None for p in self.procs
                  if os.path.basename(p.args[0]) == 'slurmctld')
    jobs = subprocess.run(['squeue', '-h', '-o', '%i'], env=self.env,
                          capture_output=True, text=True,
                          timeout=30).stdout.split() if running else []
    if jobs:
      subprocess.run(['scancel', '--signal=KILL', '--full', *jobs], env=self.env,
                     capture_output=True, timeout=30)
      deadline = time.monotonic() + 15
      while time.monotonic() < deadline and subprocess.run(
          ['squeue', '-h', '-o', '%i'], env=self.env, capture_output=True,
          text=True, timeout=30).stdout.strip():
        time.sleep(0.5)
    for p in reversed(self.procs):
      if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    for p in reversed(self.procs):
      try:
        p.wait(timeout=15)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()

  def cli(self, *argv, check=True) -> str:
    out = subprocess.run(argv, env=self.env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    if check and out.returncode:
      raise AssertionError(f'{shlex.join(argv)}: {out.stderr}')
    return out.stdout

  def node_states(self) -> list[str]:
    out = subprocess.run(['sinfo', '-h', '-N', '-o', '%t'], env=self.env,
                         capture_output=True, text=True, timeout=10)
    return out.stdout.split() if out.returncode == 0 else []

  def sbatch(self, argv, **env) -> str:
    """Submits ``argv`` (an ``sbatch ...`` command line) from the repo root."""
    assert argv[0] == 'sbatch'
    out = subprocess.run(
        ['sbatch', '--parsable',
         f'--output={os.path.join(self.root, "jobs", "%j.out")}', *argv[1:]],
        env={**self.env, **env}, cwd=ROOT, capture_output=True, text=True,
        timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(';')[0]

  def job(self, job_id) -> dict:
    text = self.cli('scontrol', 'show', 'job', '-o', job_id)
    return dict(re.findall(r'(\w+)=(\S*)', text))

  def wait(self, job_id, timeout_s=240) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
      job = self.job(job_id)
      if job['JobState'] not in ('PENDING', 'CONFIGURING', 'RUNNING',
                                 'COMPLETING', 'SUSPENDED'):
        return job
      if time.monotonic() > deadline:
        self.cli('scancel', job_id, check=False)
        raise AssertionError(f'job {job_id} still {job["JobState"]} after '
                             f'{timeout_s} s:\n{self.output(job_id)}')
      time.sleep(0.3)

  def output(self, job_id) -> str:
    with open(os.path.join(self.root, 'jobs', f'{job_id}.out')) as f:
      return f.read()


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
  cluster = Cluster(tmp_path_factory.mktemp('slurm'))
  try:
    cluster.start()
    yield cluster
  finally:
    cluster.stop()


def documented(prefix: str, workdir, *extra) -> list[str]:
  """The command of docs/scaling.md that starts with ``prefix``, writing to
  ``workdir``; the data under the test's folder."""
  with open(os.path.join(ROOT, 'docs', 'scaling.md')) as f:
    [line] = [l for l in f if l.startswith(prefix + ' ')]
  argv = [re.sub(r'^--workdir=.*', f'--workdir={workdir}', a)
          for a in shlex.split(line)]
  assert f'--workdir={workdir}' in argv, line
  return [*argv, f'--data_dir={os.path.dirname(workdir)}/tfds', *extra]


def metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def checkpoints(workdir) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints'))
                if n.isdigit())


def one_group(output: str, processes: int):
  """Every process of the step reports the same group of ``processes``."""
  found = sorted(re.findall(r'^(\d+): .*process (\d+) of (\d+); 1 local / '
                            r'(\d+) global devices', output, re.M))
  assert found == [(str(i), str(i), str(processes), str(processes))
                   for i in range(processes)], output[-3000:]


def test_cpu_smoke_test_one_node_two_tasks(slurm, tmp_path):
  workdir = tmp_path / 'run'
  job_id = slurm.sbatch(documented(
      'sbatch --nodes=1 --ntasks-per-node=2 launch/slurm/train.sbatch',
      workdir))
  job = slurm.wait(job_id)
  out = slurm.output(job_id)
  assert (job['JobState'], job['ExitCode'], job['NodeList'], job['NumTasks']) \
      == ('COMPLETED', '0:0', HOST, '2'), out[-3000:]
  one_group(out, 2)
  lines = metrics(workdir)
  assert [l['step'] for l in lines if l['split'] == 'train'] == [5, 10, 15, 20]
  [final] = [l for l in lines if l['split'] == 'eval']
  assert final['step'] == 20 and final['num_examples'] == 360
  assert checkpoints(workdir) == [10, 20]
  # Both processes print the final line (the same numbers).
  finals = re.findall(r'^(\d): final eval at step 20: (.*)$', out, re.M)
  assert sorted(f[0] for f in finals) == ['0', '1']
  assert finals[0][1] == finals[1][1]


def test_two_nodes_scancel_then_resume(slurm, tmp_path):
  # The header's layout (2 nodes x 1 task), long enough to be stopped.
  workdir = tmp_path / 'run'
  command = documented('sbatch launch/slurm/train.sbatch', workdir,
                       '--num_steps=400')
  job_id = slurm.sbatch(command)
  path = workdir / 'metrics.jsonl'
  deadline = time.monotonic() + 180
  while not (path.exists() and path.read_text().strip()):  # it is training
    assert slurm.job(job_id)['JobState'] in ('PENDING', 'CONFIGURING',
                                             'RUNNING'), slurm.output(job_id)
    assert time.monotonic() < deadline, slurm.output(job_id)
    time.sleep(0.1)
  slurm.cli('scancel', job_id)
  job = slurm.wait(job_id)
  out = slurm.output(job_id)
  assert (job['JobState'], job['NumNodes'], job['NumTasks']) == (
      'CANCELLED', '2', '2'), out[-3000:]
  one_group(out, 2)
  stopped = checkpoints(workdir)[-1]  # (--tiny also saves every 10 steps)
  assert 0 < stopped < 400, out[-3000:]
  assert re.search(rf'^0: stopped by SIGTERM at step {stopped}; checkpoint '
                   'saved', out, re.M), out[-3000:]
  before = metrics(workdir)

  # The same command again resumes from that checkpoint and finishes; here
  # with the coordinator given by JAX_COORDINATOR_ADDRESS (the override for
  # a first node whose name does not resolve; its port still from the job).
  job_id = slurm.sbatch(command, JAX_COORDINATOR_ADDRESS='127.0.0.1')
  job = slurm.wait(job_id)
  out = slurm.output(job_id)
  assert (job['JobState'], job['ExitCode']) == ('COMPLETED', '0:0'), out[-3000:]
  one_group(out, 2)
  port = int(job_id) % 4096 + 61440  # JAX's port for the job
  assert f"coordinator_address='127.0.0.1:{port}'" in out, out[-3000:]
  after = metrics(workdir)[len(before):]
  train_steps = [l['step'] for l in after if l['split'] == 'train']
  assert stopped < train_steps[0] <= stopped + 5 and train_steps[-1] == 400
  assert train_steps == sorted(set(train_steps))
  assert [l['step'] for l in after if l['split'] == 'eval'] == [400]
  assert checkpoints(workdir)[-1] == 400


def test_first_node_that_does_not_resolve_fails_at_once(slurm, tmp_path):
  workdir = tmp_path / 'run'
  command = documented(
      'sbatch --nodes=1 --ntasks-per-node=2 launch/slurm/train.sbatch', workdir)
  start = time.monotonic()
  job_id = slurm.sbatch([command[0], f'--nodelist={NODES[1]}', *command[1:]])
  job = slurm.wait(job_id)
  took = time.monotonic() - start
  out = slurm.output(job_id)
  # srun's status: the first task's 2, or SIGTERM's 143 when srun ended the
  # other task (--kill-on-bad-exit) before it returned.
  assert job['JobState'] == 'FAILED' and job['ExitCode'] in ('2:0', '143:0'), \
      out[-3000:]
  errors = re.findall(r'^\d: error: (.*)$', out, re.M)
  assert errors and len(set(errors)) == 1, out[-3000:]
  assert errors[0].startswith(
      f"distributed.initialize: the coordinator host '{NODES[1]}' (first node "
      f'of the SLURM step {NODES[1]}) does not resolve on {socket.gethostname()} ')
  assert 'JAX_COORDINATOR_ADDRESS=HOST[:PORT]' in errors[0]
  assert took < 60  # not init_timeout_s (300 s)
  assert not workdir.exists()


def test_unresolvable_first_node_without_slurm(tmp_path):
  # The same check in a forked CLI with a step's variables, no daemons: runs
  # where SLURM is not installed.
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('SLURM_', 'JAX_COORDINATOR'))}
  env.update(SLURM_JOB_ID='123456', SLURM_NTASKS='2', SLURM_STEP_NUM_NODES='2',
             SLURM_STEP_NODELIST='gpu017.invalid,gpu018.invalid',
             SLURM_PROCID='1', SLURM_LOCALID='0')
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.cnn_imagenet', '--preset=quickstart',
       '--tiny', f'--workdir={tmp_path / "run"}', '--init_timeout_s=30'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.strip().splitlines()[-1].startswith(
      "error: distributed.initialize: the coordinator host 'gpu017.invalid' "
      '(first node of the SLURM step gpu017.invalid,gpu018.invalid) does not '
      'resolve on ')
  assert 'Traceback' not in out.stderr
  assert not (tmp_path / 'run').exists()
