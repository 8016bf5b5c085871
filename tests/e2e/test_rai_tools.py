"""End-to-end tests of the responsible-AI tools on tiny runs.

``--audit_group`` eval lines against ``audit.model_audit`` on the restored
model's predictions; the tabular experiment with its scikit-learn
baselines; ``experiments.audit``'s files; explanations of an image CNN run
and a text Transformer run; drift monitoring quiet on an unshifted split and
firing on a planted shift. Datasets are tiny TFDS builders written here.
"""

import csv
import json
import os
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from dlresearch import config as config_lib, train
from dlresearch.rai import audit, pictures
from dlresearch.tools import entry, explain, monitor, run_data
from dlresearch.config import Config, ConfigError
from dlresearch import problems
import dlresearch
import _forked  # pylint: disable=g-bad-import-order

def _picture(path, size):
  """``path`` is a PNG of ``size`` pixels, not blank."""
  with Image.open(path) as im:
    assert im.size == size
    assert np.asarray(im.convert('L')).std() > 10


WORDS = {0: ['bad', 'awful', 'dull'], 1: ['good', 'great', 'fine']}
FILLER = ['the', 'film', 'was', 'a', 'plot', 'and', 'cast']


class ToyTabular(tfds.core.GeneratorBasedBuilder):
  """6 features; label from features 0 and 1; 'sex' is not a feature."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            'sex': tfds.features.ClassLabel(names=['Female', 'Male']),
            'features': tfds.features.Tensor(shape=(6,), dtype=np.float32),
            'label': tfds.features.ClassLabel(names=['no', 'yes']),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(0, 480),
            'test': self._generate_examples(1, 200)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    sex = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 1] += 2.0 * sex  # a proxy of the group inside the features
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.2).astype(int)
    for i in range(n):
      yield i, {'features': x[i], 'label': int(y[i]), 'sex': int(sex[i])}


class ToyText(tfds.core.GeneratorBasedBuilder):
  """Short 'reviews' whose label is given by one sentiment word."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(0, 256),
            'test': self._generate_examples(1, 64)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      label = int(rng.integers(2))
      words = list(rng.choice(FILLER, 5))
      words.insert(int(rng.integers(6)), str(rng.choice(WORDS[label])))
      yield i, {'text': ' '.join(words), 'label': label}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  for builder in (ToyTabular, ToyText):
    builder(data_dir=path).download_and_prepare(file_format='array_record')
  return path


def _tabular_cfg(data_dir, **kw):
  return config_lib.validate(Config(
      dataset='toy_tabular', data_dir=data_dir, model='mlp',
      model_kwargs={'features': [16]}, batch_size=32, eval_batch_size=64,
      num_steps=60, learning_rate=1e-2, log_every=30, checkpoint_every=60,
      **kw))


@pytest.fixture(scope='module')
def tabular_run(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tabular'))
  result = train.run(_tabular_cfg(data_dir, audit_group='sex'), workdir)
  return workdir, result


def _last_eval(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [l for l in lines if l['split'] == 'eval'][-1]


def test_audit_group_eval_lines_equal_model_audit(tabular_run, data_dir):
  workdir, result = tabular_run
  line = _last_eval(workdir)
  # The contract's keys, in the eval line and the run's result.
  for key in ('group/sex=Female/accuracy', 'group/sex=Male/tpr',
              'group/sex=Female/selection_rate', 'group/sex=Male/fpr',
              'fairness/sex/demographic_parity_difference',
              'fairness/sex/demographic_parity_ratio',
              'fairness/sex/equalized_odds_difference'):
    assert key in line and key in result, key
  assert not any(k.startswith('group_sums') for k in line)
  # The group column is not a model input: the first layer sees 6 features.
  run = dlresearch.restore(workdir)
  assert run.variables['params']['hidden_0']['kernel'].shape == (6, 16)
  data = run_data.split_data(run, '', ['sex'])
  assert data.task.input_key == 'features'
  assert data.groups == (('sex', ('Female', 'Male')),)
  # Independent reference: model_audit on the restored model's predictions.
  got = run_data.predict(run, data.dataset, data.task)
  assert len(got['label']) == 200
  probs = np.exp(got['logits']) / np.exp(got['logits']).sum(1, keepdims=True)
  names = np.array(['Female', 'Male'])[got['sex']]
  ref = audit.model_audit(got['label'], probs.argmax(1), probs[:, 1],
                          {'sex': names}, n_bootstrap=0)
  assert line['accuracy'] == pytest.approx(
      ref['overall']['accuracy']['value'], abs=1e-6)
  for name in ('Female', 'Male'):
    g = ref['groups']['sex'][name]
    assert line[f'group/sex={name}/count'] == g['count']
    for metric in ('accuracy', 'selection_rate', 'tpr', 'fpr'):
      assert line[f'group/sex={name}/{metric}'] == pytest.approx(
          g[metric]['value'], abs=1e-6), (name, metric)
  for gap, entry in ref['gaps']['sex'].items():
    assert line[f'fairness/sex/{gap}'] == pytest.approx(entry['value'],
                                                        abs=1e-6)
  # The model learned something, and the groups differ in selection rate.
  assert line['accuracy'] > 0.8
  assert line['fairness/sex/demographic_parity_difference'] > 0.05


def test_audit_group_rejects_unknown_and_input_columns(data_dir):
  with pytest.raises(ConfigError, match='--audit_group: toy_tabular has no '
                     "column 'age'"):
    problems.build(_tabular_cfg(data_dir, audit_group='age'), '/unused')
  with pytest.raises(ConfigError, match='model input or label'):
    problems.build(_tabular_cfg(data_dir, audit_group='sex,label'), '/unused')


def test_tabular_experiment_with_baselines_then_audit_cli(data_dir, tmp_path):
  """The three command lines, each its own process (one warm parent)."""
  workdir = str(tmp_path / 'run')
  train_proc, proc, bad = _forked.run([
      {'module': 'experiments.tabular', 'argv': [
          '--preset=adult', '--tiny', '--dataset=toy_tabular',
          f'--data_dir={data_dir}', '--batch_size=32', '--eval_batch_size=64',
          '--num_steps=40', f'--workdir={workdir}', '--audit_group=sex']},
      {'module': 'experiments.audit', 'after': [0], 'argv': [
          f'--workdir={workdir}', '--group_key=sex', '--n_bootstrap=50']},
      # Bad input: one line, non-zero exit, nothing written.
      {'module': 'experiments.audit', 'after': [0], 'argv': [
          f'--workdir={workdir}', '--group_key=age', f'--out={tmp_path}/bad']},
  ], tmp_path, env={'JAX_PLATFORMS': 'cpu'})
  assert train_proc['code'] == 0, train_proc['stderr'][-2000:]
  out = train_proc['stdout']  # the final eval block: one line per prefix
  assert '\n  baseline/logistic_regression: accuracy=' in out
  assert max(len(l) for l in out.splitlines()) <= 100, out
  err = train_proc['stderr']  # each baseline fit announced, with its size
  assert ('baseline: fitting histogram gradient boosting (100 iterations, '
          '480 train rows x ') in err, err[-3000:]
  assert 'baseline: fitting histogram gradient boosting: done, ' in err
  found = json.load(open(f'{workdir}/baselines.json'))['baselines']
  # The label is linear in the features: logistic regression nails it.
  assert found['logistic_regression']['accuracy'] > 0.9
  assert found['hist_gradient_boosting']['accuracy'] > 0.8
  assert proc['code'] == 0, proc['stderr'][-2000:]
  out = pathlib.Path(workdir) / 'audit'
  with open(out / 'predictions.csv') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['label', 'prediction', 'score', 'group']
  assert len(rows) == 201 and {r[3] for r in rows[1:]} == {'Female', 'Male'}
  report = json.load(open(out / 'report.json'))
  accuracy = np.mean([r[0] == r[1] for r in rows[1:]])
  assert report['overall']['accuracy']['value'] == pytest.approx(accuracy)
  assert report['overall']['accuracy']['value'] == pytest.approx(
      _last_eval(workdir)['accuracy'], abs=1e-6)
  lo, hi = report['gaps']['sex']['demographic_parity_difference']['ci']
  assert lo <= report['gaps']['sex']['demographic_parity_difference'][
      'value'] <= hi
  assert report['data']['rows'] == 480
  assert set(report['data']['groups']['sex']) == {'Female', 'Male'}
  _picture(out / 'sex_accuracy.png', pictures.GROUP_SIZE)
  _picture(out / 'sex_gaps.png', pictures.GAPS_SIZE)
  assert bad['code'] != 0
  assert bad['stderr'].strip().splitlines()[-1].startswith(
      "error: --audit_group: toy_tabular has no column 'age'")
  assert not (tmp_path / 'bad').exists()


def test_explain_tabular_and_monitor_group_shift(tabular_run, tmp_path):
  workdir, _ = tabular_run
  run = dlresearch.restore(workdir)
  report = explain.explain_run(run, 'integrated_gradients', str(tmp_path / 'ig'),
                           num_examples=3, steps=128)
  assert report['modality'] == 'vector'
  assert report['completeness_gap']['max'] < 1e-2
  top = report['examples'][0]['top_features']
  assert len(top) == 6  # fewer features than top_k
  # The label depends on features 0 and 1 only: they lead the ranking.
  leaders = [{t['feature'] for t in e['top_features'][:2]}
             for e in report['examples']]
  assert sum(l == {'f0', 'f1'} for l in leaders) >= 2
  # Named by the dataset's label names, with the prediction's probability.
  first = report['examples'][0]
  assert {first['label_name'], first['prediction_name']} <= {'no', 'yes'}
  assert 0.5 <= first['probability'] <= 1
  with Image.open(tmp_path / 'ig' / 'example_000.png') as im:
    assert np.asarray(im.convert('L')).std() > 10
  with pytest.raises(ConfigError, match='grad_cam'):
    explain.explain_run(run, 'grad_cam', str(tmp_path / 'bad'))
  assert not (tmp_path / 'bad').exists()
  metrics = pathlib.Path(workdir) / 'metrics.jsonl'
  before = metrics.read_text()
  quiet = monitor.monitor_run(run, 'test', str(tmp_path / 'm0'))
  assert quiet['alerts'] == [] and metrics.read_text() == before
  # Women only: feature 1 (the group's proxy) shifts down.
  shifted = monitor.monitor_run(run, 'test', str(tmp_path / 'm1'),
                            live_filter='sex=Female', max_rows=2000)
  assert 60 < shifted['rows'] < 140  # about half of the 200 test rows
  assert shifted['feature_ks']['f1']['p_value'] < 1e-3
  assert any('f1' in a for a in shifted['alerts'])
  _picture(tmp_path / 'm1' / 'drift.png', pictures.DRIFT_SIZE)
  assert metrics.read_text() == before  # the training's file stays its own
  lines = [json.loads(l) for l in
           (tmp_path / 'm1' / 'alerts.jsonl').read_text().splitlines()]
  alerts = [l for l in lines if l['split'] == 'monitor']
  assert [l['alert'] for l in alerts] == shifted['alerts']
  assert alerts[0]['live_filter'] == 'sex=Female'
  assert alerts[0]['step'] == run.step


@pytest.mark.parametrize('arrays, message', [
    ({'features': np.full((4, 6), np.nan, np.float32)},
     "'features' holds 24 NaN or infinite values"),
    ({'features': np.array([['a'] * 6] * 4)}, "'features' holds <U1 values, "
     'not numbers'),
    ({'features': np.zeros((4, 5), np.float32)}, "'features' has shape (4, 5);"
     ' the model takes [N, 6]'),
    ({'features': np.zeros((4, 6)), 'label': np.array([0, 1, -1, 0])},
     "'label' must hold non-negative integers"),
    (None, 'not a readable .npz of plain arrays'),
])
def test_monitor_refuses_a_bad_npz_in_one_line(arrays, message, tabular_run,
                                               tmp_path, capsys):
  workdir, _ = tabular_run
  live = tmp_path / 'live.npz'
  if arrays is None:
    live.write_bytes(b'not a zip file')
  else:
    np.savez(live, **arrays)
  metrics = pathlib.Path(workdir) / 'metrics.jsonl'
  before = metrics.read_text()
  argv = [f'--workdir={workdir}', f'--live={live}', f'--out={tmp_path}/out']
  assert entry.run(monitor, argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: --live: {live}: {message}'), err
  assert err.count('\n') == 1, err
  assert not (tmp_path / 'out').exists() and metrics.read_text() == before


def test_monitor_reads_a_live_npz(tabular_run, tmp_path):
  """The test split's features as a .npz: the same window as ``--live=test``."""
  workdir, _ = tabular_run
  run = dlresearch.restore(workdir)
  data = run_data.split_data(run, 'test')
  batch = data.dataset.get(np.arange(data.dataset.num_examples), None)
  live = tmp_path / 'live.npz'
  np.savez(live, features=batch['features'], label=batch['label'])
  from_npz = monitor.monitor_run(run, str(live), str(tmp_path / 'npz'),
                                 metrics_file=str(tmp_path / 'm.jsonl'))
  from_split = monitor.monitor_run(run, 'test', str(tmp_path / 'split'),
                                   metrics_file=str(tmp_path / 'm.jsonl'))
  assert from_npz['rows'] == from_split['rows'] == 200
  assert from_npz['accuracy'] == from_split['accuracy']
  assert from_npz['feature_psi'] == from_split['feature_psi']
  np.savez(live, x=batch['features'])  # no labels: no live accuracy
  assert monitor.monitor_run(run, str(live), str(tmp_path / 'x'),
                             metrics_file=str(tmp_path / 'm.jsonl'),
                             )['accuracy']['live'] is None


def test_explain_and_monitor_an_image_cnn_run(tmp_path, tmp_path_factory):
  from experiments.cnn_imagenet import PRESETS
  preset = PRESETS['quickstart']
  data_dir = str(tmp_path_factory.mktemp('digits'))
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'data_dir': data_dir, 'num_steps': 60})
  workdir = str(tmp_path / 'run')
  train.run(cfg, workdir)
  run = dlresearch.restore(workdir)
  cam = explain.explain_run(run, 'grad_cam', str(tmp_path / 'cam'),
                        num_examples=4)
  assert cam['layer'] == 'conv2' and len(cam['files']) == 4
  ig = explain.explain_run(run, 'integrated_gradients', str(tmp_path / 'ig'),
                       num_examples=4, steps=128)
  logits = np.array([e['target_logit'] for e in ig['examples']])
  assert ig['completeness_gap']['max'] < 0.01 * np.abs(logits).max()
  # Input and map side by side, upscaled, named: digits' labels are '0'..'9'.
  assert ig['examples'][0]['label_name'] in [str(i) for i in range(10)]
  _picture(tmp_path / 'ig' / 'example_000.png', pictures.EXPLANATION_SIZE)
  _picture(tmp_path / 'cam' / 'example_000.png', pictures.EXPLANATION_SIZE)
  quiet = monitor.monitor_run(run, 'test', str(tmp_path / 'm0'))
  assert quiet['features'] == 'inputs' and quiet['alerts'] == []
  rotated = monitor.monitor_run(run, 'test', str(tmp_path / 'm1'),
                            live_transform='rotate:45')
  assert rotated['mmd']['p_value'] < 0.01 and rotated['alerts']
  assert rotated['accuracy']['live'] < rotated['accuracy']['reference']
  _picture(tmp_path / 'm1' / 'drift.png', pictures.DRIFT_SIZE)
  with pytest.raises(ConfigError, match='--live_transform'):
    monitor.monitor_run(run, 'test', str(tmp_path / 'm2'), live_transform='blur')


def test_explain_a_text_transformer_run(data_dir, tmp_path):
  from experiments.text_classify import PRESETS
  preset = PRESETS['rt_transformer']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'dataset': 'toy_text', 'data_dir': data_dir,
      'num_steps': 60, 'max_len': 48, 'tokenizer': 'char', 'batch_size': 32,
      'checkpoint_every': 60})
  workdir = str(tmp_path / 'run')
  assert train.run(cfg, workdir)['accuracy'] > 0.9
  run = dlresearch.restore(workdir)
  ig = explain.explain_run(run, 'integrated_gradients', str(tmp_path / 'ig'),
                       num_examples=4)
  assert ig['modality'] == 'text' and ig['files'] == ['tokens.html']
  page = (tmp_path / 'ig' / 'tokens.html').read_text()
  assert page.count('<p>') == 4 and 'background-color' in page
  for e in ig['examples']:
    assert len(e['tokens']) == len(e['scores'])
    assert e['completeness_gap'] < 0.05 * max(1.0, abs(e['target_logit']))
  roll = explain.explain_run(run, 'attention_rollout', str(tmp_path / 'roll'),
                         num_examples=2)
  scores = roll['examples'][0]['scores']
  assert len(scores) == len(roll['examples'][0]['tokens'])
  assert all(s >= 0 for s in scores)
