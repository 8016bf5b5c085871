r"""Explanations of a trained run's decisions.

    python -m experiments.explain --workdir=runs/quickstart --num_examples=16 \
        --method=grad_cam
    python -m experiments.explain --workdir=runs/rt --method=integrated_gradients

The tool, its methods, flags and files: ``dlresearch/tools/explain.py``
(``--help``).
"""

from dlresearch.tools import entry, explain

if __name__ == '__main__':
  entry.main(explain)
