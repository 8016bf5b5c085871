"""dlresearch.cli: presets, --tiny and flag overrides resolved into a config."""


from absl import flags
import pytest

from dlresearch import cli
from dlresearch.config import ConfigError
from experiments import rnn_lm
from experiments.cnn_imagenet import PRESETS


def test_cli_resolves_tiny_and_overrides():
  from absl import flags
  fv = flags.FlagValues()
  cli.define_flags(PRESETS, 'quickstart', flag_values=fv)
  fv(['prog', '--tiny', '--num_steps=7', '--eval_only', '--model_kwargs={"x": 1}'])
  cfg = cli.resolve(PRESETS, flag_values=fv)
  assert cfg.num_steps == 7 and cfg.eval_only and cfg.model_kwargs == {'x': 1}
  assert cfg.checkpoint_every == PRESETS['quickstart'].tiny['checkpoint_every']
  assert cfg.dataset == 'digits'


def test_text_options_are_config_flags():
  fv = flags.FlagValues()
  presets = rnn_lm.PRESETS
  cli.define_flags(presets, 'shakespeare_lstm', fv)
  fv(['prog', '--preset=shakespeare_gru', '--tiny', '--seq_len=16', '--sample',
      '--prompt=To be'])
  cfg = cli.resolve(presets, fv)
  assert cfg == presets['shakespeare_gru'].config.replace(
      preset='shakespeare_gru', **{**rnn_lm.TINY, 'seq_len': 16,
                                   'sample': True, 'prompt': 'To be'})
  fv2 = flags.FlagValues()
  cli.define_flags(presets, 'shakespeare_lstm', fv2)
  fv2(['prog', '--tokenizer=words'])
  with pytest.raises(ConfigError, match='--tokenizer'):
    cli.resolve(presets, fv2)


def test_final_eval_prints_as_a_short_block():
  result = {'step': 1272, 'accuracy': 0.85912, 'loss': 0.31, 'samples': 'x'}
  for group in ('Female', 'Male'):
    for metric in ('count', 'accuracy', 'tpr', 'fpr', 'selection_rate'):
      result[f'group/sex={group}/{metric}'] = 0.5
  result['fairness/sex/demographic_parity_difference'] = 0.1
  result['baseline/logistic_regression/accuracy'] = 0.853
  lines = cli.result_lines(result)
  assert lines == [
      'final eval at step 1272: accuracy=0.8591 loss=0.3100',
      '  group/sex=Female: count=0.5000 accuracy=0.5000 tpr=0.5000 '
      'fpr=0.5000 selection_rate=0.5000',
      '  group/sex=Male: count=0.5000 accuracy=0.5000 tpr=0.5000 fpr=0.5000 '
      'selection_rate=0.5000',
      '  fairness/sex: demographic_parity_difference=0.1000',
      '  baseline/logistic_regression: accuracy=0.8530']
  assert max(map(len, cli.result_lines(
      {'step': 1, **{f'a/b/m{i}': 1.0 for i in range(60)}}))) <= 100
