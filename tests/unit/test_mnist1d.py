"""MNIST-1D: paper architectures, the experiment's tiny runs, shuffling, the table."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import mnist1d_table
from dlresearch import config as config_lib
from dlresearch import logging as log_lib
from dlresearch.config import ConfigError
from dlresearch import problems
from dlresearch.problems import classification
from dlresearch.models import registry
from experiments import mnist1d as experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Parameters for 10 classes. gru: PyTorch's nn.GRU has 324 (two bias vectors
# per gate); rnn.py merges b_ir+b_hr and b_iz+b_hz: 300 (see models/mnist1d.py).
PARAMS = {'logreg': 410, 'mlp': 15_210, 'cnn': 5_210, 'gru': 300 + 4_810,
          'lstm': 384 + 4_810, 'transformer': 18_826}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny_config(name, data_dir, **overrides):
  preset = experiment.PRESETS[name]
  return config_lib.override(preset.config,
                             {**preset.tiny, 'data_dir': data_dir, **overrides})


def count(params):
  return sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize('init', ['flax', 'torch'])
def test_parameter_counts(init):
  x = jax.ShapeDtypeStruct((1, 40, 1), jnp.float32)
  for name, expected in PARAMS.items():
    kwargs = {} if name == 'transformer' else {'param_init': init}
    model = registry.build(f'mnist1d_{name}', num_classes=10, **kwargs)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert count(variables['params']) == expected, name
    logits, feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_features=True), variables,
        jax.ShapeDtypeStruct((2, 40, 1), jnp.float32))
    assert logits.shape == (2, 10) and feats['pre_logits'].shape[0] == 2
  gru = jax.eval_shape(registry.build('mnist1d_gru', num_classes=10).init,
                       jax.random.PRNGKey(0), x)['params']
  assert count(gru['rnn']) == 300 and gru['head']['kernel'].shape == (480, 10)


def test_torch_init_bounds():
  params = registry.build('mnist1d_mlp', num_classes=10, param_init='torch').init(
      jax.random.PRNGKey(0), jnp.zeros((1, 40, 1)))['params']
  for layer, fan_in in (('hidden_0', 40), ('hidden_1', 100), ('head', 100)):
    for kind in ('kernel', 'bias'):
      w = np.asarray(params[layer][kind])
      assert np.abs(w).max() <= fan_in ** -0.5 and np.abs(w).max() > 0.8 * fan_in ** -0.5


def _conv1d(x, w, b, stride=2, pad=1):
  """x [B, L, Cin], w [K, Cin, Cout] -> [B, L', Cout], cross-correlation."""
  x = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
  k = w.shape[0]
  length = (x.shape[1] - k) // stride + 1
  out = np.stack([np.einsum('bkc,kcd->bd', x[:, i * stride:i * stride + k], w)
                  for i in range(length)], axis=1)
  return out + b


def test_cnn_matches_numpy_forward():
  model = registry.build('mnist1d_cnn', num_classes=10, param_init='torch')
  x = np.random.default_rng(0).normal(size=(3, 40, 1)).astype(np.float32)
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 40, 1)))['params']
  logits, feats = model.apply({'params': params}, x, return_features=True)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = x.astype(np.float64)
  for i, length in enumerate((19, 10, 5)):
    h = np.maximum(_conv1d(h, p[f'conv_{i}']['kernel'], p[f'conv_{i}']['bias']), 0)
    assert h.shape == (3, length, 25)
  flat = h.reshape(3, -1)
  expected = flat @ p['head']['kernel'] + p['head']['bias']
  np.testing.assert_allclose(feats['pre_logits'], flat, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', list(experiment.PRESETS))
def test_tiny_form_trains_end_to_end(name, data_dir, tmp_path):
  cfg = tiny_config(name, data_dir)
  assert cfg.model == f'mnist1d_{name}' and cfg.batch_size % 8 == 0
  result = experiment.run_one(cfg, str(tmp_path))
  train_lines = log_lib.read_metrics(str(tmp_path), 'train')
  eval_lines = log_lib.read_metrics(str(tmp_path), 'eval')
  assert [l['step'] for l in train_lines] == [5, 10, 15, 20]
  assert train_lines[-1]['loss'] < train_lines[0]['loss'], train_lines
  assert eval_lines[-1]['step'] == 20
  assert result['accuracy'] == eval_lines[-1]['accuracy']
  assert 0.1 < result['accuracy'] <= 1.0  # above chance (10 classes)


def test_presets_are_the_published_setup_plus_documented_changes():
  base = experiment.PUBLISHED_SETUP
  assert (base.dataset, base.optimizer, base.learning_rate, base.batch_size,
          base.num_steps, base.schedule, base.weight_decay) == (
              'mnist1d', 'adam', 1e-2, 100, 6000, 'constant', 0.0)
  allowed = {'model', 'optimizer', 'weight_decay', 'schedule', 'step_boundaries',
             'step_decay', 'num_steps', 'warmup_steps'}
  for name, preset in experiment.PRESETS.items():
    cfg = preset.config
    changed = {k for k, v in cfg.to_dict().items() if v != getattr(base, k)}
    assert changed <= allowed, (name, changed)
    assert cfg.model == f'mnist1d_{name}' and cfg.batch_size == 100
    assert (cfg.optimizer, cfg.schedule, cfg.step_boundaries, cfg.step_decay) == (
        'adamw', 'step', (0.9,), 0.1)
    assert cfg.learning_rate == 1e-2 and cfg.num_steps >= 6000


def test_shuffle_spatial_permutes_train_and_test_alike(data_dir, tmp_path):
  perm = classification.spatial_permutation(40)
  np.testing.assert_array_equal(perm, classification.spatial_permutation(40))
  assert sorted(perm) == list(range(40)) and (perm != np.arange(40)).sum() > 30
  cfg = tiny_config('cnn', data_dir)
  plain = problems.build(cfg, str(tmp_path))
  shuffled = problems.build(cfg.replace(shuffle_spatial=True), str(tmp_path))
  idx = np.arange(0, 1000, 7)
  for split in ('train', 'eval'):
    a = getattr(plain, split).get(idx, None)
    b = getattr(shuffled, split).get(idx, None)
    np.testing.assert_array_equal(b['x'], a['x'][:, perm])
    np.testing.assert_array_equal(b['label'], a['label'])
    assert not np.array_equal(b['x'], a['x'])


def test_table_summary_cache_and_errors(tmp_path):
  calls = []

  def fake_run(cfg, workdir, shuffle):
    calls.append((cfg.model, cfg.seed, shuffle))
    return {'step': cfg.num_steps, 'accuracy': 0.5 + 0.1 * cfg.seed + 0.05 * shuffle,
            'loss': 1.0}

  args = (experiment.PRESETS, ['logreg', 'cnn'], ['0', '1'], ['cnn'], str(tmp_path),
          {'num_steps': 7}, False, fake_run)
  out = mnist1d_table.main(*args)
  assert len(calls) == 6 and out['step'] == 'all'
  summary = json.load(open(tmp_path / 'summary.json'))
  cnn = summary['models']['cnn']
  assert cnn['accuracies'] == [0.5, 0.6] and cnn['num_steps'] == 7
  assert cnn['mean'] == pytest.approx(0.55) and cnn['std'] == pytest.approx(0.0707107)
  assert cnn['published'] == 0.94 and cnn['meets_published'] is False
  assert cnn['params'] == 5_210
  assert summary['models']['cnn_shuffled']['published'] == 0.56
  assert summary['models']['cnn_shuffled']['meets_published'] is None
  assert cnn['setup'] == 'adamw lr 0.01 wd 0.05, x0.1 at 90%'
  assert summary['models']['cnn_shuffled']['accuracies'] == [0.55, 0.65]
  assert open(tmp_path / 'chart.png', 'rb').read(4) == b'\x89PNG'
  assert '| cnn | 5,210 | adamw lr 0.01 wd 0.05, x0.1 at 90% | 7 |' in open(
      tmp_path / 'table.md').read()
  mnist1d_table.main(*args)  # every run is reused from its result.json
  assert len(calls) == 6
  with pytest.raises(ConfigError, match='--models'):
    mnist1d_table.main(experiment.PRESETS, ['resnet'], ['0'], [], str(tmp_path), {},
                       False, fake_run)
  with pytest.raises(ConfigError, match='--seed'):
    mnist1d_table.main(experiment.PRESETS, ['cnn'], ['0'], [], str(tmp_path),
                       {'seed': 3}, False, fake_run)


def test_model_all_command_writes_summary_and_chart(data_dir, tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.mnist1d', '--model=all', '--tiny',
       '--models=logreg,mlp', '--seeds=0', '--shuffled_models=',
       f'--data_dir={data_dir}', f'--workdir={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / 'summary.json'))
  assert list(summary['models']) == ['logreg', 'mlp']
  for name in ('logreg', 'mlp'):
    row = summary['models'][name]
    assert row['num_steps'] == 20 and row['seeds'] == [0]
    evals = log_lib.read_metrics(str(tmp_path / name / 'seed_0'), 'eval')
    assert row['accuracies'] == [evals[-1]['accuracy']] and evals[-1]['step'] == 20
  assert open(tmp_path / 'chart.png', 'rb').read(4) == b'\x89PNG'
  assert 'final eval at step all: logreg=' in proc.stdout
