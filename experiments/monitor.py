r"""Drift monitoring of a trained run: live data against its training data.

    python -m experiments.monitor --workdir=runs/adult --live=test
    python -m experiments.monitor --workdir=runs/adult --live=test \
        --live_filter=sex=Female
    python -m experiments.monitor --workdir=runs/quickstart --live=test \
        --live_transform=rotate:30
    python -m experiments.monitor --workdir=runs/adult --live=batch.npz

Compares a live window with the run's training split (each subsampled to
``--max_rows``): PSI and KS per feature, MMD with a permutation p-value,
the shift of the predicted-class and score distributions, and calibration
drift when the live window has labels. ``--live`` is a split of the run's
dataset or a ``.npz`` with model inputs (under the input key, e.g.
``features``/``image``, or ``x``) and optionally ``label``;
``--live_filter=COLUMN=GROUP`` keeps one group's rows;
``--live_transform=noise:SIGMA|rotate:DEGREES`` shifts the inputs.
``--features``: per-feature tests on the model inputs (``inputs``) or on
its ``pre_logits`` embedding (``embeddings``; ``auto``: inputs up to 256
values). Writes ``report.json`` to ``--out`` (default ``RUN/monitor``) and
appends each alert to ``RUN/metrics.jsonl`` as ``{"step", "split":
"monitor", "alert", "live", ...}``.
"""

from absl import app, flags

import dlresearch
from dlresearch import cli, rai
from dlresearch.config import ConfigError

flags.DEFINE_string('workdir', None, 'The trained run to monitor.')
flags.DEFINE_string('live', None, 'A split of the run\'s dataset (test, '
                    'test[:50%]) or a .npz file.')
flags.DEFINE_string('live_filter', '', 'COLUMN=GROUP: only that group\'s '
                    'rows of the live split (e.g. sex=Female).')
flags.DEFINE_string('live_transform', '', 'noise:SIGMA or rotate:DEGREES '
                    'applied to the live inputs.')
flags.DEFINE_string('features', 'auto', 'auto, inputs or embeddings.')
flags.DEFINE_integer('max_rows', 5000, 'Rows per window (> 0).')
flags.DEFINE_string('out', '', 'Output directory (default: RUN/monitor).')
flags.DEFINE_string('step', '', "Checkpoint: a step, 'best', or empty for "
                    'the latest.')
flags.DEFINE_integer('seed', 0, 'Subsampling, noise and permutation seed.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}')
  if not FLAGS.workdir or not FLAGS.live:
    cli.fail('--workdir and --live are required')
  if FLAGS.max_rows <= 0:
    cli.fail(f'--max_rows: must be > 0 (got {FLAGS.max_rows})')
  try:
    run = dlresearch.restore(FLAGS.workdir, rai.step_arg(FLAGS.step))
    out = FLAGS.out or f'{run.workdir}/monitor'
    report = rai.monitor_run(
        run, FLAGS.live, out, live_filter=FLAGS.live_filter,
        live_transform=FLAGS.live_transform, features=FLAGS.features,
        max_rows=FLAGS.max_rows, seed=FLAGS.seed)
  except (ConfigError, FileNotFoundError, ValueError) as e:
    cli.fail(str(e))
  print(rai.monitor_summary(report))
  print(f'wrote {out}/report.json; {len(report["alerts"])} alert line(s) '
        f'appended to {run.workdir}/metrics.jsonl')


if __name__ == '__main__':
  app.run(main)
