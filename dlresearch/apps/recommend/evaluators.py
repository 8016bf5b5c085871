"""Eval hooks of recommendation: rating and ranking baselines.

Their metrics are exact over the whole eval split, so each hook scores it on
the host (this process's full copy of the parameters) and computes them
once. A baseline fitted on the same train split is reported in every eval
line next to the model's metric.

- ``bias_baseline_hook``: ``bias_rmse`` / ``bias_mae`` of global mean + user
  + item biases (``metrics.bias_baseline``) next to the task's ``rmse`` /
  ``mae``.
- ``retrieval_hook``: ``recall@K`` / ``ndcg@K`` (``--ranking_k``) over all
  items a user did not rate in training, and ``most_popular_recall@K`` /
  ``most_popular_ndcg@K``.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dlresearch.evaluators import base as evaluators
from dlresearch.apps.recommend import metrics
from dlresearch.config import Config


def bias_baseline_hook(train: dict, test: dict) -> Callable:
  """Eval hook: ``bias_rmse`` and ``bias_mae`` of the bias baseline.

  ``train`` / ``test`` hold ``user``, ``item``, ``rating``; the baseline
  (``metrics.bias_baseline``, its default regularisation) is fitted on
  ``train`` once.
  """
  num_users = int(max(train['user'].max(), test['user'].max())) + 1
  num_items = int(max(train['item'].max(), test['item'].max())) + 1
  base = metrics.bias_baseline(train, num_users, num_items)
  pred = base.predict(test['user'], test['item'])
  out = {'bias_rmse': metrics.rmse(pred, test['rating']),
         'bias_mae': metrics.mae(pred, test['rating'])}
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
  seen = metrics.interaction_mask(train['user'], train['item'], num_users,
                                    num_items)
  relevant = metrics.interaction_mask(test['user'], test['item'], num_users,
                                        num_items)
  popular = metrics.most_popular_baseline(train, num_users, num_items)
  baseline = {f'most_popular_recall@{k}': metrics.recall_at_k(
                  popular, seen, relevant, k),
              f'most_popular_ndcg@{k}': metrics.ndcg_at_k(
                  popular, seen, relevant, k)}

  def hook(model, state):
    scores = score_items(model, evaluators.host_variables(state),
                         np.arange(num_users), genres)
    return {f'recall@{k}': metrics.recall_at_k(scores, seen, relevant, k),
            f'ndcg@{k}': metrics.ndcg_at_k(scores, seen, relevant, k),
            **baseline}

  return hook
