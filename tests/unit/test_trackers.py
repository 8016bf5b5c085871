"""callbacks/trackers.py without a server: what is sent when, and failure.

A fake sink records what the ``Tracker`` callback hands it; the loop is
driven by hand (metrics.jsonl lines and checkpoint directories written as
``train.run`` writes them), so the rule "only lines up to the latest
checkpoint on disk, the rest at close" is checked line by line.
"""

import json
import logging as std_logging
import os

import pytest

from dlresearch import config as config_lib
from dlresearch.callbacks import trackers
from dlresearch.callbacks.base import StepMetrics
from dlresearch.config import Config, ConfigError


class FakeSink:

  def __init__(self, fail_on=''):
    self.sent, self.files, self.status, self.opened = [], [], None, 0
    self.fail_on = fail_on

  def open(self, workdir, run_name=''):
    if self.fail_on == 'open':
      raise ConnectionError('connection refused')
    self.opened += 1

  def send(self, lines):
    if self.fail_on == 'send' and lines:
      raise ConnectionError('server went away')
    self.sent += [(l['step'], l['split']) for l in lines]
    return len(lines)

  def send_files(self, paths):
    self.files += paths

  def finish(self, status):
    self.status = status


def _write(workdir, *lines):
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    for step, split, value in lines:
      f.write(json.dumps({'step': step, 'split': split, 'loss': value}) + '\n')


def _checkpoint(workdir, step):
  os.makedirs(os.path.join(workdir, 'checkpoints', str(step)))


def _logged(step):
  return StepMetrics(step, {}, lambda m: m, logged={'loss': 1.0})


def test_only_lines_up_to_the_latest_checkpoint_are_sent_until_close(tmp_path):
  w = str(tmp_path)
  sink = FakeSink()
  t = trackers.Tracker('mlflow', '', w, sink=sink)
  t.on_train_start(None)
  _write(w, (5, 'train', 1.0), (10, 'train', 0.9))
  os.makedirs(os.path.join(w, 'checkpoints', '20.orbax-checkpoint-tmp-1'))
  t.on_step(15, None, _logged(15))
  assert sink.sent == []  # no checkpoint complete yet
  _checkpoint(w, 10)
  _write(w, (15, 'train', 0.8), (15, 'eval', 0.7))
  t.on_eval(15, None, 'eval', {}, False)
  assert sink.sent == [(5, 'train'), (10, 'train')]
  # A crash here, then the resumed run writes 15 again (other values).
  _write(w, (15, 'train', 0.5), (15, 'eval', 0.4), (20, 'train', 0.3),
         (20, 'eval', 0.2))
  _checkpoint(w, 20)
  t.on_end(20, None, {'step': 20})
  t.close()
  assert sink.sent == [(5, 'train'), (10, 'train'), (15, 'eval'),
                       (15, 'train'), (20, 'eval'), (20, 'train')]
  assert sink.status == 'FINISHED' and sink.opened == 1


def test_the_tail_keeps_the_last_line_per_step_and_split(tmp_path):
  w = str(tmp_path)
  _write(w, (5, 'train', 1.0), (10, 'train', 0.9), (10, 'train', 0.8))
  with open(os.path.join(w, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 15, "spl')  # a partial line (a crash mid-write)
  tail = trackers.MetricsTail(w)
  assert [l['loss'] for l in tail.take(100)] == [1.0, 0.8]
  with open(os.path.join(w, 'metrics.jsonl'), 'a') as f:
    f.write('it": "train", "loss": 0.7}\n')
  assert [l['step'] for l in tail.take(100)] == [15]


def test_metric_items_are_split_keyed_numbers_with_safe_names():
  line = {'step': 3, 'split': 'eval', 'time': 1.5, 'loss': 'nan',
          'dataset_split': 'test', 'group/sex=Female/accuracy': 0.5,
          'flag': True}
  items = trackers.metric_items(line)
  assert items.keys() == {'eval/time', 'eval/loss',
                          'eval/group/sex_Female/accuracy'}
  assert items['eval/time'] == 1.5 and items['eval/loss'] != items['eval/loss']


@pytest.mark.parametrize('fail_on', ['open', 'send'])
def test_a_failing_tracker_warns_once_and_training_goes_on(tmp_path, caplog,
                                                           fail_on):
  w = str(tmp_path)
  sink = FakeSink(fail_on)
  t = trackers.Tracker('mlflow', 'http://127.0.0.1:9', w, sink=sink)
  caplog.set_level(std_logging.WARNING)
  t.on_train_start(None)
  for step in (10, 20, 30):
    _write(w, (step, 'train', 1.0))
    _checkpoint(w, step)
    assert not t.on_step(step, None, _logged(step))
  t.on_end(30, None, {'step': 30})
  t.close()
  warnings = [r.getMessage() for r in caplog.records
              if 'tracker mlflow failed' in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert 'ConnectionError' in warnings[0]
  assert f'--sync_to=mlflow:http://127.0.0.1:9 {w}' in warnings[0]
  assert sink.status is None  # nothing more was tried


def test_a_missing_tracker_package_says_how_to_install_it():
  try:
    import not_a_tracker_package  # noqa: F401  pylint: disable=g-import-not-at-top,import-error,unused-import
  except ImportError as e:
    cause = trackers._cause(e)  # pylint: disable=protected-access
  assert cause.startswith("ModuleNotFoundError: No module named 'not_a_tracker")
  assert cause.endswith("pip install -e '.[track]'")


def test_flat_config_is_by_section(tmp_path):
  record = {'config': config_lib.to_json(Config(learning_rate=0.5)),
            'git_commit': 'abc'}
  (tmp_path / 'config.json').write_text(json.dumps(record))
  flat = trackers.flat_config(str(tmp_path))
  assert flat['optimisation.learning_rate'] == 0.5
  assert flat['tracking.tracker'] == '' and flat['git_commit'] == 'abc'


def test_tracker_flags_are_checked():
  with pytest.raises(ConfigError, match="--tracker: unknown tracker 'tb'"):
    Config(tracker='mlflow,tb').validate()
  with pytest.raises(ConfigError, match='--tracker_uri: needs --tracker'):
    Config(tracker_uri='http://x').validate()
  Config(tracker='mlflow, wandb', tracker_uri='http://x').validate()
  assert [type(t).__name__ for t in trackers.from_config(
      Config(tracker='mlflow,wandb'), '/tmp/w')] == ['Tracker', 'Tracker']


def test_sync_to_bad_input_is_one_line(tmp_path, capsys):
  from dlresearch.tools import entry, runs  # pylint: disable=import-outside-toplevel
  assert entry.run(runs, ['--sync_to=tensorboard:x', str(tmp_path)]) == 2
  assert capsys.readouterr().err == (
      "error: --sync_to: expected mlflow:URI (got 'tensorboard:x')\n")
  assert entry.run(runs, ['--sync_to=mlflow:sqlite:///x.db',
                          str(tmp_path)]) == 2
  assert capsys.readouterr().err == (
      f'error: {tmp_path}: no metrics.jsonl to send\n')
  assert not os.listdir(tmp_path)
