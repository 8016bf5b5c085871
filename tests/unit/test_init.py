"""Transfer learning: --init_from of converted weights and runs, the init
report, --probe/--freeze with batch statistics, --lr_multipliers,
--num_train_examples, and experiments/predict.py."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch import config as config_lib, init, optim, state as state_lib
from dlresearch import tasks, train
from dlresearch.config import Config, ConfigError
from dlresearch.data import subset
from dlresearch.models import registry
from tests.e2e.test_compilation_cache import orbax_lines_below_error
from tests.e2e.test_text_presets import rotten_tomatoes_dir  # noqa: F401  pylint: disable=unused-import
from tests.unit.test_weights import minilm_dir, mobilenet_pth  # noqa: F401  pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------- the merge --


def _tree(**leaves):
  out = {}
  for path, value in leaves.items():
    node = out
    *parents, last = path.split('__')
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = np.asarray(value, np.float32)
  return out


def test_merge_loads_by_path_replaces_only_the_named_head():
  target = _tree(params__body__kernel=np.zeros((2, 3)),
                 params__head__kernel=np.zeros((3, 4)),
                 batch_stats__bn__mean=np.zeros(3))
  source = _tree(params__body__kernel=np.ones((2, 3)),
                 params__head__kernel=np.ones((3, 1000)),
                 batch_stats__bn__mean=np.full(3, 2.0))
  merged, report = init.merge(target, source, '^head/')
  np.testing.assert_array_equal(merged['params']['body']['kernel'], 1.0)
  np.testing.assert_array_equal(merged['params']['head']['kernel'], 0.0)
  np.testing.assert_array_equal(merged['batch_stats']['bn']['mean'], 2.0)
  assert report == {'loaded': ['batch_stats/bn/mean', 'params/body/kernel'],
                    'new': ['params/head/kernel'],
                    'skipped': ['params/head/kernel']}
  # Without --new_head the different head is an error naming both shapes.
  with pytest.raises(ConfigError, match=r'params/head/kernel has shape '
                     r'\(3, 1000\) in the source but \(3, 4\)'):
    init.merge(target, source)
  # A variable the source lacks never stays fresh silently.
  del source['batch_stats']
  with pytest.raises(ConfigError, match='batch_stats/bn/mean is not in the source'):
    init.merge(target, source, '^head/')
  with pytest.raises(ConfigError, match='matches no parameter'):
    init.merge(target, source, '^nothing/')


def test_init_from_a_run_of_another_model_is_refused(tmp_path):
  # LeNet -> MLP used to copy the output bias because path and shape matched.
  (tmp_path / config_lib.CONFIG_FILE).write_text(json.dumps(
      {'config': config_lib.to_json(Config(model='lenet5'))}))
  with pytest.raises(ConfigError, match='holds a lenet5 model, not --model=mlp'):
    init.run_variables(Config(model='mlp', init_from=str(tmp_path)))
  with pytest.raises(ConfigError, match='no config.json'):
    init.run_variables(Config(model='mlp', init_from=str(tmp_path / 'x' / 'y' / 'z')))


def test_mobilenet_weights_load_with_a_new_head_and_a_report(mobilenet_pth, tmp_path):  # noqa: F811
  cfg = Config(model='mobilenet_v2', init_from=f'torch:{mobilenet_pth}',
               new_head='^head/')
  model = train.build_model(cfg, {'num_classes': 10})
  fresh = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  params, model_state, report = init.initialize(
      cfg, model, fresh['params'], {'batch_stats': fresh['batch_stats']},
      str(tmp_path))
  assert report['new'] == ['params/head/bias', 'params/head/kernel']
  assert report['skipped'] == ['params/head/bias', 'params/head/kernel']
  assert len(report['loaded']) == 260  # 158 params + 2 x 51 batch-norm stats
  assert json.loads((tmp_path / init.REPORT_FILE).read_text()) == report
  assert params['head']['kernel'].shape == (1280, 10)
  np.testing.assert_array_equal(params['head']['kernel'],
                                fresh['params']['head']['kernel'])
  from dlresearch import weights  # pylint: disable=g-import-not-at-top
  sd = weights.read(f'torch:{mobilenet_pth}')
  np.testing.assert_array_equal(model_state['batch_stats']['stem_bn']['var'],
                                sd['features.0.1.running_var'])
  np.testing.assert_array_equal(params['stem_conv']['kernel'],
                                sd['features.0.0.weight'].transpose(2, 3, 1, 0))


# ------------------------------------------- frozen backbone, probe, lr --


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, name='bn')(x)
    x = nn.Dropout(0.5, deterministic=not train)(x.mean((1, 2)))
    return nn.Dense(3, name='head')(x)


def _train(cfg, steps=3):
  model = _Net()
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 6, 6, 2)).astype(np.float32),
           'label': rng.integers(0, 3, 8).astype(np.int32)}
  args = (batch['image'],)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))['params']
  tx, _ = optim.make(cfg, steps, params)
  state = state_lib.create(model, tx, args, {}, 0)
  task = tasks.freeze_backbone(
      tasks.Classification(), probe=cfg.probe,
      trainable=optim.trainable(cfg, params), model_state=state.model_state)
  step = jax.jit(train.make_train_step(model, task, tx))
  first = state
  for _ in range(steps):
    state, _ = step(state, batch)
  return first, state


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                  jax.tree.leaves(b)))


@pytest.mark.parametrize('flags', [{'freeze': '^(conv|bn)/'},
                                   {'probe': True, 'new_head': '^head/'}])
def test_frozen_parameters_and_their_batch_stats_do_not_move(flags):
  cfg = Config(optimizer='adam', learning_rate=0.1, **flags)
  first, last = _train(cfg)
  for name in ('conv', 'bn'):
    assert _same(first.params[name], last.params[name])
  assert _same(first.model_state, last.model_state)  # bit-identical stats
  assert not _same(first.params['head'], last.params['head'])
  # Frozen parameters get no optimizer state: Adam's mu and nu hold the
  # head's two arrays only.
  sizes = sorted(x.size for x in jax.tree.leaves(last.opt_state) if x.ndim)
  assert sizes == sorted([3, 3, 12, 12])
  # Without freezing, the same step moves the body and its statistics.
  first, last = _train(Config(optimizer='adam', learning_rate=0.1))
  assert not _same(first.params['conv'], last.params['conv'])
  assert not _same(first.model_state, last.model_state)


def test_lr_multipliers_scale_each_group_update():
  params = {'body': {'kernel': jnp.ones((2, 2))}, 'head': {'kernel': jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  cfg = Config(optimizer='sgd', momentum=0.0, learning_rate=0.5,
               lr_multipliers='^body/=0.1,head=3')
  tx, _ = optim.make(cfg, 10, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['body']['kernel'], -0.05)
  np.testing.assert_allclose(updates['head']['kernel'], -1.5)
  for bad, needle in (('body', 'not REGEX=FACTOR'), ('x=-1', 'finite number'),
                      ('(=1', 'unterminated'), ('nope=2', 'matches no parameter')):
    with pytest.raises(ConfigError, match=needle):
      optim.make(cfg.replace(lr_multipliers=bad), 10, params)


# ------------------------------------------------------ train subsets --


def test_stratified_subset_is_proportional_and_seeded():
  labels = np.repeat([0, 1, 2], [600, 300, 100])
  idx = subset.stratified_indices(labels, 100, seed=0)
  assert np.bincount(labels[idx]).tolist() == [60, 30, 10]
  assert len(set(idx.tolist())) == 100
  np.testing.assert_array_equal(idx, subset.stratified_indices(labels, 100, 0))
  assert not np.array_equal(idx, subset.stratified_indices(labels, 100, 1))
  # Remainders go to the largest fractional parts: 7 -> 4.2, 2.1, 0.7.
  small = labels[subset.stratified_indices(labels, 7, 0)]
  assert np.bincount(small, minlength=3).tolist() == [4, 2, 1]
  from dlresearch.data import pipeline  # pylint: disable=g-import-not-at-top
  ds = pipeline.ArrayDataset({'x': np.arange(1000), 'label': labels})
  sub = subset.train_subset(ds, 10, 0, 'label')
  assert sub.num_examples == 10
  assert np.bincount(sub.arrays['label']).tolist() == [6, 3, 1]
  np.testing.assert_array_equal(sub.arrays['label'], labels[sub.arrays['x']])
  with pytest.raises(ConfigError, match='num_train_examples'):
    subset.train_subset(ds, 1001, 0, 'label')


def test_probe_needs_a_head():
  with pytest.raises(ConfigError, match='--probe: needs --new_head'):
    config_lib.validate(Config(probe=True))


# ------------------------------------------------------------- predict --


def _predict(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.predict', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_predict_json_top_k_for_converted_weights(mobilenet_pth, tmp_path):  # noqa: F811
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_image  # pylint: disable=g-import-not-at-top
  image = tmp_path / 'china.png'
  Image.fromarray(load_sample_image('china.jpg')).save(image)
  r = _predict('--model=mobilenet_v2', f'--init_from=torch:{mobilenet_pth}',
               '--json', '--top_k=3', str(image), str(image))
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 2
  out = json.loads(lines[0])
  assert set(out) == {'image', 'top_k'} and out['image'] == str(image)
  assert [set(t) for t in out['top_k']] == [{'label', 'index', 'probability'}] * 3
  assert (out['top_k'][0]['label'], out['top_k'][0]['index']) == ('palace', 698)
  probs = [t['probability'] for t in out['top_k']]
  assert probs == sorted(probs, reverse=True) and 0.6 < probs[0] < 0.8
  # A bad input: one line, exit 2.
  r = _predict('--model=mobilenet_v2', f'--init_from=torch:{mobilenet_pth}',
               str(tmp_path / 'missing.png'))
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'no such image file' in r.stderr and 'Traceback' not in r.stderr


def test_no_module_unpickles_outside_the_restricted_reader():
  # Pickle-based formats are refused everywhere but the allow-listed torch
  # reader: no allow_pickle=True, no pickle.load, no np.load of pickles.
  offenders = []
  for top in ('dlresearch', 'experiments', 'benchmarks'):
    for root, _, files in os.walk(os.path.join(ROOT, top)):
      for name in files:
        path = os.path.join(root, name)
        if not name.endswith('.py') or path.endswith('torch_pickle.py'):
          continue
        text = open(path, encoding='utf-8').read()
        for needle in ('allow_pickle=True', 'pickle.load(', 'pickle.loads(',
                       'Unpickler('):
          if needle in text:
            offenders.append(f'{os.path.relpath(path, ROOT)}: {needle}')
  assert offenders == []


def test_predict_workdir_uses_the_runs_eval_preprocessing(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from experiments.cnn_imagenet import PRESETS  # pylint: disable=g-import-not-at-top
  preset = PRESETS['quickstart']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'data_dir': str(tmp_path / 'tfds'), 'num_steps': 60,
      'num_train_examples': 500})
  workdir = tmp_path / 'run'
  train.run(cfg, str(workdir))
  digits = load_digits()
  paths = []
  for i in (0, 1):  # stored as the raw 8x8 values 0..16 (uint8)
    path = tmp_path / f'digit{i}.png'
    Image.fromarray(digits.images[i].astype(np.uint8)).save(path)
    paths.append(str(path))
  r = _predict(f'--workdir={workdir}', '--json', '--top_k=10', *paths)
  assert r.returncode == 0, r.stderr[-2000:]
  outs = [json.loads(line) for line in r.stdout.strip().splitlines()]
  assert [o['image'] for o in outs] == paths
  for o in outs:
    assert sorted(t['index'] for t in o['top_k']) == list(range(10))
    assert sum(t['probability'] for t in o['top_k']) == pytest.approx(1, abs=1e-4)
  # Same probabilities as the restored model on the training pipeline's input.
  import dlresearch  # pylint: disable=g-import-not-at-top
  run = dlresearch.restore(str(workdir))
  x = digits.images[0].astype(np.float32)[None, :, :, None] / 255.0  # 'scale'
  want = np.asarray(jax.nn.softmax(run.predict(x)))[0]
  got = {t['index']: t['probability'] for t in outs[0]['top_k']}
  np.testing.assert_allclose([got[i] for i in range(10)], want, atol=1e-5)
  assert {t['label'] for t in outs[0]['top_k']} == {str(i) for i in range(10)}


TEXTS = ('a great wonderful moving film', 'an awful boring dull tedious mess',
         'the plot, of this movie')  # the comma stays inside the text


@pytest.fixture(scope='module')
def rt_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('rt_tfds'))


@pytest.fixture(scope='module')
def text_run(tmp_path_factory, rt_data_dir, rotten_tomatoes_dir):  # noqa: F811
  """A tiny Transformer text classifier (experiments.text_classify)."""
  from experiments.text_classify import PRESETS  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp('text_run')
  preset = PRESETS['rt_transformer']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'data_dir': rt_data_dir,
      'manual_dir': rotten_tomatoes_dir, 'progress': 'none', 'plots': False,
      'model_summary': False})
  workdir = str(base / 'run')
  train.run(cfg, workdir)
  return workdir


def test_predict_text_json_is_the_restored_runs_prediction(text_run):
  texts = list(TEXTS)
  r = _predict(f'--workdir={text_run}', '--json', '--top_k=2',
               *[f'--text={t}' for t in texts])
  assert r.returncode == 0, r.stderr[-2000:]
  assert orbax_lines_below_error(r.stderr) == []  # the restore is quiet
  outs = [json.loads(line) for line in r.stdout.strip().splitlines()]
  assert [o['text'] for o in outs] == texts  # one object per text, in order
  for o in outs:
    assert set(o) == {'text', 'top_k'}
    top = o['top_k']
    assert [set(t) for t in top] == [{'label', 'index', 'probability'}] * 2
    assert all(isinstance(t['label'], str) and isinstance(t['index'], int) and
               isinstance(t['probability'], float) for t in top)
    assert {(t['index'], t['label']) for t in top} == {(0, 'rotten'),
                                                       (1, 'fresh')}
    probs = [t['probability'] for t in top]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1, abs=1e-5)  # k = number of classes
  # The same model, tokenised by the run's own tokenizer, in this process.
  import dlresearch  # pylint: disable=g-import-not-at-top
  from dlresearch.data import text  # pylint: disable=g-import-not-at-top
  run = dlresearch.restore(text_run)
  ids, mask = text.pad_batch(run.tokenizer.encode_batch(texts),
                             run.config.max_len, run.tokenizer.pad_id)
  want = np.asarray(jax.nn.softmax(run.predict(ids, mask=mask), -1))
  assert [o['top_k'][0]['index'] for o in outs] == list(want.argmax(-1))
  got = np.array([[{t['index']: t['probability'] for t in o['top_k']}[c]
                   for c in range(2)] for o in outs])
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert len({tuple(np.round(p, 6)) for p in want}) == len(texts)  # distinct
  # An image for a text classifier: one line, exit 2.
  r = _predict(f'--workdir={text_run}', os.path.join(text_run, 'config.json'))
  assert r.returncode == 2 and 'Traceback' not in r.stderr
  assert r.stderr.strip().splitlines()[-1] == (
      'error: this model classifies texts: use --text')


def test_predict_text_of_an_hf_tokenizer_run_uses_the_workdirs_copy(
    tmp_path, rt_data_dir, rotten_tomatoes_dir, minilm_dir):  # noqa: F811
  """The minilm_rotten_tomatoes preset's data kind and tokenizer (MiniLM's
  WordPiece), a 1-layer BERT from scratch: predict reads the run's own copy
  of the tokenizer (the one it was given is gone by then)."""
  import shutil  # pylint: disable=g-import-not-at-top
  import dlresearch  # pylint: disable=g-import-not-at-top
  from dlresearch.problems import hf_text  # pylint: disable=g-import-not-at-top
  from experiments.finetune import PRESETS  # pylint: disable=g-import-not-at-top
  given = tmp_path / 'tokenizer'
  given.mkdir()
  shutil.copy(os.path.join(minilm_dir, 'tokenizer.json'), given)
  preset = PRESETS['minilm_rotten_tomatoes']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'init_from': '', 'pretrained_tokenizer': str(given),
      'model_kwargs': {'hidden_size': 16, 'num_layers': 1, 'num_heads': 2,
                       'mlp_dim': 32},
      'data_dir': rt_data_dir, 'manual_dir': rotten_tomatoes_dir,
      'eval_split': 'test[:10]', 'test_split': 'test', 'num_steps': 4,
      'learning_rate': 1e-3, 'progress': 'none', 'plots': False,
      'model_summary': False})
  workdir = str(tmp_path / 'run')
  train.run(cfg, workdir)
  shutil.rmtree(given)
  # Eval lines name their split; the test split is evaluated once, at the end.
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  evals = [(l['split'], l['dataset_split'], l['num_examples'])
           for l in lines if l['split'] != 'train']
  assert set(evals[:-1]) == {('eval', 'test[:10]', 10)}
  assert evals[-1] == ('test', 'test', 16)
  texts = list(TEXTS)
  r = _predict(f'--workdir={workdir}', '--top_k=2',
               *[f'--text={t}' for t in texts])
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  assert len(lines) == len(texts)  # one line per text: "TEXT: l p, l p"
  shown = []
  for text, line in zip(texts, lines):
    m = re.fullmatch(re.escape(text) +
                     r': (rotten|fresh) ([01]\.\d{3}), (rotten|fresh) '
                     r'([01]\.\d{3})', line)
    assert m, line
    shown.append({m.group(1): float(m.group(2)), m.group(3): float(m.group(4))})
  run = dlresearch.restore(workdir)
  tok = hf_text.load_tokenizer(
      os.path.join(workdir, hf_text.SAVED_TOKENIZER), cfg.max_len)
  enc = hf_text.encode(tok, texts)
  assert enc['inputs'][0, 0] == tok.token_to_id('[CLS]')
  want = np.asarray(jax.nn.softmax(
      run.predict(enc['inputs'], mask=enc['mask']), -1))
  names = ('rotten', 'fresh')  # the dataset's ClassLabel order
  got = np.array([[d[names[c]] for c in range(2)] for d in shown])
  np.testing.assert_allclose(got, want, atol=6e-4)  # printed to 3 places
  # Printed most probable first: the restored model's argmax.
  assert [next(iter(d)) for d in shown] == [names[i] for i in
                                            want.argmax(-1)]


def test_minilm_probe_trains_only_the_head_on_mean_pooled_embeddings(
    minilm_dir, tmp_path):  # noqa: F811
  from dlresearch import checkpoint, weights  # pylint: disable=g-import-not-at-top
  from dlresearch.data import pipeline  # pylint: disable=g-import-not-at-top
  from dlresearch.problems import hf_text  # pylint: disable=g-import-not-at-top
  from experiments.finetune import PRESETS  # pylint: disable=g-import-not-at-top
  cfg = PRESETS['minilm_rotten_tomatoes'].config.replace(
      init_from=f'hf:{minilm_dir}', pretrained_tokenizer=str(minilm_dir),
      probe=True, num_steps=3, batch_size=8, eval_batch_size=8, max_len=16,
      num_train_examples=0, log_every=1)
  tok = hf_text.load_tokenizer(hf_text.tokenizer_path(cfg), 16)
  texts = ['a wonderful, moving film', 'dull and lifeless'] * 8
  arrays = {**hf_text.encode(tok, texts),
            'label': np.array([1, 0] * 8, np.int32)}
  assert arrays['inputs'][0, 0] == tok.token_to_id('[CLS]')
  data = pipeline.Data(pipeline.ArrayDataset(arrays), pipeline.ArrayDataset(arrays),
                       tasks.Classification(input_key='inputs', mask_key='mask'),
                       {'vocab_size': tok.get_vocab_size(), 'num_classes': 2})
  workdir = tmp_path / 'run'
  train.run(cfg, str(workdir), data=data)
  report = json.loads((workdir / init.REPORT_FILE).read_text())
  assert report['new'] == ['params/head/bias', 'params/head/kernel']
  assert report['skipped'] == ['params/pooler/bias', 'params/pooler/kernel']
  assert len(report['loaded']) == 101  # 3 embeddings, embed_norm (2), 6 x 16
  params = checkpoint.load_variables(str(workdir))['params']
  sd = weights.read(f'hf:{minilm_dir}')
  np.testing.assert_array_equal(params['token_embed']['embedding'],
                                sd['embeddings.word_embeddings.weight'])
  np.testing.assert_array_equal(
      params['encoder']['block_5']['mlp']['fc2']['kernel'],
      sd['encoder.layer.5.output.dense.weight'].T)
  assert float(np.abs(params['head']['kernel']).max()) > 0
