"""Tests for dlresearch.problems: the registry, its scan and the one way
splits are picked (problems.splits)."""

import pytest

from dlresearch import problems
from dlresearch.config import Config, ConfigError
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
