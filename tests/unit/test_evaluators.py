"""dlresearch.evaluators on a real run: periodic evals on a capped validation
split, the final eval on all of it, the test split once at the end, and
keep-best ranking only the comparable periodic lines."""

import numpy as np
import pytest

from dlresearch import config as config_lib, train
from dlresearch import logging as log_lib
from dlresearch import problems
from dlresearch.tools import inference


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
  """``text_files`` with explicit train / validation / test files."""
  root = tmp_path_factory.mktemp('corpus')
  rng = np.random.default_rng(0)
  words = ('the king is dead and the queen doth weep for him my lord what '
           'say you to the clouds above fair is foul').split()
  for name, n in (('train.txt', 3000), ('validation.txt', 500),
                  ('test.txt', 300)):
    (root / name).write_text(' '.join(rng.choice(words, n)) + '\n')
  return str(root)


def test_validation_split_for_periodic_evals_test_once_and_capped_evals(
    tmp_path, corpus_dir, capsys):
  from experiments.rnn_lm import PRESETS as LM  # pylint: disable=g-import-not-at-top
  from dlresearch import policy  # pylint: disable=g-import-not-at-top
  preset = LM['shakespeare_lstm']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'dataset': 'text_files', 'manual_dir': corpus_dir,
      'data_dir': str(tmp_path / 'tfds'), 'num_steps': 15, 'eval_every': 5,
      'checkpoint_every': 5, 'keep_checkpoints': 5, 'eval_max_examples': 10,
      'best_metric': 'loss', 'best_mode': 'min', 'progress': 'lines',
      'plots': False, 'model_summary': False})
  workdir = str(tmp_path / 'run')
  result = train.run(cfg, workdir)
  data = problems.build(cfg.replace(eval_only=True), workdir, fresh=False)
  assert (data.eval_split, data.test_split) == ('validation', 'test')
  n_val, n_test = data.eval.num_examples, data.test.num_examples
  assert n_val > 10 and n_test > 0
  lines = log_lib.read_metrics(workdir)
  evals = [l for l in lines if l['split'] == 'eval']
  tests = [l for l in lines if l['split'] == 'test']
  # Periodic evals (5, 10) on the first 10 validation rows; the final one
  # (15) on all of validation; the test split once, at the end, in full.
  named = lambda lines: [(l['step'], l['dataset_split'], l['num_examples'])
                         for l in lines]
  assert named(evals) == [(5, 'validation', 10), (10, 'validation', 10),
                          (15, 'validation', n_val)]
  assert named(tests) == [(15, 'test', n_test)]
  # The two full-split evals say what and how big (the periodic ones not).
  said = [l for l in capsys.readouterr().err.splitlines() if ' eval on ' in l]
  batches = lambda n: -(-n // (cfg.eval_batch_size or cfg.batch_size))
  assert said[0] == (f'final eval on validation ({batches(n_val)} batches, '
                     f'{n_val:,} examples, batch {cfg.eval_batch_size}) ...')
  assert said[1].startswith('final eval on validation: done, ')
  assert said[2].startswith(f'test eval on test ({batches(n_test)} batch')
  assert said[3].startswith('test eval on test: done, ') and len(said) == 4
  assert result['test_loss'] == tests[0]['loss']
  # The capped eval really is the first 10 rows: recompute it by hand from
  # the checkpoint of step 5 (and check that all rows would differ).
  run = inference.restore(workdir, step=5)

  def loss(n):
    batch = data.eval.get(np.arange(n), None)
    batch['_valid'] = np.ones(n, np.float32)
    sums, _ = data.task(run.model, run.variables, batch, train=False)
    return float(sums['loss'] / sums['count'])

  assert evals[0]['loss'] == pytest.approx(loss(10), rel=1e-4)
  assert abs(loss(n_val) - loss(10)) > 1e-3
  # Keep-best ranks the periodic validation lines only (never the test line,
  # nor the uncapped final eval, which is not comparable with them).
  periodic = evals[:2]
  best_line = min(periodic, key=lambda l: l['loss'])
  best = policy.BestCheckpoint(policy.best_checkpoint_dir(workdir))
  try:
    _, info = best.restore()
  finally:
    best.close()
  assert info['step'] == best_line['step']
  assert info['metrics']['loss'] == pytest.approx(best_line['loss'], rel=1e-6)
  assert inference.restore(workdir, step='best').step == best_line['step']
