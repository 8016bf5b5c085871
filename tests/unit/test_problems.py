"""Tests for dlresearch.problems: the registry, its scan, the one way
splits are picked (problems.splits), and the classification problem giving
every split (the test split evaluated at the end included) the same input
transforms."""


import numpy as np
import pytest

from dlresearch import problems
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline
from dlresearch.problems import splits


def test_the_scan_finds_the_engine_problems_and_the_applications():
  assert set(problems.names()) == {
      'classification', 'lm', 'text_classification', 'seq2seq',
      'hf_text_classification', 'anomaly', 'ratings', 'retrieval'}
  with pytest.raises(ValueError, match="'lm' is registered twice"):
    problems.register('lm')(lambda cfg, workdir, fresh: None)
  with pytest.raises(ConfigError, match="unknown data kind 'nope'; known: "
                     'anomaly, classification'):
    problems.build(Config(data_kind='nope'), '/unused')


def test_model_sizes_keeps_what_the_model_takes():
  cfg = Config(model='transformer_lm')
  assert problems.model_sizes(cfg, vocab_size=7, num_classes=3, max_len=9) == {
      'vocab_size': 7, 'max_len': 9}
  with pytest.raises(ConfigError, match='model'):
    problems.model_sizes(cfg.replace(model='nope'), vocab_size=7)


@pytest.mark.parametrize('available,eval_default,want', [
    # A validation split is the eval split; test is then evaluated at the end.
    ({'train', 'validation', 'test'}, 'test', ('train', 'validation', 'test')),
    # No validation: eval on test, nothing left for the end.
    ({'train', 'test'}, 'test', ('train', 'test', None)),
    # A dataset whose test split has no labels evaluates on validation.
    ({'train', 'validation', 'test'}, 'validation',
     ('train', 'validation', None)),
    # Splits unknown (a mocked dataset): test, nothing checked.
    (set(), 'test', ('train', 'test', None)),
])
def test_default_splits(available, eval_default, want):
  got = splits.pick(Config(dataset='d'), available, eval_default=eval_default,
                    test_labelled=eval_default != 'validation')
  assert (got.train, got.eval, got.test) == want


def test_flags_override_the_defaults_and_are_checked():
  avail = {'train', 'validation', 'test'}
  cfg = Config(dataset='d', train_split='train[:90%]', eval_split='train[90%:]')
  got = splits.pick(cfg, avail)
  assert (got.train, got.eval, got.test) == ('train[:90%]', 'train[90%:]',
                                             'test')
  assert splits.pick(cfg.replace(test_split='none'), avail).test is None
  assert splits.pick(cfg.replace(test_split='validation'),
                     avail).test == 'validation'
  for flag in ('train_split', 'eval_split', 'test_split'):
    with pytest.raises(ConfigError, match=f"{flag}.*d has no split 'dev'; it "
                       'has test, train, validation'):
      splits.pick(cfg.replace(**{flag: 'dev'}), avail)


def test_channel_repeat_and_pixel_permutation_reach_the_test_split(
    tmp_path_factory):
  cfg = Config(dataset='digits', data_dir=str(tmp_path_factory.mktemp('tfds')),
               eval_split='test[:20]', image_channels=3, shuffle_spatial=True)
  data = problems.build(cfg, str(tmp_path_factory.mktemp('run')))
  assert data.test_split == 'test' and data.eval_split == 'test[:20]'

  def first(dataset, n=20):
    return next(pipeline.eval_batches(dataset, n))

  ev, te = first(data.eval), first(data.test)
  assert ev['image'].shape[-1] == te['image'].shape[-1] == 3
  # test[:20] is the first 20 examples of test: the same transformed pixels.
  np.testing.assert_array_equal(te['image'], ev['image'])
  np.testing.assert_array_equal(te['label'], ev['label'])
  # ... and they are permuted: not the raw images repeated.
  plain = problems.build(cfg.replace(shuffle_spatial=False),
                      str(tmp_path_factory.mktemp('run2')))
  raw = first(plain.test)['image']
  assert raw.shape == te['image'].shape
  assert not np.array_equal(raw, te['image'])
  np.testing.assert_array_equal(np.sort(raw.reshape(20, -1), 1),
                                np.sort(te['image'].reshape(20, -1), 1))


def test_test_split_name_never_duplicates_the_eval_split():
  cfg = Config()
  assert splits.test_split_name(cfg, 'validation', {'train', 'validation',
                                                   'test'}) == 'test'
  assert splits.test_split_name(cfg, 'test', {'train', 'test'}) is None
  assert splits.test_split_name(cfg.replace(test_split='none'), 'validation',
                               {'test'}) is None
  assert splits.test_split_name(cfg, 'validation', {'test'}, False) is None
