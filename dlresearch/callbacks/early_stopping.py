"""Early stopping: no better ``--best_metric`` in
``--early_stopping_patience`` evals stops the run.

The count lives in ``KeepBest``'s tracker (and so in the checkpoints); this
callback turns its decision into a stop and says why. The loop then
checkpoints, runs the final eval (not ranked) and returns
``stopped_early: True``.
"""

from absl import logging

from dlresearch.callbacks.base import Callback
from dlresearch.callbacks.keep_best import KeepBest


class EarlyStopping(Callback):

  def __init__(self, keep_best: KeepBest):
    self.keep_best = keep_best

  def on_eval(self, step, state, split, metrics, final):
    if final or split != 'eval' or not self.keep_best.should_stop:
      return None
    tracker = self.keep_best.tracker
    logging.warning('early stopping at step %d: no better %s in %d evals '
                    '(best %s at step %s)', step, tracker.metric,
                    tracker.patience, tracker.best_value, tracker.best_step)
    return True
