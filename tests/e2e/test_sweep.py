"""``python -m dlresearch.sweep``: Optuna sweeps whose trials are runs.

Bad input is one line and writes nothing; a sweep killed with -9 and run
again finishes exactly N COMPLETE trials, the interrupted one resumed from
its checkpoints in its own workdir; two "hosts" (two sweep commands) share
one study on a real PostgreSQL server started here on 127.0.0.1.
"""

import csv
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from dlresearch.tools import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
ENV = {**os.environ, 'PYTHONPATH': ROOT}
TRIAL_FLAGS = ['--tiny', '--noplots', '--nomodel_summary']


def _sweep_argv(sweep_dir, *extra, trials=3, flags=TRIAL_FLAGS):
  return [f'--sweep_dir={sweep_dir}', '--experiment=cnn_imagenet',
          f'--trials={trials}', '--metric=accuracy', '--direction=maximize',
          '--space=learning_rate=loguniform:1e-3:3e-2',
          '--space=batch_size=choice:32,64', *extra, '--', *flags]


def _command(argv):
  return [sys.executable, '-m', 'dlresearch.sweep', *argv]


def _rows(sweep_dir):
  with open(os.path.join(sweep_dir, 'results.csv')) as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize('bad, needle', [
    ('--space=frobs=uniform:0:1', "unknown config field 'frobs'"),
    ('--space=learning_rate=uniform:0.1:0.01', 'needs LO <= HI'),
    ('--space=learning_rate=loguniform:0:1', 'loguniform needs LO > 0'),
    ('--space=dataset=uniform:0:1', 'dataset is not a number'),
    ('--space=batch_size=uniform:8:64', 'batch_size is an integer'),
    ('--space=batch_size=choice:8,big', "expected int, got 'big'"),
    ('--space=learning_rate=normal:0:1', 'DIST must be one of'),
    ('--space=learning_rate', 'expected FIELD=DIST'),
    ('--trials=0', '--trials: must be >= 1'),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, bad,
                                                  needle):
  out = tmp_path / 'sweep'
  argv = [f'--sweep_dir={out}', '--experiment=cnn_imagenet', '--trials=2',
          '--metric=accuracy', '--direction=maximize', bad, '--', '--tiny']
  assert sweep.run(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1, err
  assert needle in err, err
  assert not out.exists()


def test_a_searched_field_given_to_every_trial_is_refused(tmp_path, capsys):
  out = tmp_path / 'sweep'
  argv = _sweep_argv(out)[:-len(TRIAL_FLAGS)] + ['--learning_rate=0.1']
  assert sweep.run(argv) == 2
  assert 'learning_rate is searched' in capsys.readouterr().err
  assert sweep.run([f'--sweep_dir={out}', '--experiment=nope', '--trials=1',
                    '--metric=a', '--direction=maximize',
                    '--space=learning_rate=uniform:0.1:0.2']) == 2
  assert 'no module experiments.nope' in capsys.readouterr().err
  assert not out.exists()


def test_without_optuna_the_sweep_says_how_to_install_it(tmp_path, capsys,
                                                         monkeypatch):
  real = sweep.importlib.util.find_spec
  monkeypatch.setattr(sweep.importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'optuna' else real(name, *a))
  out = tmp_path / 'sweep'
  assert sweep.run(_sweep_argv(out)) == 2
  err = capsys.readouterr().err
  assert err == "error: python -m dlresearch.sweep needs optuna: pip install -e '.[track]'\n"
  assert not out.exists()


@pytest.mark.slow
def test_a_metric_no_eval_line_has_is_one_line_and_nothing_stays(tmp_path):
  out = tmp_path / 'sweep'
  argv = _sweep_argv(out)
  argv[3] = '--metric=acuracy'
  p = subprocess.run(_command(argv), cwd=ROOT, env=ENV, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 2, p.stderr[-3000:]
  lines = p.stderr.strip().splitlines()
  assert lines == [
      "error: --metric: the eval line has no 'acuracy' (it has time, "
      'dataset_split, num_examples, accuracy, loss, top5_accuracy)'], lines
  assert not out.exists()


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_exactly_n_resuming_the_interrupted(
    tmp_path):
  out = tmp_path / 'sweep'
  flags = [*TRIAL_FLAGS, '--num_steps=300', '--checkpoint_every=10',
           '--log_every=10']
  argv = _sweep_argv(out, '--seed=1', flags=flags)
  first = subprocess.Popen(_command(argv), cwd=ROOT, env=ENV,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  # Kill the sweep once trial 0 has a checkpoint and is still running (the
  # first trial: how soon that comes does not depend on how fast a loaded
  # machine runs a whole trial; the deadline only guards against a hang).
  deadline = time.monotonic() + 900
  ckpt = out / 'trial_0' / 'checkpoints'
  try:
    while not (ckpt.is_dir() and any(n.isdigit() for n in os.listdir(ckpt))):
      assert first.poll() is None and time.monotonic() < deadline
      time.sleep(0.2)
  finally:  # a failed wait leaves no sweep running (its trial ends with it)
    first.send_signal(signal.SIGKILL)
    first.wait()
  before = (out / 'trial_0' / 'metrics.jsonl').read_text().splitlines()
  assert not any('"eval"' in l for l in before)  # stopped mid-run
  time.sleep(3)  # its run got SIGTERM (parent death): it checkpoints, exits
  p = subprocess.run(_command(argv), cwd=ROOT, env=ENV, capture_output=True,
                     text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  rows = _rows(out)
  complete = [r for r in rows if r['state'] == 'COMPLETE']
  assert len(complete) == 3, rows
  params = {(r['learning_rate'], r['batch_size']) for r in complete}
  assert len(params) == 3  # no parameter set twice
  interrupted = [r for r in rows if r['trial'] == '0'][0]
  assert interrupted['state'] == 'FAIL', rows
  retry = interrupted['note'].rpartition(' ')[2]
  assert interrupted['note'] == f'interrupted; resumed as trial {retry}'
  resumed = [r for r in rows if r['trial'] == retry][0]
  assert resumed['state'] == 'COMPLETE'
  assert resumed['workdir'] == str(out / 'trial_0')
  assert (resumed['learning_rate'], resumed['batch_size']) == (
      interrupted['learning_rate'], interrupted['batch_size'])
  # Resumed, not restarted: the first train line is in metrics.jsonl once
  # (a fresh start would have written it again).
  lines = [json.loads(l) for l in
           (out / 'trial_0' / 'metrics.jsonl').read_text().splitlines()]
  steps = [l['step'] for l in lines if l['split'] == 'train']
  assert steps.count(10) == 1 and steps[-1] == 300, steps
  assert not (out / f'trial_{retry}').exists()
  result = json.loads((out / 'results.json').read_text())
  assert result['best']['workdir'] in {r['workdir'] for r in complete}
  assert f"workdir {result['best']['workdir']}" in p.stdout
  assert (out / 'sweep.png').stat().st_size > 10000


# ---------------------------------------------------------------------------
# PostgreSQL: several hosts, one study.


def _pg_bin() -> str | None:
  found = shutil.which('pg_ctl') or (
      '/usr/local/bin/pg_ctl' if os.path.exists('/usr/local/bin/pg_ctl')
      else None)
  if found:
    return os.path.dirname(os.path.realpath(found))
  dirs = sorted(glob.glob('/usr/lib/postgresql/*/bin'))
  return dirs[-1] if dirs else None


def _no_server(reason: str):
  if os.environ.get('CI') == 'true':
    pytest.fail(f'PostgreSQL could not be started under CI: {reason}')
  pytest.skip(f'no PostgreSQL server for this test: {reason} (CI installs '
              "Debian's postgresql package)")


@pytest.fixture
def postgres():
  """A throw-away PostgreSQL server on 127.0.0.1; its ``postgresql://`` URL."""
  bindir = _pg_bin()
  if bindir is None:
    _no_server('no pg_ctl on PATH, in /usr/local/bin or /usr/lib/postgresql')
  root = tempfile.mkdtemp(prefix='dlresearch-pg-')
  os.chmod(root, 0o755)
  prefix = []
  if os.geteuid() == 0:  # initdb refuses root: run it as postgres
    try:
      user = pwd.getpwnam('postgres')
    except KeyError:
      shutil.rmtree(root)
      _no_server('running as root and there is no postgres user')
    os.chown(root, user.pw_uid, user.pw_gid)
    prefix = ['runuser', '-u', 'postgres', '--']
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  data = os.path.join(root, 'data')
  def pg(*args, timeout=120):
    return subprocess.run([*prefix, *args], capture_output=True, text=True,
                          timeout=timeout)
  steps = [
      [f'{bindir}/initdb', '-D', data, '-U', 'postgres', '--auth=trust',
       '-E', 'UTF8'],
      [f'{bindir}/pg_ctl', '-D', data, '-l', f'{root}/server.log', '-w',
       '-t', '90', '-o', f'-p {port} -k {root} -c listen_addresses=127.0.0.1',
       'start'],
      [f'{bindir}/createdb', '-h', '127.0.0.1', '-p', str(port), '-U',
       'postgres', 'sweeps'],
  ]
  for step in steps:
    p = pg(*step)
    if p.returncode != 0:
      pg(f'{bindir}/pg_ctl', '-D', data, '-m', 'immediate', 'stop')
      shutil.rmtree(root, ignore_errors=True)
      _no_server(f'{os.path.basename(step[0])} failed: '
                 f'{(p.stderr or p.stdout).strip()[-300:]}')
  yield f'postgresql://postgres@127.0.0.1:{port}/sweeps'
  pg(f'{bindir}/pg_ctl', '-D', data, '-m', 'immediate', 'stop')
  shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_hosts_share_one_study_on_postgresql(tmp_path, postgres):
  import optuna  # pylint: disable=import-outside-toplevel
  hosts = {'a': '--workers=2', 'b': '--workers=1'}
  procs = {
      h: subprocess.Popen(
          _command(_sweep_argv(tmp_path / h, workers, f'--storage={postgres}',
                               '--study=shared', trials=4)),
          cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          text=True)
      for h, workers in hosts.items()}
  outs = {h: p.communicate(timeout=900) for h, p in procs.items()}
  for h, p in procs.items():
    assert p.returncode == 0, outs[h][1][-3000:]
  study = optuna.load_study(study_name='shared',
                            storage=sweep.engine_url(postgres))
  states = [t.state.name for t in study.get_trials()
            if not t.user_attrs.get('skipped')]
  assert states.count('COMPLETE') == 4, states
  assert 'RUNNING' not in states and 'WAITING' not in states
  complete = [t for t in study.get_trials() if t.state.name == 'COMPLETE']
  assert len({tuple(sorted(t.params.items())) for t in complete}) == 4
  used = {os.path.basename(os.path.dirname(t.user_attrs['workdir']))
          for t in complete}
  assert used == {'a', 'b'}, used  # both hosts ran trials
  for t in complete:
    assert os.path.isfile(os.path.join(t.user_attrs['workdir'],
                                       'metrics.jsonl'))
  for h in hosts:  # each host's table lists the whole study
    rows = _rows(tmp_path / h)
    assert sorted(int(r['trial']) for r in rows
                  if r['state'] == 'COMPLETE') == sorted(
                      t.number for t in complete)
