"""dlresearch.logging: the TensorBoard writer (sanitised tags, no per-key INFO
lines), the JSON-lines writer, the console progress and progress bar, the
train-line window mean, and the filter that keeps library log lines below
ERROR off the console."""

import glob
import io
import json
import logging as std_logging
import logging
import os
import struct

import jax.numpy as jnp
import pytest
from tensorboardX.proto import event_pb2

from dlresearch import logging as dl_logging
from dlresearch import logging as log_lib
from dlresearch import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tags(logdir):
  """(tag, value, step) of every scalar in the event files (TFRecord frames)."""
  out = []
  for path in glob.glob(f'{logdir}/events.out.tfevents.*'):
    data = open(path, 'rb').read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      out += [(v.tag, v.simple_value, event.step) for v in event.summary.value]
  return out


def test_group_keys_become_legal_tags_without_info_lines(tmp_path, caplog):
  caplog.set_level(std_logging.DEBUG)
  w = dl_logging.TensorBoardWriter(str(tmp_path))
  w.write(3, 'eval', {'group/sex=Female/accuracy': 0.75, 'loss': 0.5,
                      'fairness/sex/max_gap': 0.125, 'note': 'not a number'})
  w.close()
  assert sorted(_tags(tmp_path)) == [
      ('eval/fairness/sex/max_gap', 0.125, 3),
      ('eval/group/sex_Female/accuracy', 0.75, 3), ('eval/loss', 0.5, 3)]
  assert not [r for r in caplog.records if 'illegal' in r.getMessage()]


def test_jsonl_writer_appends_and_drops_a_partial_last_line(tmp_path):
  from dlresearch import logging as log_lib
  w = log_lib.JsonlWriter(str(tmp_path / 'metrics.jsonl'))
  w.write(1, 'train', {'loss': 0.1234567890123})
  w.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 2, "split": "tr')  # a crash mid-line
  w = log_lib.JsonlWriter(str(tmp_path / 'metrics.jsonl'))
  w.write(2, 'eval', {'accuracy': 0.5, 'loss': float('nan')})
  w.close()
  lines = log_lib.read_metrics(str(tmp_path))
  assert lines == [{'step': 1, 'split': 'train', 'loss': 0.1234567890123},
                   {'step': 2, 'split': 'eval', 'accuracy': 0.5, 'loss': 'nan'}]


def test_console_progress_reports_rates_and_eta(caplog):
  from dlresearch import logging as log_lib
  times = iter([0.0, 2.0])
  w = log_lib.ConsoleWriter(total_steps=30, batch_size=8, clock=lambda: next(times))
  with caplog.at_level('INFO'):
    w.write(10, 'train', {'loss': 1.0})
    w.write(20, 'train', {'loss': 0.5})
  text = caplog.text
  assert '5.00 steps/s' in text and '40 ex/s' in text and 'ETA 00:00:02' in text


def test_window_mean_and_time_continuing_across_restarts(tmp_path):
  window = train.WindowMean()
  for v in (1.0, 2.0, 6.0):
    window.add({'loss': jnp.float32(v)})
  assert float(window.pop()['loss']) == pytest.approx(3.0)
  path = str(tmp_path / 'metrics.jsonl')
  clock = iter([10.0, 12.5, 100.0, 101.0])
  w = log_lib.JsonlWriter(path, clock=lambda: next(clock))
  w.write(1, 'train', {'loss': 1.0})
  w.close()
  w = log_lib.JsonlWriter(path, clock=lambda: next(clock))  # a restart
  w.write(2, 'train', {'loss': 0.5})
  w.close()
  times = [json.loads(l)['time'] for l in open(path)]
  assert times == [2.5, 3.5]


def test_progress_bar_shows_rate_loss_and_examples_per_second():
  out = io.StringIO()
  bar = log_lib.ProgressBar(100, batch_size=32, file=out)
  print('Model summary: LeNet5', file=out)  # printed at train start
  assert out.getvalue() == 'Model summary: LeNet5\n'  # no bar drawn yet
  bar.write(10, 'train', {'loss': 1.25})
  bar.write(20, 'train', {'loss': 0.75})
  bar.write(20, 'eval', {'accuracy': 0.5})
  bar.close()
  text = out.getvalue()
  assert '20/100' in text and 'loss=0.75' in text and 'ex/s' in text
  assert 'step/s' in text and '[20/100] eval accuracy=0.5' in text


def _record(path, level):
  return logging.LogRecord('absl', level, path, 1, 'msg', None, None)


def test_quiet_libraries_keeps_errors_and_other_libraries_warnings():
  quiet = log_lib.QuietLibraries()
  orbax_file = '/venv/site-packages/orbax/checkpoint/_src/checkpoint_manager.py'
  assert not quiet.filter(_record(orbax_file, logging.INFO))
  assert not quiet.filter(_record(orbax_file, logging.WARNING))
  assert quiet.filter(_record(orbax_file, logging.ERROR))
  assert quiet.filter(_record(orbax_file, logging.CRITICAL))
  for noisy in ('/venv/site-packages/tensorflow_datasets/core/dataset_info.py',
                '/venv/site-packages/grain/_src/python/data_loader.py',
                '/venv/site-packages/jax/_src/xla_bridge.py'):
    assert not quiet.filter(_record(noisy, logging.INFO)), noisy
    assert quiet.filter(_record(noisy, logging.WARNING)), noisy
  other = '/venv/site-packages/flax/core/scope.py'
  assert quiet.filter(_record(other, logging.WARNING))
  assert quiet.filter(_record(other, logging.INFO))
  ours = os.path.join(ROOT, 'dlresearch', 'train.py')
  assert quiet.filter(_record(ours, logging.INFO))


def test_quiet_libraries_installs_once_on_absl_logger_and_handler():
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  log_lib.quiet_libraries()
  log_lib.quiet_libraries()
  for target in (logging.getLogger('absl'), absl_logging.get_absl_handler()):
    assert sum(isinstance(f, log_lib.QuietLibraries)
               for f in target.filters) == 1


def test_phase_announces_size_then_progress_lines_then_done():
  now, lines = [0.0], []
  with log_lib.Phase('fitting boosting', 100, 'iteration', detail='480 rows',
                     progress='lines', every_s=10.0, clock=lambda: now[0],
                     emit=lines.append) as phase:
    for _ in range(10):
      now[0] += 4.0
      phase.update(10)
  assert lines[0] == 'fitting boosting (100 iterations, 480 rows) ...'
  # A line at most every 10 s (at 12, 24, 36 s), with the count and ETA.
  assert lines[1] == ('fitting boosting: 30/100 iterations (30%), ETA '
                      '00:00:28, 2.5 iterations/s')
  assert len(lines) == 5  # announcement, three progress lines, done
  assert lines[-1] == 'fitting boosting: done, 100 iterations in 40.0 s'
  quiet = []
  with log_lib.Phase('x', 3, progress='none', emit=quiet.append) as phase:
    phase.update(3)
  assert quiet == []
