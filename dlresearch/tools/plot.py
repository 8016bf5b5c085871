"""``python -m dlresearch.plot``: train/eval curves of runs into one PNG.

    python -m dlresearch.plot WORKDIR [WORKDIR...] --out=curves.png \\
        [--smoothing=0.6] [--x=wall_time] [--metrics=loss,auroc]

The figures are drawn by ``dlresearch/plot.py`` (the loop draws its own
``WORKDIR/plots/`` with it too); see there for what a panel shows.
"""

import dataclasses

from dlresearch import plot
from dlresearch.tools import entry

PROG = 'python -m dlresearch.plot'


@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m dlresearch.plot``'s flags."""

  workdirs: tuple[str, ...] = entry.option((), 'run directories',
                                           positional='+')
  out: str = entry.option(help='PNG file to write', required=True)
  smoothing: float = entry.option(0.0, 'EMA weight in [0, 1) for the train '
                                  'lines (TensorBoard style)')
  x: str = entry.option('step', 'x axis', choices=('step', 'wall_time'))
  metrics: str = entry.option('', 'comma-separated metrics, one panel each '
                              "(default: the runs' own, e.g. loss,auroc,"
                              'average_precision for anomaly runs)')
  labels: str = entry.option('', 'comma-separated run names')


def main(options: Options) -> None:
  """Draws the curves, prints the PNG's path."""
  print(plot.plot_curves(
      options.workdirs, options.out,
      metrics=options.metrics.split(',') if options.metrics else None,
      smoothing=options.smoothing, x=options.x,
      labels=options.labels.split(',') if options.labels else None))
