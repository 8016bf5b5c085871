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
import jax.numpy as jnp
import numpy as np

from dlresearch.evaluators import base as evaluators
from dlresearch.apps.anomaly import metrics
from dlresearch.config import Config


def anomaly_scores(model, variables, x: np.ndarray, supervised: bool,
                   batch_size: int, score: str = 'mse',
                   x_reference: np.ndarray | None = None) -> np.ndarray:
  """Per-example anomaly scores, higher = more anomalous.

  An autoencoder scores by its reconstruction errors: ``score`` ``'mse'``
  (mean squared error over the features), ``'standardized'`` or
  ``'mahalanobis'`` (``metrics.error_scores``, fitted on the errors of
  ``x_reference``, held-out normal rows); a two-class classifier by
  ``logit[1] - logit[0]`` (the log-odds of the anomaly class; monotone in
  its probability without its saturation ties).
  """
  variables = jax.device_put(variables, jax.local_devices()[0])

  @jax.jit
  def logit_or_mse(xb):
    out = model.apply(variables, xb, train=False)
    if supervised:
      return out[:, 1] - out[:, 0]
    return metrics.reconstruction_error(xb, out)

  if supervised or score == 'mse':
    return evaluators.batched(logit_or_mse, (x,), batch_size)

  @jax.jit
  def error(xb):
    out = model.apply(variables, xb, train=False)
    return (jnp.asarray(out, jnp.float32) - jnp.asarray(xb, jnp.float32)
            ).reshape(xb.shape[0], -1)

  return metrics.error_scores(
      evaluators.batched(error, (x,), batch_size),
      evaluators.batched(error, (x_reference,), batch_size), score)


def _named(found: dict, alert_rate: float, prefix: str = '') -> dict:
  """``anomaly_metrics`` keys -> the eval line's (``*_at_alert_rate``)."""
  return {f'{prefix}auroc': found['auroc'],
          f'{prefix}average_precision': found['average_precision'],
          f'{prefix}precision_at_alert_rate':
              found[f'precision@{alert_rate:g}'],
          f'{prefix}recall_at_alert_rate': found[f'recall@{alert_rate:g}']}


def anomaly_hook(cfg: Config, x_eval: np.ndarray, y_eval: np.ndarray,
                 supervised: bool, x_baseline: np.ndarray,
                 x_baseline_eval: np.ndarray | None = None,
                 x_reference: np.ndarray | None = None) -> Callable:
  """Eval hook: the model's anomaly metrics and IsolationForest's.

  Args:
    cfg: the run's config (``alert_rate``, ``eval_batch_size``,
      ``anomaly_score``).
    x_eval: the eval inputs; ``y_eval`` their labels (1 = anomaly).
    supervised: the model is a classifier (else an autoencoder).
    x_baseline: the rows IsolationForest is fitted on (all the normal train
      rows; the autoencoder trains on them less any ``x_reference``). It is
      fitted with seed 0 at the first eval; its scores are reused after.
    x_baseline_eval: the eval rows as IsolationForest sees them (None:
      ``x_eval``); the creditcard baseline keeps the standard features
      whatever ``--feature_scaling`` and ``--time_feature`` give the model.
    x_reference: held-out normal rows whose reconstruction errors fit the
      ``standardized`` and ``mahalanobis`` scores (``--anomaly_score``).
  """
  x_baseline_eval = x_eval if x_baseline_eval is None else x_baseline_eval
  rates = (cfg.alert_rate,)
  batch_size = cfg.eval_batch_size or cfg.batch_size

  @functools.cache
  def baseline_scores() -> np.ndarray:
    flat = lambda x: x.reshape(len(x), -1)
    return metrics.isolation_forest_scores(flat(x_baseline),
                                           flat(x_baseline_eval), seed=0)

  @functools.cache
  def baseline() -> dict:
    return _named(metrics.anomaly_metrics(y_eval, baseline_scores(), rates),
                  cfg.alert_rate, 'iforest_')

  def hook(model, state):
    scores = anomaly_scores(model, evaluators.host_variables(state), x_eval,
                            supervised, batch_size, cfg.anomaly_score,
                            x_reference)
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
