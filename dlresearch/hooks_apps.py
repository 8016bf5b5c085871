"""Eval hooks of the applications: anomaly scores, rating and ranking baselines.

Their metrics are exact over the whole eval split, not sums over batches,
so each hook scores the eval split on the host (this process's full copy
of the parameters, fixed-size jitted batches) and computes the metrics once.
A baseline fitted on the same train split is computed at the first eval and
reported in every eval line next to the model's metric.

- ``anomaly_hook``: ``auroc``, ``average_precision``,
  ``precision_at_alert_rate``, ``recall_at_alert_rate`` (``--alert_rate``)
  of the model's anomaly scores, and the same four of scikit-learn's
  IsolationForest prefixed ``iforest_``.
- ``bias_baseline_hook``: ``bias_rmse`` / ``bias_mae`` of global mean + user
  + item biases (``recommend.bias_baseline``) next to the task's ``rmse`` /
  ``mae``.
- ``retrieval_hook``: ``recall@K`` / ``ndcg@K`` (``--ranking_k``) over all
  items a user did not rate in training, and ``most_popular_recall@K`` /
  ``most_popular_ndcg@K``.
"""

from collections.abc import Callable
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlresearch import anomaly, hooks, recommend
from dlresearch.config import Config


def host_variables(state) -> dict:
  """This process's full copy of the model's variables (params + state)."""
  model_state = hooks.host_params(state.replace(params=state.model_state))
  return {'params': hooks.host_params(state), **model_state}


def batched(fn: Callable, arrays: tuple[np.ndarray, ...],
            batch_size: int) -> np.ndarray:
  """``fn(*batch)`` over the rows of ``arrays``, concatenated.

  Every call gets ``batch_size`` rows (the last batch is padded with copies
  of row 0 and the padding dropped), so a jitted ``fn`` compiles once.
  """
  n = len(arrays[0])
  out = []
  for start in range(0, n, batch_size):
    part = [a[start:start + batch_size] for a in arrays]
    real = len(part[0])
    if real < batch_size:
      part = [np.concatenate([p, np.repeat(a[:1], batch_size - real, 0)])
              for p, a in zip(part, arrays)]
    out.append(np.asarray(fn(*part))[:real])
  return np.concatenate(out)


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
    return anomaly.reconstruction_error(xb, out)

  return batched(score, (x,), batch_size)


def _named(metrics: dict, alert_rate: float, prefix: str = '') -> dict:
  """``anomaly_metrics`` keys -> the eval line's (``*_at_alert_rate``)."""
  return {f'{prefix}auroc': metrics['auroc'],
          f'{prefix}average_precision': metrics['average_precision'],
          f'{prefix}precision_at_alert_rate':
              metrics[f'precision@{alert_rate:g}'],
          f'{prefix}recall_at_alert_rate': metrics[f'recall@{alert_rate:g}']}


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
  def baseline() -> dict:
    flat = lambda x: x.reshape(len(x), -1)
    scores = anomaly.isolation_forest_scores(flat(x_baseline), flat(x_eval),
                                             seed=0)
    return _named(anomaly.anomaly_metrics(y_eval, scores, rates),
                  cfg.alert_rate, 'iforest_')

  def hook(model, state):
    scores = anomaly_scores(model, host_variables(state), x_eval, supervised,
                            batch_size)
    out = _named(anomaly.anomaly_metrics(y_eval, scores, rates),
                 cfg.alert_rate)
    return {**out, **baseline()}

  return hook


def bias_baseline_hook(train: dict, test: dict) -> Callable:
  """Eval hook: ``bias_rmse`` and ``bias_mae`` of the bias baseline.

  ``train`` / ``test`` hold ``user``, ``item``, ``rating``; the baseline
  (``recommend.bias_baseline``, its default regularisation) is fitted on
  ``train`` once.
  """
  num_users = int(max(train['user'].max(), test['user'].max())) + 1
  num_items = int(max(train['item'].max(), test['item'].max())) + 1
  base = recommend.bias_baseline(train, num_users, num_items)
  pred = base.predict(test['user'], test['item'])
  out = {'bias_rmse': recommend.rmse(pred, test['rating']),
         'bias_mae': recommend.mae(pred, test['rating'])}
  return lambda model, state: dict(out)


def score_items(model, variables, users: np.ndarray,
                genres: np.ndarray | None = None) -> np.ndarray:
  """Scores ``[len(users), num_items]`` of every item for ``users``.

  A rating model (``score_all``: predicted ratings) or a two-tower model
  (``user_vectors`` . ``item_vectors``; ``genres`` is the item table's
  multi-hot genres).
  """
  variables = jax.device_put(variables, jax.local_devices()[0])
  users = jnp.asarray(users, jnp.int32)
  if hasattr(model, 'score_all'):
    return np.asarray(model.apply(variables, users, method='score_all'))
  u = model.apply(variables, users, method='user_vectors')
  items = jnp.arange(genres.shape[0], dtype=jnp.int32)
  v = model.apply(variables, items, jnp.asarray(genres, jnp.float32),
                  method='item_vectors')
  return np.asarray(u @ v.T)


def retrieval_hook(cfg: Config, train: dict, test: dict, num_users: int,
                   genres: np.ndarray) -> Callable:
  """Eval hook: recall@K and NDCG@K of the model and of most-popular.

  Every user is scored against every item; items the user rated in
  ``train`` are excluded; the relevant items are the user's ``test``
  items. Users without a test item do not count.
  """
  k = cfg.ranking_k
  num_items = genres.shape[0]
  seen = recommend.interaction_mask(train['user'], train['item'], num_users,
                                    num_items)
  relevant = recommend.interaction_mask(test['user'], test['item'], num_users,
                                        num_items)
  popular = recommend.most_popular_baseline(train, num_users, num_items)
  baseline = {f'most_popular_recall@{k}': recommend.recall_at_k(
                  popular, seen, relevant, k),
              f'most_popular_ndcg@{k}': recommend.ndcg_at_k(
                  popular, seen, relevant, k)}

  def hook(model, state):
    scores = score_items(model, host_variables(state), np.arange(num_users),
                         genres)
    return {f'recall@{k}': recommend.recall_at_k(scores, seen, relevant, k),
            f'ndcg@{k}': recommend.ndcg_at_k(scores, seen, relevant, k),
            **baseline}

  return hook
