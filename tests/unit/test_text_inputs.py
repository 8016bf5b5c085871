"""dlresearch.problems.text_inputs: the tokenizer a workdir keeps across resume and --init_from."""

import pytest

from dlresearch import config as config_lib
from dlresearch.config import ConfigError
from dlresearch.data import text
from dlresearch.problems import text_inputs


def test_workdir_tokenizer_resume_needs_a_saved_one(tmp_path):
  cfg = config_lib.Config(eval_only=True)
  with pytest.raises(ConfigError, match='no tokenizer'):
    text_inputs.workdir_tokenizer(cfg, str(tmp_path), False, lambda: ['ab'])
  # --init_from: the fresh workdir takes the tokenizer of the earlier run.
  first = text_inputs.workdir_tokenizer(config_lib.Config(), str(tmp_path / 'a'),
                                  True, lambda: ['abc'])
  (tmp_path / 'a' / 'checkpoints').mkdir()
  cfg = config_lib.Config(init_from=str(tmp_path / 'a' / 'checkpoints'))
  second = text_inputs.workdir_tokenizer(cfg, str(tmp_path / 'b'), True,
                                   lambda: ['xyz'])
  assert second.chars == first.chars == ['a', 'b', 'c']
  assert (tmp_path / 'b' / text.CHAR_FILE).is_file()
  # A fresh run replaces a tokenizer left by an attempt that never saved.
  third = text_inputs.workdir_tokenizer(config_lib.Config(), str(tmp_path / 'b'),
                                  True, lambda: ['pq'])
  assert third.chars == ['p', 'q']
