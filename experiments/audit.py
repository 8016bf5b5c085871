r"""Fairness audit of a trained run's predictions, by group.

    python -m experiments.audit --workdir=runs/adult --group_key=sex
    python -m experiments.audit --workdir=runs/adult --group_key=sex,race \
        --out=runs/adult/audit_sex_race

Restores the run (``dlresearch.restore``), predicts its eval split (or
``--split``) and writes to ``--out`` (default ``RUN/audit``):

- ``report.json``: per group of each ``--group_key`` column: count,
  accuracy, selection rate, TPR, FPR, precision, ECE; the gaps
  (demographic-parity difference and ratio, equalized-odds difference);
  seeded bootstrap 95% intervals for all (``--n_bootstrap``); and under
  ``data`` a data audit of the train split (rows, label rate, class balance
  and representation per group, groups below ``--min_group_size``).
- ``predictions.csv``: ``label,prediction,score,group``, one row per eval
  example (``score``: probability of class 1).
- ``{key}_{metric}.png`` and ``{key}_gaps.png``: bars with intervals.
"""

from absl import app, flags

import dlresearch
from dlresearch import cli, rai
from dlresearch.config import ConfigError

flags.DEFINE_string('workdir', None, 'The trained run to audit.')
flags.DEFINE_string('group_key', None, "Group column(s), comma-separated "
                    "(e.g. 'sex' or 'sex,race').")
flags.DEFINE_string('split', '', "Split to audit (default: the run's eval "
                    'split).')
flags.DEFINE_string('out', '', 'Output directory (default: RUN/audit).')
flags.DEFINE_string('step', '', "Checkpoint: a step, 'best', or empty for "
                    'the latest.')
flags.DEFINE_integer('n_bootstrap', 1000, 'Bootstrap resamples (>= 0; 0: no '
                     'intervals).')
flags.DEFINE_integer('seed', 0, 'Bootstrap seed.')
flags.DEFINE_integer('min_group_size', 30, 'The data audit flags smaller '
                     'groups.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}')
  if not FLAGS.workdir or not FLAGS.group_key:
    cli.fail('--workdir and --group_key are required')
  if FLAGS.n_bootstrap < 0:
    cli.fail(f'--n_bootstrap: must be >= 0 (got {FLAGS.n_bootstrap})')
  keys = [k.strip() for k in FLAGS.group_key.split(',') if k.strip()]
  try:
    run = dlresearch.restore(FLAGS.workdir, rai.step_arg(FLAGS.step))
    out = FLAGS.out or f'{run.workdir}/audit'
    report, paths = rai.audit_run(
        run, keys, out, split=FLAGS.split, n_bootstrap=FLAGS.n_bootstrap,
        seed=FLAGS.seed, min_group_size=FLAGS.min_group_size)
  except (ConfigError, FileNotFoundError, ValueError) as e:
    cli.fail(str(e))
  print(rai.audit_summary(report))
  print(f'wrote {len(paths)} files to {out}')


if __name__ == '__main__':
  app.run(main)
