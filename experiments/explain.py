r"""Explanations of a trained run's decisions.

    python -m experiments.explain --workdir=runs/quickstart --num_examples=16 \
        --method=grad_cam
    python -m experiments.explain --workdir=runs/rt --method=integrated_gradients
    python -m experiments.explain --workdir=runs/adult --num_examples=1 \
        --method=integrated_gradients

Restores the run and attributes the first ``--num_examples`` examples of
its eval split (or ``--split``) to their inputs, for the predicted class
(``--target=prediction``) or the true one (``--target=label``). Methods:

- images: ``saliency``, ``smoothgrad``, ``integrated_gradients``,
  ``grad_cam`` (CNNs; ``--layer``, default the last feature map): one PNG
  overlay per example;
- text: ``integrated_gradients`` (= ``token_attributions``, on the token
  embedding) and ``attention_rollout`` (Transformers): ``tokens.html``, one
  line of coloured tokens per example;
- feature vectors (tabular): ``saliency``, ``smoothgrad``,
  ``integrated_gradients``: the ``--top_k`` features per example, as JSON
  and a PNG bar chart.

``report.json`` (in ``--out``, default ``RUN/explain_<method>``) lists each
example (label, prediction, target logit, file) and, for integrated
gradients, the completeness gap ``|sum(attr) - (f(x) - f(baseline))|``.
"""

from absl import app, flags

import dlresearch
from dlresearch import cli, rai
from dlresearch.config import ConfigError

flags.DEFINE_string('workdir', None, 'The trained run to explain.')
flags.DEFINE_string('method', 'integrated_gradients', 'Attribution method.')
flags.DEFINE_integer('num_examples', 16, 'Examples explained (> 0).')
flags.DEFINE_string('split', '', "Split (default: the run's eval split).")
flags.DEFINE_string('out', '', 'Output directory (default: '
                    'RUN/explain_<method>).')
flags.DEFINE_string('step', '', "Checkpoint: a step, 'best', or empty for "
                    'the latest.')
flags.DEFINE_integer('steps', 64, 'Integrated-gradients path steps (> 0).')
flags.DEFINE_string('layer', '', 'Grad-CAM layer / text embedding module.')
flags.DEFINE_string('target', 'prediction', "'prediction' or 'label'.")
flags.DEFINE_integer('top_k', 10, 'Features listed per tabular example.')
flags.DEFINE_integer('seed', 0, 'SmoothGrad noise seed.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}')
  if not FLAGS.workdir:
    cli.fail('--workdir is required')
  for name in ('num_examples', 'steps', 'top_k'):
    if FLAGS[name].value <= 0:
      cli.fail(f'--{name}: must be > 0 (got {FLAGS[name].value})')
  try:
    run = dlresearch.restore(FLAGS.workdir, rai.step_arg(FLAGS.step))
    out = FLAGS.out or f'{run.workdir}/explain_{FLAGS.method}'
    report = rai.explain_run(
        run, FLAGS.method, out, num_examples=FLAGS.num_examples,
        split=FLAGS.split, steps=FLAGS.steps, layer=FLAGS.layer,
        target=FLAGS.target, top_k=FLAGS.top_k, seed=FLAGS.seed)
  except (ConfigError, FileNotFoundError, ValueError) as e:
    cli.fail(str(e))
  print(rai.explain_summary(report))
  print(f'wrote {len(report["files"]) + 1} files to {out}')


if __name__ == '__main__':
  app.run(main)
