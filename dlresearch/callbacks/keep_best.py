"""Keep-best: ``--best_metric`` ranks the evals and keeps the best params.

At every periodic eval (and the final one, unless it saw only the first
``--eval_max_examples`` examples or a callback stopped the run early) the tracker
(``policy.BestTracker``) ranks the eval's ``best_metric``; a new best writes
params and model state to ``WORKDIR/checkpoints_best``
(``policy.BestCheckpoint``). The tracker's state rides in the regular
checkpoint's data item under ``best``, so a resumed run decides as the
uninterrupted one would. ``EarlyStopping`` reads its last decision.
"""

from dlresearch import policy
from dlresearch.callbacks.base import Callback
from dlresearch.config import ConfigError


class KeepBest(Callback):
  """The best eval of ``metric`` (``mode`` 'max'/'min'), kept on disk.

  ``directory``: where the best params go; ``rank_final``: whether the
  final eval is ranked.
  """

  state_key = 'best'

  def __init__(self, metric: str, mode: str, patience: int,
               directory: str, rank_final: bool = True,
               to_saved=lambda state: state):
    self.to_saved = to_saved  # the state as checkpointed (parallel.py)
    self.tracker = policy.BestTracker(metric, mode, patience)
    self.ckpt = policy.BestCheckpoint(directory) if directory else None
    self.rank_final = rank_final
    self.decision: policy.Decision | None = None
    self.loop = None

  def on_train_start(self, loop):
    self.loop = loop  # ``loop.stopping``: the final eval is then not ranked

  def on_eval(self, step, state, split, metrics, final):
    stopped = self.should_stop or (self.loop is not None and self.loop.stopping)
    if (split != 'eval' or self.ckpt is None or
        (final and (not self.rank_final or stopped))):
      return
    try:
      self.decision = self.tracker.update(step, metrics)
    except ValueError as e:
      raise ConfigError('best_metric', str(e)) from None
    if self.decision.is_best:
      saved = self.to_saved(state)
      self.ckpt.save(step, saved.params, saved.model_state, metrics)

  @property
  def should_stop(self) -> bool:
    return bool(self.decision and self.decision.should_stop)

  def state_dict(self) -> dict:
    return self.tracker.state_dict()

  def load_state_dict(self, state: dict) -> None:
    if state:
      self.tracker.load_state_dict(state)

  def close(self):
    if self.ckpt is not None:
      self.ckpt.close()
      self.ckpt = None


def check_selection_split(cfg, eval_split: str) -> None:
  """Model selection never uses the test split unless asked to by name
  (``eval_split``: the split the periodic evals use)."""
  if cfg.best_metric and eval_split == 'test' and cfg.eval_split != 'test':
    raise ConfigError('best_metric', f'{cfg.dataset} has no validation split, '
                      'so periodic evals use its test split; selecting on test '
                      'overstates the result. Hold out part of train '
                      "(--train_split='train[:90%]' --eval_split="
                      "'train[90%:]') or pass --eval_split=test to select on "
                      'test knowingly')
