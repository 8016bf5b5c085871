"""docs/extending.md's examples run as written: a model, a problem (with its
task) and a callback, through the real registry, problem registry and loop."""

import pathlib
import re

import numpy as np
import pytest

from dlresearch import problems, train
from dlresearch.data import datasets
from dlresearch.models import registry
from experiments.cnn_imagenet import PRESETS

DOC = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'extending.md'


def _block(first_line: str) -> str:
  """The ```python block of the guide that starts with ``first_line``."""
  for code in re.findall(r'```python\n(.*?)```', DOC.read_text(), re.S):
    if code.startswith(first_line):
      return code
  raise AssertionError(f'no python block starting {first_line!r} in {DOC}')


@pytest.fixture
def registries(monkeypatch):
  """The model and problem registries, restored after the test."""
  problems.names(), registry.names()  # the scans, before copies are taken
  monkeypatch.setattr(registry, '_REGISTRY', dict(registry._REGISTRY))  # pylint: disable=protected-access
  monkeypatch.setattr(problems, '_PROBLEMS', dict(problems._PROBLEMS))  # pylint: disable=protected-access


def test_the_model_and_problem_examples_train(registries, monkeypatch,
                                              tmp_path):
  exec(_block('# dlresearch/models/my_net.py'), {})  # pylint: disable=exec-used
  exec(_block('# dlresearch/problems/regression.py'), {})  # pylint: disable=exec-used
  assert {'my_net', 'my_net_tiny'} <= set(registry.names())
  assert 'regression' in problems.names()
  # A dataset of (x, y = sum of x) rows, standing in for --dataset.
  rng = np.random.default_rng(0)

  def load_in_memory(name, split, data_dir, manual_dir):
    del name, data_dir, manual_dir
    x = rng.normal(size=(256 if split == 'train' else 64, 4)).astype('float32')
    return {'x': x, 'y': x.sum(1)}

  monkeypatch.setattr(datasets, 'load_in_memory', load_in_memory)
  cfg = PRESETS['quickstart'].config.replace(
      data_kind='regression', model='my_net_tiny', num_steps=200,
      batch_size=32, log_every=50, checkpoint_every=200, eval_every=0,
      plots=False, model_summary=False, optimizer='adam', learning_rate=1e-2)
  result = train.run(cfg, str(tmp_path / 'run'))
  assert result['step'] == 200
  assert 0 <= result['rmse'] < 1.0  # std of y is 2: it learned the sum


def test_the_callback_example_stops_the_run(tmp_path, monkeypatch):
  code = _block('from dlresearch import callbacks, train')
  monkeypatch.chdir(tmp_path)
  tiny = ("PRESETS['quickstart'].config.replace(num_steps=40, eval_every=10, "
          'log_every=10, checkpoint_every=20, plots=False, model_summary=False)')
  code = code.replace("PRESETS['quickstart'].config.replace(eval_every=100)", tiny)
  assert tiny in code  # the guide's config line, in its tiny form
  exec(code.replace('StopAtAccuracy(0.97)', 'StopAtAccuracy(0.0)'), {})  # pylint: disable=exec-used
  metrics = (tmp_path / 'runs' / 'stop' / 'metrics.jsonl').read_text()
  # Stopped at the first eval (step 10) instead of training to step 40.
  assert '"step": 40' not in metrics and '"step": 10' in metrics
