"""dlresearch.cli: presets, --tiny and flag overrides resolved into a config."""

from dlresearch import cli
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
