"""``python -m experiments.predict`` in its own process: JSON top-k for
converted weights, a workdir's eval preprocessing, and a text run's
prediction (its own tokenizer or the HF tokenizer copied into the workdir)."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from dlresearch import config as config_lib
from dlresearch import train

from _orbax_lines import orbax_lines_below_error
from _pretrained import minilm_dir, mobilenet_pth  # noqa: F401  pylint: disable=unused-import
from _text_corpora import rotten_tomatoes_dir  # noqa: F401  pylint: disable=unused-import


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
