"""End-to-end tests of the training loop and the cnn_imagenet entrypoint."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlresearch import checkpoint, config as config_lib, train
from dlresearch import logging as log_lib
from experiments.cnn_imagenet import PRESETS

import _forked  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny_quickstart(data_dir, **overrides):
  preset = PRESETS['quickstart']
  return config_lib.override(preset.config,
                             {**preset.tiny, 'data_dir': data_dir, **overrides})


def test_quickstart_tiny_trains_and_writes_everything(tmp_path, data_dir):
  cfg = tiny_quickstart(data_dir, num_steps=40, log_every=5)
  result = train.run(cfg, str(tmp_path))
  train_lines = log_lib.read_metrics(str(tmp_path), 'train')
  eval_lines = log_lib.read_metrics(str(tmp_path), 'eval')
  assert [l['step'] for l in train_lines] == list(range(5, 41, 5))
  assert train_lines[-1]['loss'] < 0.8 * train_lines[0]['loss']  # it learns
  assert eval_lines[-1]['step'] == 40
  assert 0.5 < eval_lines[-1]['accuracy'] <= 1.0
  assert 0.0 <= eval_lines[-1]['top5_accuracy'] <= 1.0
  assert result['accuracy'] == eval_lines[-1]['accuracy']
  record = json.load(open(tmp_path / 'config.json'))
  assert config_lib.flatten(record['config'])['num_steps'] == 40
  assert record['device_count'] == 8 and record['process_count'] == 1
  assert 'jax' in record['versions'] and 'git_commit' in record
  assert any(f.startswith('events.out.tfevents')
             for f in os.listdir(tmp_path / 'tensorboard'))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'))
  assert ckpt.latest_step() == 40
  ckpt.close()
  # The metrics file is line-flushed JSON with full float precision.
  raw = open(tmp_path / 'metrics.jsonl').read().splitlines()
  assert all(json.loads(line)['split'] in ('train', 'eval') for line in raw)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, data_dir):
  driver = os.path.join(ROOT, 'tests', '_train_driver.py')

  def drive(workdir, kill_at):
    return subprocess.run([sys.executable, driver, str(workdir), data_dir, '40',
                           str(kill_at)], capture_output=True, text=True,
                          timeout=240)

  straight = drive(tmp_path / 'straight', 0)
  assert straight.returncode == 0, straight.stderr[-2000:]
  killed = drive(tmp_path / 'resumed', 25)
  assert killed.returncode == -signal.SIGKILL
  steps = checkpoint.Checkpointer(str(tmp_path / 'resumed' / 'checkpoints'))
  assert steps.latest_step() in (10, 20)  # died after step 25, before 30
  steps.close()
  resumed = drive(tmp_path / 'resumed', 0)
  assert resumed.returncode == 0, resumed.stderr[-2000:]

  a = checkpoint.load_variables(str(tmp_path / 'straight'))
  b = checkpoint.load_variables(str(tmp_path / 'resumed'))
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)
  untimed = lambda lines: [{k: v for k, v in l.items() if k != 'time'}
                           for l in lines]  # wall time differs, nothing else
  ma = untimed(log_lib.read_metrics(str(tmp_path / 'straight')))
  mb = untimed(log_lib.read_metrics(str(tmp_path / 'resumed')))
  assert ma == mb  # every train and eval line, after the resume too


def _leaves(tree):
  import jax
  return [np.asarray(l) for l in jax.tree.leaves(tree)]


@pytest.mark.parametrize('sig,code', [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_checkpoints_at_next_step(tmp_path, data_dir, sig,
                                                    code):
  workdir = tmp_path / 'w'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.cnn_imagenet', '--preset=quickstart',
       '--tiny', f'--data_dir={data_dir}', f'--workdir={workdir}',
       '--num_steps=1000000', '--log_every=10', '--checkpoint_every=100000'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while not (workdir / 'metrics.jsonl').exists() or not open(
        workdir / 'metrics.jsonl').read().strip():
      assert time.time() < deadline and proc.poll() is None, 'never started'
      time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  name = signal.Signals(sig).name
  assert proc.returncode == code, err[-2000:]
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err
  ckpt = checkpoint.Checkpointer(str(workdir / 'checkpoints'))
  step = ckpt.latest_step()
  ckpt.close()
  assert step is not None and 10 <= step < 1000000
  assert f'stopped by {name} at step {step}' in out


BAD_INPUTS = [
    (['--bogus_flag=1'], "Unknown command line flag 'bogus_flag'"),
    (['--num_steps=abc'], '--num_steps: expected int'),
    (['--batch_size=-8'], '--batch_size: must be > 0'),
    (['--learning_rate=0'], '--learning_rate: must be > 0'),
    (['--batch_size=12'], '--batch_size: 12 does not divide evenly over 8 devices'),
    (['--dataset=imagenet2012'], 'imagenet2012'),
]


@pytest.fixture(scope='module')
def cli_runs(tmp_path_factory, data_dir):
  """The NaN run and every bad input, each its own `python -m
  experiments.cnn_imagenet` process (forked from one warm parent)."""
  tmp = tmp_path_factory.mktemp('cli')
  common = ['--preset=quickstart', '--tiny', f'--data_dir={data_dir}']
  nan = tmp / 'nan'
  cases = [{'module': 'experiments.cnn_imagenet', 'argv': [
      *common, f'--workdir={nan}', '--optimizer=sgd', '--learning_rate=1e30',
      '--num_steps=20', '--log_every=1', '--checkpoint_every=1']}]
  workdirs = []
  for i, (args, _) in enumerate(BAD_INPUTS):
    workdir = tmp / f'bad{i}'
    workdir.mkdir()
    (workdir / 'keep.txt').write_text('precious')
    workdirs.append(workdir)
    cases.append({'module': 'experiments.cnn_imagenet',
                  'argv': [*common, f'--workdir={workdir}', *args]})
  results = _forked.run(cases, tmp)
  return {'nan': (nan, results[0]),
          'bad': list(zip(workdirs, results[1:]))}


def test_nan_loss_stops_with_step_and_saves_nothing_non_finite(cli_runs):
  tmp_path, r = cli_runs['nan']
  assert r['code'] == 3
  assert 'Traceback' not in r['stderr']
  line = [l for l in r['stderr'].splitlines() if l.startswith('error:')]
  assert len(line) == 1 and 'non-finite loss' in line[0] and 'at step ' in line[0]
  bad_step = int(line[0].split('at step ')[1].split(':')[0])
  ckpt_dir = tmp_path / 'checkpoints'
  saved = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) if ckpt_dir.exists() else []
  assert all(s < bad_step for s in saved)
  for s in saved:
    for leaf in _leaves(checkpoint.load_variables(str(ckpt_dir / str(s)))):
      assert np.isfinite(leaf).all()


@pytest.mark.parametrize('case', range(len(BAD_INPUTS)),
                         ids=[' '.join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_clear_error(cli_runs, case):
  needle = BAD_INPUTS[case][1]
  workdir, r = cli_runs['bad'][case]
  assert r['code'] != 0
  assert needle in r['stderr'], r['stderr'][-3000:]
  assert 'Traceback' not in r['stderr']
  assert (workdir / 'keep.txt').read_text() == 'precious'
  assert not (workdir / 'metrics.jsonl').exists()


def test_eval_only_and_init_from(tmp_path, data_dir):
  first = tmp_path / 'first'
  trained = train.run(tiny_quickstart(data_dir, num_steps=30), str(first))
  again = train.run(tiny_quickstart(data_dir, eval_only=True), str(first))
  assert again['step'] == 30 and again['accuracy'] == trained['accuracy']
  with pytest.raises(config_lib.ConfigError, match='--eval_only: no checkpoint'):
    train.run(tiny_quickstart(data_dir, eval_only=True), str(tmp_path / 'empty'))
  # Fine-tune with a new head size: the conv trunk is loaded, the head is
  # fresh because --new_head names it (without it: an error naming both shapes).
  cfg = tiny_quickstart(data_dir, num_steps=1, init_from=str(first),
                        learning_rate=1e-9, model_kwargs={'num_classes': 12})
  with pytest.raises(config_lib.ConfigError,
                     match=r'params/head/bias has shape \(10,\) in the source but \(12,\)'):
    train.run(cfg, str(tmp_path / 'refused'))
  assert not (tmp_path / 'refused').exists()
  train.run(cfg.replace(new_head='^head/'), str(tmp_path / 'second'))
  a = checkpoint.load_variables(str(first))['params']
  b = checkpoint.load_variables(str(tmp_path / 'second'))['params']
  np.testing.assert_allclose(b['conv1']['kernel'], a['conv1']['kernel'], atol=1e-6)
  assert b['head']['kernel'].shape[-1] == 12
  report = json.loads((tmp_path / 'second' / 'init_report.json').read_text())
  assert report['new'] == ['params/head/bias', 'params/head/kernel']
  assert report['skipped'] == ['params/head/bias', 'params/head/kernel']
  assert 'params/conv1/kernel' in report['loaded']


def test_resuming_a_workdir_of_another_experiment_is_refused(tmp_path, data_dir):
  train.run(tiny_quickstart(data_dir, num_steps=2), str(tmp_path))
  before = open(tmp_path / 'config.json').read()
  with pytest.raises(config_lib.ConfigError, match='--model: .* trained with --model=.lenet5.'):
    train.run(tiny_quickstart(data_dir, num_steps=4, model='mlp'), str(tmp_path))
  assert open(tmp_path / 'config.json').read() == before  # nothing overwritten
  # Changing run-length or logging flags is fine: it resumes.
  assert train.run(tiny_quickstart(data_dir, num_steps=4, log_every=1),
                   str(tmp_path))['step'] == 4


def test_restore_gives_the_trained_models_logits(tmp_path, data_dir):
  import dlresearch
  from dlresearch.data import datasets
  from dlresearch.models import registry
  result = dlresearch.train.run(tiny_quickstart(data_dir, num_steps=20),
                                str(tmp_path))
  run = dlresearch.restore(str(tmp_path))
  assert run.step == 20 and run.config.model == 'lenet5'
  assert isinstance(run.config, dlresearch.Config)
  test = datasets.load_in_memory('digits', 'test', data_dir, None)
  images = test['image'].astype(np.float32) / 255.0  # the preset's 'scale'
  logits = run.predict(images)
  assert logits.shape == (len(images), 10)
  # The final eval's accuracy, and an independent apply of the checkpoint.
  accuracy = float(np.mean(logits.argmax(-1) == test['label']))
  assert accuracy == pytest.approx(result['accuracy'], abs=1e-6)
  saved = checkpoint.load_variables(str(tmp_path))
  model = registry.build('lenet5', num_classes=10)
  expected = model.apply({'params': saved['params'], **saved['model_state']},
                         images[:4], train=False)
  np.testing.assert_allclose(logits[:4], expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(FileNotFoundError, match='no checkpoint 7'):
    dlresearch.restore(str(tmp_path), step=7)
