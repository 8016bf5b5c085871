r"""Drift monitoring of a trained run: live data against its training data.

    python -m experiments.monitor --workdir=runs/adult --live=test
    python -m experiments.monitor --workdir=runs/adult --live=batch.npz

The tool, its statistics, flags and files: ``dlresearch/tools/monitor.py``
(``--help``).
"""

from dlresearch.tools import entry, monitor

if __name__ == '__main__':
  entry.main(monitor)
