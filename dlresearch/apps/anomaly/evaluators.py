"""Eval hook of anomaly detection: the model's scores and IsolationForest's.

The metrics are exact over the whole eval split, not sums over batches, so
the hook scores the eval split on the host (this process's full copy of
the parameters, fixed-size jitted batches: ``evaluators.batched``) and computes
them once. IsolationForest, fitted on the same normal train rows, is
computed at the first eval and reported in every eval line.

``anomaly_hook``: ``auroc``, ``average_precision``,
``precision_at_alert_rate``, ``recall_at_alert_rate`` (``--alert_rate``)
of the model's anomaly scores, and the same four of scikit-learn's
IsolationForest prefixed ``iforest_``.
"""

from collections.abc import Callable
import functools
import os

import jax
import numpy as np

from dlresearch.evaluators import base as evaluators
from dlresearch.apps.anomaly import metrics
from dlresearch.config import Config


def anomaly_scores(model, variables, x: np.ndarray, supervised: bool,
                   batch_size: int) -> np.ndarray:
  """Per-example anomaly scores, higher = more anomalous.

  An autoencoder scores by reconstruction error (mean squared error over
  the features); a two-class classifier by ``logit[1] - logit[0]`` (the
  log-odds of the anomaly class; monotone in its probability without its
  saturation ties).
  """
  variables = jax.device_put(variables, jax.local_devices()[0])

  @jax.jit
  def score(xb):
    out = model.apply(variables, xb, train=False)
    if supervised:
      return out[:, 1] - out[:, 0]
    return metrics.reconstruction_error(xb, out)

  return evaluators.batched(score, (x,), batch_size)


def _named(found: dict, alert_rate: float, prefix: str = '') -> dict:
  """``anomaly_metrics`` keys -> the eval line's (``*_at_alert_rate``)."""
  return {f'{prefix}auroc': found['auroc'],
          f'{prefix}average_precision': found['average_precision'],
          f'{prefix}precision_at_alert_rate':
              found[f'precision@{alert_rate:g}'],
          f'{prefix}recall_at_alert_rate': found[f'recall@{alert_rate:g}']}


def anomaly_hook(cfg: Config, x_eval: np.ndarray, y_eval: np.ndarray,
                 supervised: bool, x_baseline: np.ndarray) -> Callable:
  """Eval hook: the model's anomaly metrics and IsolationForest's.

  Args:
    cfg: the run's config (``alert_rate``, ``eval_batch_size``, ``seed``).
    x_eval: the eval inputs; ``y_eval`` their labels (1 = anomaly).
    supervised: the model is a classifier (else an autoencoder).
    x_baseline: the rows IsolationForest is fitted on (the normal train
      rows: what the autoencoder trains on). It is fitted with seed 0 at the
      first eval; its scores are reused after.
  """
  rates = (cfg.alert_rate,)
  batch_size = cfg.eval_batch_size or cfg.batch_size

  @functools.cache
  def baseline_scores() -> np.ndarray:
    flat = lambda x: x.reshape(len(x), -1)
    return metrics.isolation_forest_scores(flat(x_baseline), flat(x_eval),
                                           seed=0)

  @functools.cache
  def baseline() -> dict:
    return _named(metrics.anomaly_metrics(y_eval, baseline_scores(), rates),
                  cfg.alert_rate, 'iforest_')

  def hook(model, state):
    scores = anomaly_scores(model, evaluators.host_variables(state), x_eval,
                            supervised, batch_size)
    hook.scores = scores
    out = _named(metrics.anomaly_metrics(y_eval, scores, rates),
                 cfg.alert_rate)
    return {**out, **baseline()}

  def pictures(out_dir: str) -> list[str]:
    """``out_dir/roc_pr.png``: ROC and PR curves of the last eval's scores
    beside IsolationForest's (the plots callback draws it at the end)."""
    if hook.scores is None:
      return []
    from dlresearch import plot  # pylint: disable=import-outside-toplevel
    fig = plot.roc_pr_figure(
        y_eval, {'model': hook.scores, 'IsolationForest': baseline_scores()},
        title='eval split')
    return [plot.save(fig, os.path.join(out_dir, 'roc_pr.png'))]

  hook.scores, hook.pictures = None, pictures
  return hook
