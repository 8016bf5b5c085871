"""The built-in callbacks a config asks for (dlresearch/callbacks/standard.py)
on real runs: keep-best and early stopping across a resume, selection on the
test split refused, and the pictures, model summary, profile and named eval
lines a run writes."""

import os

import jax
import numpy as np
from PIL import Image
import pytest

from dlresearch import config as config_lib, train
from dlresearch import logging as log_lib, plot
from dlresearch.config import ConfigError
from dlresearch.tools import inference
from experiments.cnn_imagenet import PRESETS


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny(data_dir, **overrides):
  preset = PRESETS['quickstart']
  return config_lib.override(preset.config, {
      **preset.tiny, 'data_dir': data_dir, 'progress': 'none', **overrides})


# --- keep-best, early stopping, resume ----------------------------------------


def _scripted(values):
  """An eval hook whose ``score`` at eval k is values[k] (k = step // 5 - 1)."""

  def hook(model, state):
    del model
    k = int(np.asarray(jax.device_get(state.step))) // 5 - 1
    return {'score': float(values[k])}

  return hook


def test_keep_best_survives_resume_and_early_stopping(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  scores = [0.1, 0.5, 0.3, 0.7, 0.2, 0.6, 0.65, 0.1]  # evals at 5, 10, ...
  cfg = tiny(data_dir, num_steps=20, eval_every=5, checkpoint_every=5,
             best_metric='score', eval_split='test', plots=False,
             model_summary=False)
  # First 20 steps (evals 5, 10, 15 and the final one at 20), then resume.
  train.run(cfg, workdir, eval_hooks=[_scripted(scores)])
  assert inference.restore(workdir, step='best').step == 20
  result = train.run(cfg.replace(num_steps=40, early_stopping_patience=3),
                     workdir, eval_hooks=[_scripted(scores)])
  # After the resume: 0.2 (25), 0.6 (30), 0.65 (35): three without a new best
  # (0.7 at 20, remembered across the resume), so the run stops at 35.
  assert result['step'] == 35 and result['stopped_early']
  run = inference.restore(workdir, step='best')
  latest = inference.restore(workdir)
  assert run.step == 20 and latest.step == 35
  assert not np.allclose(run.variables['params']['head']['kernel'],
                         latest.variables['params']['head']['kernel'])
  ev = train.run(cfg.replace(eval_only=True, eval_checkpoint='best'), workdir)
  assert ev['step'] == 20
  assert [n for n in os.listdir(os.path.join(workdir, 'checkpoints_best'))
          if n.isdigit()] == ['20']


def test_selection_on_test_needs_saying_so(tmp_path, data_dir):
  with pytest.raises(ConfigError, match='--best_metric: digits has no '
                     'validation split'):
    train.run(tiny(data_dir, best_metric='accuracy'), str(tmp_path / 'x'))
  assert not os.path.exists(tmp_path / 'x')


# --- pictures, summary, profile, export ---------------------------------------


def test_run_writes_pictures_summary_profile_and_named_eval_lines(
    tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  cfg = tiny(data_dir, num_steps=12, log_every=4, eval_every=6,
             eval_max_examples=100, profile_steps='2:4', ema_decay=0.9)
  result = train.run(cfg, workdir)
  curves = Image.open(os.path.join(workdir, 'plots', 'curves.png'))
  confusion = Image.open(os.path.join(workdir, 'plots', 'confusion_matrix.png'))
  assert curves.size == plot.CURVES_SIZE and confusion.size == plot.CONFUSION_SIZE
  assert np.asarray(curves).std() > 0  # not a blank image
  text = open(os.path.join(workdir, 'model_summary.txt')).read()
  assert 'parameters: 21,386' in text and 'FLOPs' in text and 'conv1' in text
  traces = [f for _, _, fs in os.walk(os.path.join(workdir, 'profile'))
            for f in fs if f.endswith('.xplane.pb')]
  assert traces
  lines = log_lib.read_metrics(workdir)
  evals = [l for l in lines if l['split'] == 'eval']
  assert all(l['dataset_split'] == 'test' for l in evals)
  # --eval_max_examples=100 caps the periodic eval; the final one is whole.
  assert [(l['step'], l['num_examples']) for l in evals] == [(6, 100),
                                                            (12, 360)]
  assert all('time' in l for l in lines)
  assert 'ema_accuracy' in evals[-1] and 'ema_accuracy' in result
  assert [l['step'] for l in lines if l['split'] == 'train'] == [4, 8, 12]
