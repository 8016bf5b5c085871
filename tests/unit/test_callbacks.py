"""``train.run(..., callbacks=[...])``: what a user callback sees, how it
stops a run, and how its state and the train-line window survive a resume.

Resume contract tested here: the loop re-creates nothing for the user; the
user passes a new callback object to the resumed ``run`` and the loop hands
it the ``state_dict()`` kept in the checkpoint it resumed from
(``load_state_dict``), so steps and evals seen before that checkpoint are
not called again and the restored record continues as if never stopped.
"""

import signal

import numpy as np
import pytest

from dlresearch import callbacks, checkpoint, config as config_lib, train
from dlresearch import logging as log_lib
from experiments.cnn_imagenet import PRESETS

NUM_STEPS, LOG_EVERY, EVAL_EVERY = 12, 4, 4


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


def tiny(data_dir, **overrides):
  preset = PRESETS['quickstart']
  return config_lib.override(preset.config, {
      **preset.tiny, 'data_dir': data_dir, 'num_steps': NUM_STEPS,
      'log_every': LOG_EVERY, 'eval_every': EVAL_EVERY,
      'checkpoint_every': 100, **overrides})


class Recorder(callbacks.Callback):
  """Records what the loop shows it; stops or preempts at a given step."""

  state_key = 'recorder'

  def __init__(self, stop_at=None, preempt_at=None, stop_at_eval=None):
    self.stop_at, self.preempt_at = stop_at, preempt_at
    self.stop_at_eval = stop_at_eval
    self.steps, self.evals, self.logged = [], [], []
    self.starts, self.ends, self.checkpoints = [], [], []

  def on_train_start(self, loop):
    self.starts.append(loop.start_step)

  def on_step(self, step, state, metrics):
    self.steps.append(step)
    assert np.isfinite(metrics['loss'])  # this step's own metrics, on read
    if metrics.logged is not None:
      self.logged.append([step, metrics.logged['loss']])
    if step == self.preempt_at:
      signal.raise_signal(signal.SIGTERM)  # as a cluster's preemption would
    return step == self.stop_at

  def on_eval(self, step, state, split, metrics, final):
    self.evals.append([step, split, final, metrics['accuracy']])
    return step == self.stop_at_eval and not final

  def on_checkpoint(self, step, state):
    self.checkpoints.append(step)

  def on_end(self, step, state, result):
    self.ends.append(dict(result))

  def state_dict(self):
    return {'steps': list(self.steps), 'evals': [list(e) for e in self.evals],
            'logged': [list(l) for l in self.logged]}

  def load_state_dict(self, state):
    self.steps = list(state['steps'])
    self.evals = [list(e) for e in state['evals']]
    self.logged = [list(l) for l in state['logged']]


def untimed(workdir):
  return [{k: v for k, v in line.items() if k != 'time'}
          for line in log_lib.read_metrics(str(workdir))]


def test_user_callback_sees_every_step_and_eval_and_survives_resume(
    tmp_path, data_dir):
  straight = Recorder()
  result = train.run(tiny(data_dir), str(tmp_path / 'straight'),
                     callbacks=[straight])
  assert straight.steps == list(range(1, NUM_STEPS + 1))
  assert [e[:3] for e in straight.evals] == [
      [4, 'eval', False], [8, 'eval', False], [12, 'eval', True]]
  evals = log_lib.read_metrics(str(tmp_path / 'straight'), 'eval')
  assert [e[3] for e in straight.evals] == [e['accuracy'] for e in evals]
  assert [l[0] for l in straight.logged] == [4, 8, 12]
  assert straight.checkpoints == [NUM_STEPS] and straight.starts == [0]
  assert straight.ends == [result]

  # Preempted at step 6 (checkpointed there, mid train-line window), then
  # resumed with a new Recorder object: it gets the saved state back.
  first = Recorder(preempt_at=6)
  out = train.run(tiny(data_dir), str(tmp_path / 'resumed'), callbacks=[first])
  assert out == {'step': 6, 'preempted': 'SIGTERM'}
  assert first.steps == list(range(1, 7)) and first.checkpoints == [6]
  second = Recorder()
  resumed = train.run(tiny(data_dir), str(tmp_path / 'resumed'),
                      callbacks=[second])
  assert second.starts == [6]
  assert second.steps == straight.steps  # 1..6 restored, 7..12 seen
  assert second.evals == straight.evals
  assert second.logged == straight.logged
  assert resumed == result
  # The train line at step 8 is the mean over steps 5..8 although the run
  # stopped after step 6: the window's sums ride in the checkpoint.
  assert untimed(tmp_path / 'resumed') == untimed(tmp_path / 'straight')


def test_callback_stops_training_from_a_step_or_an_eval(tmp_path, data_dir):
  stopper = Recorder(stop_at=5)
  result = train.run(tiny(data_dir), str(tmp_path / 'step'),
                     callbacks=[stopper])
  assert result['stopped_early'] and result['step'] == 5
  assert stopper.steps == [1, 2, 3, 4, 5]
  assert stopper.evals[-1][:3] == [5, 'eval', True]  # the final eval, at 5
  assert stopper.checkpoints == [5]
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'step' / 'checkpoints'))
  assert ckpt.latest_step() == 5
  ckpt.close()
  lines = log_lib.read_metrics(str(tmp_path / 'step'))
  assert max(l['step'] for l in lines) == 5

  at_eval = Recorder(stop_at_eval=8)
  result = train.run(tiny(data_dir), str(tmp_path / 'eval'),
                     callbacks=[at_eval])
  assert result['stopped_early'] and result['step'] == 8
  assert at_eval.steps == list(range(1, 9))
  assert [e[:3] for e in at_eval.evals] == [
      [4, 'eval', False], [8, 'eval', False], [8, 'eval', True]]


def test_window_mean_state_round_trips_exactly():
  losses = np.float32([0.1, 0.7, 1.3, 2.9, 0.05])
  straight = log_lib.WindowMean()
  for v in losses:
    straight.add({'loss': np.float32(v)})
  resumed = log_lib.WindowMean()
  for v in losses[:2]:
    resumed.add({'loss': np.float32(v)})
  saved = resumed.state_dict(lambda tree: tree)
  assert saved['count'] == 2
  again = log_lib.WindowMean()
  again.load_state_dict(saved)
  for v in losses[2:]:
    again.add({'loss': np.float32(v)})
  assert again.pop()['loss'] == straight.pop()['loss']
  empty = log_lib.WindowMean()
  empty.load_state_dict({})
  empty.add({'loss': np.float32(3.0)})
  assert empty.pop()['loss'] == np.float32(3.0)
