"""Faults done to real processes: damaged checkpoints, Ctrl-C, two writers,
a full disk, and every bad start-up input.

Each case runs ``experiments.cnn_imagenet`` as its own process, forked from
one warm interpreter by ``tests/_fork_cli.py`` (the same code path as
``python -m experiments.cnn_imagenet ARGS``, minus 3-4 s of imports per
case); independent cases run two at a time (JOBS), and the two writers
overlap. One uninterrupted 30-step run (checkpoints 10, 20, 30) is the
reference; the damage cases work on copies of it.
"""

import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess

import numpy as np
import pytest

from dlresearch import checkpoint, cli, config as config_lib, train
from dlresearch import workdir as workdir_lib
from dlresearch.data import datasets
import _forked  # pylint: disable=g-bad-import-order

MODULE = 'experiments.cnn_imagenet'
STEPS = 30
TRAIN = ['--preset=quickstart', '--tiny', f'--num_steps={STEPS}',
         '--checkpoint_every=10', '--log_every=5', '--eval_every=0']
JOBS = min(2, os.cpu_count() or 1)  # cases that run at once (own processes)


def run_cases(cases: list[dict], tmp) -> list[dict]:
  """Runs each case as a separate process; results in order."""
  return _forked.run([{'module': MODULE, **c} for c in cases], tmp, JOBS)


def error_lines(result: dict) -> list[str]:
  """stderr without absl's log lines (I/W prefixes): what a user reads."""
  return [l for l in result['stderr'].splitlines()
          if l.strip() and not l.startswith(('I1', 'W1', 'I0', 'W0'))]


def assert_one_line(result: dict, code: int | None = None) -> str:
  lines = error_lines(result)
  assert len(lines) == 1 and lines[0].startswith('error: '), result['stderr'][-3000:]
  assert 'Traceback' not in result['stderr']
  assert result['code'] != 0 if code is None else result['code'] == code
  return lines[0]


def final_line(result: dict) -> str:
  return [l for l in result['stdout'].splitlines()
          if l.startswith('final eval at step')][-1]


def raw_lines(workdir) -> list[str]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return f.read().splitlines(keepends=True)


# What a run computes (wall-clock keys such as a timestamp differ by design).
METRIC_KEYS = ('step', 'split', 'loss', 'accuracy', 'top5_accuracy',
               'grad_norm', 'learning_rate')


def metric_lines(lines) -> list[tuple]:
  return [tuple((k, json.loads(l).get(k)) for k in METRIC_KEYS)
          for l in lines]


def params(workdir, step=None):
  path = str(workdir) if step is None else os.path.join(
      workdir, 'checkpoints', str(step))
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree.leaves(
      checkpoint.load_variables(path)['params'])]


def steps_on_disk(workdir) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def copy_tree(src, dest):
  shutil.copytree(src, dest)
  return dest


# -- damage ------------------------------------------------------------------


def _array_file(step_dir) -> str:
  d = os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd')
  return max((os.path.join(d, n) for n in os.listdir(d)), key=os.path.getsize)


def _truncate(path, keep=0.5):
  with open(path, 'r+b') as f:
    f.truncate(int(os.path.getsize(path) * keep))


def _overwrite(path, offset, data):
  with open(path, 'r+b') as f:
    f.seek(offset)
    f.write(data)


def _flip_bit(path):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2)
    byte = f.read(1)[0]
    f.seek(size // 2)
    f.write(bytes([byte ^ 0x10]))


DAMAGE = {
    'truncated_array_file': lambda d: _truncate(_array_file(d)),
    'empty_ocdbt_manifest': lambda d: _truncate(
        os.path.join(d, 'state', 'manifest.ocdbt'), 0),
    'truncated_state_metadata': lambda d: _truncate(
        os.path.join(d, 'state', '_METADATA')),
    'truncated_data_iterator_json': lambda d: _truncate(
        os.path.join(d, 'data', 'metadata')),
    'deleted_state_item': lambda d: shutil.rmtree(os.path.join(d, 'state')),
    'random_bytes_array_file': lambda d: _overwrite(
        _array_file(d), 0, random.Random(0).randbytes(
            os.path.getsize(_array_file(d)))),
    'one_flipped_bit': lambda d: _flip_bit(_array_file(d)),
    '64_garbage_bytes': lambda d: _overwrite(
        _array_file(d), os.path.getsize(_array_file(d)) // 3,
        random.Random(1).randbytes(64)),
}


def _mount_tmpfs(path, size: str, readonly: bool = False) -> bool:
  path.mkdir()
  try:
    subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs',
                    str(path)], check=True, capture_output=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return False
  if readonly:
    subprocess.run(['mount', '-o', 'remount,ro', str(path)], check=True,
                   capture_output=True, timeout=10)
  return True


def _umount(path):
  subprocess.run(['umount', '-l', str(path)], check=False, capture_output=True)


def start_up_cases(tmp, data_dir) -> dict:
  """name -> (argv, what the one line must say); none may write anything."""
  data = f'--data_dir={data_dir}'
  base = ['--preset=quickstart', '--tiny', data]
  clean = tmp / 'clean'  # every workdir below is under it; stays empty
  clean.mkdir()
  a_file = tmp / 'a_file'
  a_file.write_text('not a directory')
  return {
      'workdir is a file': ([*base, f'--workdir={a_file}'], 'is a file'),
      'read-only workdir': ([*base, f'--workdir={tmp}/ro/w'], 'not writable'),
      'Fashion-MNIST files missing, no --manual_dir': (
          ['--preset=fashion_mnist', '--tiny', f'--data_dir={clean}/fm_tfds',
           f'--workdir={clean}/fm'], '--manual_dir'),
      'missing --init_from': ([*base, f'--workdir={clean}/a',
                               '--init_from=/nonexistent/run'],
                              '--init_from: /nonexistent/run does not exist'),
      'batch larger than the dataset': (
          [*base, f'--workdir={clean}/b', '--batch_size=2048'],
          'larger than the train split'),
      '--eval_only on a missing workdir': (
          [*base, f'--workdir={clean}/c', '--eval_only'], '--eval_only'),
      '--mesh=data:0': ([*base, f'--workdir={clean}/d', '--mesh=data:0'],
                        '--mesh'),
      '--mesh=data:-2': ([*base, f'--workdir={clean}/e', '--mesh=data:-2'],
                         '--mesh'),
      '--num_epochs=inf': (['--preset=quickstart', data, f'--workdir={clean}/f',
                            '--num_epochs=inf'], '--num_epochs'),
      '--seed=-1': ([*base, f'--workdir={clean}/g', '--seed=-1'], '--seed'),
      'malformed --coordinator_address': (
          [*base, f'--workdir={clean}/h', '--coordinator_address=nohost',
           '--num_processes=2', '--process_id=0'], '--coordinator_address'),
      '--process_id out of range': (
          [*base, f'--workdir={clean}/i', '--num_processes=2',
           '--process_id=5'], '--process_id'),
      '--learning_rate=inf': ([*base, f'--workdir={clean}/j',
                               '--learning_rate=inf'], '--learning_rate'),
      '--learning_rate=1e39 (inf in float32)': (
          [*base, f'--workdir={clean}/k', '--learning_rate=1e39'],
          '--learning_rate'),
  }


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Stage 1: the reference run and every start-up case (one warm parent)."""
  tmp = tmp_path_factory.mktemp('faults')
  data_dir = str(tmp / 'tfds')
  ref = tmp / 'reference'
  ro = tmp / 'ro'
  ro_mounted = _mount_tmpfs(ro, '64k', readonly=True)
  if not ro_mounted:
    os.chmod(ro, 0o555)  # read-only for anyone but root
  startup = start_up_cases(tmp, data_dir)
  # The cases run two at a time and several read digits from data_dir:
  # prepare it here first, so that no two processes prepare it at once.
  datasets.load_in_memory('digits', 'test', data_dir, None)
  try:
    results = run_cases(
        [{'argv': [*TRAIN, f'--data_dir={data_dir}', f'--workdir={ref}']}]
        + [{'argv': argv} for argv, _ in startup.values()], str(tmp))
  finally:
    if ro_mounted:
      _umount(ro)
  assert results[0]['code'] == 0, results[0]['stderr'][-3000:]
  return {'tmp': tmp, 'data_dir': data_dir, 'ref': ref,
          'final': final_line(results[0]), 'lines': raw_lines(ref),
          'params': params(ref), 'ro_mounted': ro_mounted,
          'startup': [(name, needle, result) for (name, (_, needle)), result
                      in zip(startup.items(), results[1:])]}


def _stage2_cases(env) -> tuple[dict, dict]:
  """name -> case for every fault that starts from the reference run."""
  tmp, data = env['tmp'], f'--data_dir={env["data_dir"]}'
  cases, dirs = {}, {}

  def add(name, argv, **extra):
    cases[name] = {'argv': [*argv, data, f'--workdir={dirs[name]}'], **extra}

  for name, damage in DAMAGE.items():  # the run had reached step 30
    dirs[name] = copy_tree(env['ref'], tmp / name)
    damage(os.path.join(dirs[name], 'checkpoints', '30'))
    add(name, TRAIN)
  dirs['eval_only'] = copy_tree(env['ref'], tmp / 'eval_only')
  _flip_bit(_array_file(dirs['eval_only'] / 'checkpoints' / '30'))
  add('eval_only', ['--eval_only'])
  dirs['all_bad'] = copy_tree(env['ref'], tmp / 'all_bad')
  for step in ('10', '20', '30'):
    _flip_bit(_array_file(dirs['all_bad'] / 'checkpoints' / step))
  add('all_bad', [])
  dirs['shorter'] = copy_tree(env['ref'], tmp / 'shorter')
  add('shorter', ['--num_steps=5'])
  dirs['sigint'] = dirs['resume_after_sigint'] = tmp / 'sigint'
  add('sigint', TRAIN, signal_at=[15, 'SIGINT', 1])
  add('resume_after_sigint', TRAIN, after=[list(cases).index('sigint')])
  dirs['sigint_twice'] = tmp / 'sigint_twice'
  add('sigint_twice', TRAIN, signal_at=[15, 'SIGINT', 2])
  # Adam's first step moves every weight by ~lr; with decoupled decay on
  # top, lr * (1 + wd * w) passes float32's maximum: inf params after a
  # step whose loss and gradients were finite.
  dirs['diverge'] = tmp / 'diverge'
  add('diverge', [*TRAIN, '--optimizer=adamw', '--learning_rate=3.4e38',
                  '--weight_decay=1', '--checkpoint_every=1', '--log_every=1'])
  mount = tmp / 'small_fs'
  if _mount_tmpfs(mount, '900k'):  # two checkpoints of ~340 KiB fit, not 3
    dirs['full_disk'] = mount / 'w'
    add('full_disk', TRAIN)
  else:  # EFBIG past 200 KiB in one file: the step-30 array file fails
    dirs['full_disk'] = copy_tree(env['ref'], tmp / 'fsize')
    shutil.rmtree(dirs['full_disk'] / 'checkpoints' / '30')
    add('full_disk', TRAIN, fsize_limit=200 * 1024)
  return cases, dirs


@pytest.fixture(scope='module')
def stage2(env):
  """Stage 2: every fault that starts from (a copy of) the reference run."""
  cases, dirs = _stage2_cases(env)
  snapshot = {'all_bad': sorted(os.walk(dirs['all_bad'])),
              'shorter': raw_lines(dirs['shorter'])}
  try:
    results = run_cases(list(cases.values()), str(env['tmp']))
    full = dirs['full_disk']  # read it before the tmpfs goes away
    left = steps_on_disk(full)
    snapshot['full_disk'] = {
        'left': left, 'lines': raw_lines(full),
        'verified': [checkpoint.verify_step_dir(
            str(full / 'checkpoints' / s), int(s)) for s in left
                     if s.isdigit()]}
  finally:
    _umount(env['tmp'] / 'small_fs')
  return {'results': dict(zip(cases, results)), 'dirs': dirs,
          'snapshot': snapshot}


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_latest_checkpoint_resumes_bit_identically(env, stage2,
                                                           damage):
  result, workdir = stage2['results'][damage], stage2['dirs'][damage]
  assert result['code'] == 0, result['stderr'][-3000:]
  warnings = [l for l in result['stderr'].splitlines()
              if 'checkpoint step 30 is unreadable' in l]
  assert len(warnings) == 1, result['stderr'][-3000:]
  assert 'moved to checkpoints/corrupt-30' in warnings[0], warnings[0]
  assert 'resuming from the previous one (step 20)' in warnings[0]
  assert 'Traceback' not in result['stderr']
  assert steps_on_disk(workdir) == ['10', '20', '30', 'corrupt-30']
  # Bit-identical to the uninterrupted run: the lines the resumed run
  # appended (steps 25, 30, the final eval), the params, the final line.
  again = [l for l in env['lines'] if json.loads(l)['step'] > 20]
  assert metric_lines(raw_lines(workdir)) == metric_lines(env['lines'] + again)
  for a, b in zip(params(workdir), env['params']):
    np.testing.assert_array_equal(a, b)
  assert final_line(result) == env['final']


def test_eval_only_verifies_and_moves_nothing(stage2):
  result = stage2['results']['eval_only']
  assert result['code'] == 0, result['stderr'][-3000:]
  assert 'checkpoint step 30 is unreadable' in result['stderr']
  assert 'left in place' in result['stderr']
  assert final_line(result).startswith('final eval at step 20: ')
  assert steps_on_disk(stage2['dirs']['eval_only']) == ['10', '20', '30']


def test_no_good_checkpoint_is_one_line_and_nothing_moves(stage2):
  line = assert_one_line(stage2['results']['all_bad'])
  assert 'no readable checkpoint' in line and 'step 10' in line
  assert sorted(os.walk(stage2['dirs']['all_bad'])) == stage2['snapshot'][
      'all_bad']


def test_num_steps_below_the_latest_checkpoint_says_so(stage2):
  result = stage2['results']['shorter']
  line = assert_one_line(result)
  assert '--num_steps' in line and 'already at step 30' in line
  assert 'final eval' not in result['stdout']
  assert raw_lines(stage2['dirs']['shorter']) == stage2['snapshot']['shorter']


def test_ctrl_c_checkpoints_then_resumes_bit_identically(env, stage2):
  stopped = stage2['results']['sigint']
  resumed = stage2['results']['resume_after_sigint']
  assert stopped['code'] == 130, stopped['stderr'][-3000:]
  assert 'Traceback' not in stopped['stderr']
  assert 'KeyboardInterrupt' not in stopped['stderr']
  assert 'stopped by SIGINT at step 15' in stopped['stdout']
  assert resumed['code'] == 0, resumed['stderr'][-3000:]
  assert final_line(resumed) == env['final']
  for a, b in zip(params(stage2['dirs']['sigint']), env['params']):
    np.testing.assert_array_equal(a, b)
  assert sorted(set(metric_lines(raw_lines(stage2['dirs']['sigint'])))) == (
      sorted(set(metric_lines(env['lines']))))


def test_second_ctrl_c_stops_at_once_keeping_checkpoints(stage2):
  line = assert_one_line(stage2['results']['sigint_twice'], 130)
  assert 'second Ctrl-C' in line
  workdir = stage2['dirs']['sigint_twice']
  assert steps_on_disk(workdir) == ['10']
  assert checkpoint.verify_step_dir(str(workdir / 'checkpoints' / '10'), 10)
  assert all(l.endswith('\n') for l in raw_lines(workdir))


def test_diverging_update_is_never_checkpointed(stage2):
  line = assert_one_line(stage2['results']['diverge'], 3)
  assert 'non-finite values in params' in line
  assert 'after the update of step 1' in line
  assert steps_on_disk(stage2['dirs']['diverge']) == []
  # The advice is a command that is accepted: half the learning rate, in a
  # new workdir (this one keeps its recorded learning rate).
  assert line.endswith(' (or set --grad_clip_norm)'), line
  command = shlex.split(re.search(
      r'To retry with half the learning rate[^:]*: (.*) \(or set', line)[1])
  assert command[:3] == ['python', '-m', MODULE]
  assert '--learning_rate=1.7e+38' in command
  assert f'--workdir={stage2["dirs"]["diverge"]}_lr1.7e+38' in command
  # Accepted and trained (at 1.7e38 it diverges again: exit 3, not a
  # refused flag or config).
  retry = run_cases([{'argv': command[3:]}], stage2['dirs']['diverge'].parent)[0]
  assert retry['code'] == 3 and 'the run diverged' in retry['stderr'], (
      retry['stderr'][-3000:])


def test_divergence_in_a_trained_workdir_advises_a_new_one(tmp_path):
  workdir = tmp_path / 'w'
  os.makedirs(workdir / 'checkpoints' / '20')
  (workdir / 'config.json').write_text('{}')
  cfg = config_lib.Config(learning_rate=0.1)
  advice = cli.retry_advice('cnn_imagenet', [
      '--preset=quickstart', '--workdir', str(workdir), '--learning_rate=0.1',
      '--init_from=x'], str(workdir), cfg)
  command = shlex.split(re.search(r'rate[^:]*: (.*) \(or set', advice)[1])
  assert command == [
      'python', '-m', 'experiments.cnn_imagenet', '--preset=quickstart',
      f'--workdir={workdir}_lr0.05', '--learning_rate=0.05',
      f'--init_from={workdir}/checkpoints/20'], advice
  assert 'starting from step 20' in advice


def test_full_disk_is_one_line_and_keeps_earlier_checkpoints(stage2):
  result, workdir = stage2['results']['full_disk'], stage2['dirs']['full_disk']
  if workdir.parent.name == 'small_fs':  # a real full disk: checked up front
    line = assert_one_line(result)
    assert 'no space left' in line, line
  else:  # a write error mid-write: orbax logs it; the last line is ours
    lines = [l for l in error_lines(result) if l.startswith('error: ')]
    assert len(lines) == 1 and result['code'] != 0
    line = lines[0]
    assert result['stderr'].rstrip().endswith(line)
  assert 'could not write checkpoint step 30' in line, line
  assert 'earlier checkpoints are intact' in line
  seen = stage2['snapshot']['full_disk']
  assert not any('tmp' in s for s in seen['left']), seen['left']
  assert seen['left'] == ['10', '20'], seen['left']
  assert seen['verified'] == [True, True]  # whole, and verified
  lines = seen['lines']
  assert lines and all(l.endswith('\n') and json.loads(l) for l in lines)


def test_bad_start_up_inputs_are_one_line_and_write_nothing(env):
  for name, needle, result in env['startup']:
    line = assert_one_line(result)
    assert needle in line, (name, line)
  tmp = env['tmp']
  assert os.listdir(tmp / 'clean') == []
  assert (tmp / 'a_file').read_text() == 'not a directory'
  assert os.listdir(tmp / 'ro') == []


def test_second_writer_refuses_naming_the_holder(env):
  workdir = env['tmp'] / 'busy'
  metrics, config = workdir / 'metrics.jsonl', workdir / 'config.json'
  # The holder trains (for ever) until the second run has ended, then is
  # sent SIGTERM; the second starts once the holder has written a line.
  holder, second = run_cases([
      {'argv': ['--preset=quickstart', '--tiny',
                f'--data_dir={env["data_dir"]}', f'--workdir={workdir}',
                '--num_steps=1000000', '--log_every=5',
                '--checkpoint_every=100000'], 'stop_signal': 'SIGTERM'},
      {'argv': ['--preset=quickstart', '--tiny',
                f'--data_dir={env["data_dir"]}', f'--workdir={workdir}',
                '--seed=1'], 'start_when_file': str(metrics),
       'snapshot': [str(config)]}], str(env['tmp']))
  line = assert_one_line(second)
  assert f'in use by pid {holder["pid"]} on host {socket.gethostname()}' in line
  assert holder['code'] == 0, holder['stderr'][-2000:]
  assert 'stopped by SIGTERM' in holder['stdout'], holder['stdout'][-2000:]
  assert _forked.snapshot(config) == second['before'][
      str(config)]  # seed 0's config, untouched by the second
  assert config_lib.flatten(json.loads(config.read_text())['config'])['seed'] == 0
  assert all(json.loads(l) for l in raw_lines(workdir))


def test_failed_metrics_write_leaves_no_partial_line(tmp_path, monkeypatch):
  """A write error at the file layer (half the bytes, then ENOSPC): the
  line is taken back, one-line MetricsWriteError, earlier lines readable."""
  import errno  # pylint: disable=g-import-not-at-top
  from dlresearch import logging as log_lib  # pylint: disable=g-import-not-at-top
  writer = log_lib.JsonlWriter(str(tmp_path / 'metrics.jsonl'))
  writer.write(1, 'train', {'loss': 1.5})
  real_write = os.write

  def half_then_full(fd, data):
    real_write(fd, bytes(data[:len(data) // 2]))
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(log_lib.os, 'write', half_then_full)
  with pytest.raises(log_lib.MetricsWriteError,
                     match='could not write the train line of step 2 .* No '
                     'space left on device; its earlier lines are intact'):
    writer.write(2, 'train', {'loss': 1.25})
  monkeypatch.undo()
  writer.close()
  assert raw_lines(tmp_path) == ['{"step": 1, "split": "train", "loss": 1.5}\n']
  # A reader skips a partial last line left by a crash (no newline yet).
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 3, "spl')
  assert [l['step'] for l in log_lib.read_metrics(str(tmp_path))] == [1]
  log_lib.JsonlWriter(str(tmp_path / 'metrics.jsonl')).close()  # drops it
  assert raw_lines(tmp_path)[-1].endswith('\n')


def test_eval_only_beside_a_training_run_writes_nothing_into_it(env, tmp_path):
  """``--eval_only`` on a workdir another process holds (a run training in
  it) evaluates its latest checkpoint and prints the result, but writes
  nothing there: no eval line in the trainer's metrics.jsonl, no file."""
  workdir = copy_tree(env['ref'], tmp_path / 'held')
  before = _forked.snapshot(workdir)
  holder = workdir_lib.WorkdirLock(workdir).acquire()  # the "training run"
  try:
    result = run_cases([{'argv': [*TRAIN, f'--data_dir={env["data_dir"]}',
                                  f'--workdir={workdir}', '--eval_only']}],
                       tmp_path)[0]
  finally:
    holder.release()
  assert result['code'] == 0, result['stderr'][-3000:]
  assert final_line(result).startswith('final eval at step 30: ')
  assert f'in use by pid {os.getpid()}' in result['stderr']
  assert 'evaluating without writing to it' in result['stderr']
  after = _forked.snapshot(workdir)
  after.pop('.lock', None), before.pop('.lock', None)
  assert after == before
