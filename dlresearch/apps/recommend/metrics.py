"""Recommendation: rating errors, top-k ranking metrics, baselines, a loss.

Users and items are dense indices (``readers.index_ratings``);
a ratings split is a dict with int ``user``, ``item`` and float ``rating``
arrays.

Rating prediction: ``rmse`` / ``mae`` against ``bias_baseline`` (global mean
plus regularised user and item biases). In an eval step they accumulate as
sums of squared / absolute errors and a count.

Ranking: ``scores`` is ``[users, items]``; items a user rated in training
(``train_mask``) are never recommended; relevance is binary (the user's
held-out items, ``test_items``). ``ranking_metrics`` is jittable and returns
per-user values, so an eval step over a batch of users can return their sums
(``recall``, ``ndcg``, ``has_test``) and the hook divides at the end;
``recall_at_k`` and ``ndcg_at_k`` are the means over users with a held-out
item. Ties in scores go to the lower item index (``jax.lax.top_k``).
"""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Split = Mapping[str, np.ndarray]


def rmse(pred, target) -> float:
  diff = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
  return float(np.sqrt(np.mean(diff ** 2)))


def mae(pred, target) -> float:
  diff = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
  return float(np.mean(np.abs(diff)))


class BiasBaseline(NamedTuple):
  """``mean + user_bias[u] + item_bias[i]``; unseen users/items get 0 bias."""

  mean: float
  user_bias: np.ndarray
  item_bias: np.ndarray

  def predict(self, users, items) -> np.ndarray:
    return (self.mean + self.user_bias[np.asarray(users)]
            + self.item_bias[np.asarray(items)])


def bias_baseline(train: Split, num_users: int | None = None,
                  num_items: int | None = None, *, user_reg: float = 10.0,
                  item_reg: float = 10.0, sweeps: int = 5) -> BiasBaseline:
  """Fits global mean + L2-regularised biases by alternating least squares.

  Minimises ``sum (r - mean - b_u - b_i)^2 + user_reg |b_u|^2 + item_reg
  |b_i|^2`` with ``mean`` the train average; each sweep solves the item
  biases given the user biases exactly, then the user biases.
  """
  users, items = np.asarray(train['user']), np.asarray(train['item'])
  rating = np.asarray(train['rating'], np.float64)
  num_users = int(users.max()) + 1 if num_users is None else num_users
  num_items = int(items.max()) + 1 if num_items is None else num_items
  mean = float(rating.mean())
  n_user = np.bincount(users, minlength=num_users)
  n_item = np.bincount(items, minlength=num_items)
  bu, bi = np.zeros(num_users), np.zeros(num_items)
  for _ in range(sweeps):
    bi = np.bincount(items, rating - mean - bu[users],
                     minlength=num_items) / (item_reg + n_item)
    bu = np.bincount(users, rating - mean - bi[items],
                     minlength=num_users) / (user_reg + n_user)
  return BiasBaseline(mean, bu, bi)


def bias_rmse(train: Split, test: Split, **kwargs) -> float:
  """RMSE on ``test`` of ``bias_baseline(train, **kwargs)``."""
  num_users = max(int(np.max(train['user'])), int(np.max(test['user']))) + 1
  num_items = max(int(np.max(train['item'])), int(np.max(test['item']))) + 1
  model = bias_baseline(train, num_users, num_items, **kwargs)
  return rmse(model.predict(test['user'], test['item']), test['rating'])


def interaction_mask(users, items, num_users: int,
                     num_items: int) -> np.ndarray:
  """bool ``[num_users, num_items]``, True where a (user, item) pair occurs."""
  mask = np.zeros((num_users, num_items), bool)
  mask[np.asarray(users), np.asarray(items)] = True
  return mask


def ranking_metrics(scores: jax.Array, train_mask: jax.Array,
                    test_items: jax.Array, k: int) -> dict[str, jax.Array]:
  """Per-user recall@k and NDCG@k over the items not seen in training.

  Args:
    scores: ``[U, I]``, higher = recommend first.
    train_mask: bool ``[U, I]``, items seen in training (excluded).
    test_items: bool ``[U, I]``, the held-out (relevant) items.
    k: list length.

  Returns:
    ``recall`` = hits / number of test items; ``ndcg`` = DCG / ideal DCG
    with discount ``1 / log2(rank + 1)`` and the ideal list holding
    ``min(number of test items, k)`` hits; ``has_test`` = 1.0 for users with
    a test item (both metrics are 0 for the others). All ``[U]`` float32.
  """
  scores = jnp.where(train_mask, -jnp.inf, jnp.asarray(scores, jnp.float32))
  _, top = jax.lax.top_k(scores, k)
  hits = jnp.take_along_axis(jnp.asarray(test_items), top, axis=1)
  hits = hits.astype(jnp.float32)
  n_test = jnp.sum(test_items, axis=1)
  has_test = (n_test > 0).astype(jnp.float32)
  discount = 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))
  ideal = jnp.cumsum(discount)[jnp.clip(n_test, 1, k) - 1]
  return {'recall': hits.sum(1) / jnp.maximum(n_test, 1),
          'ndcg': (hits * discount).sum(1) / ideal * has_test,
          'has_test': has_test}


def _mean_over_users(name, scores, train_mask, test_items, k) -> float:
  per_user = ranking_metrics(scores, train_mask, test_items, k)
  users = float(per_user['has_test'].sum())
  return float(per_user[name].sum()) / users if users else float('nan')


def recall_at_k(scores, train_mask, test_items, k: int) -> float:
  """Mean recall@k over users with a held-out item (see ranking_metrics)."""
  return _mean_over_users('recall', scores, train_mask, test_items, k)


def ndcg_at_k(scores, train_mask, test_items, k: int) -> float:
  """Mean NDCG@k over users with a held-out item (see ranking_metrics)."""
  return _mean_over_users('ndcg', scores, train_mask, test_items, k)


def most_popular_baseline(train: Split, num_users: int,
                          num_items: int) -> np.ndarray:
  """Scores ``[U, I]``: each item's number of train ratings, for every user.

  A read-only broadcast view; ``ranking_metrics`` removes each user's seen
  items, so this recommends the most rated items the user has not rated.
  """
  counts = np.bincount(np.asarray(train['item']), minlength=num_items)
  return np.broadcast_to(counts.astype(np.float32), (num_users, num_items))


def top_titles(scores_row, seen, titles, k: int = 10) -> list[str]:
  """Titles of the ``k`` best-scored items not in ``seen``.

  ``seen`` is a bool mask over items or an array of item indices; ties go
  to the lower item index.
  """
  return [str(titles[i]) for i in top_items(scores_row, seen, k)]


def top_items(scores_row, seen, k: int = 10) -> np.ndarray:
  """Indices of the ``k`` best-scored items not in ``seen`` (as ``top_titles``)."""
  scores = np.array(scores_row, np.float64)
  seen = np.asarray(seen)
  scores[seen if seen.dtype == bool else seen.astype(int)] = -np.inf
  order = np.argsort(-scores, kind='stable')
  return order[scores[order] > -np.inf][:k]


def in_batch_softmax_loss(logits: jax.Array, items: jax.Array | None = None,
                          temperature: float = 1.0) -> jax.Array:
  """Mean softmax cross-entropy of ``[B, B]`` logits, diagonal as target.

  Row ``b`` scores user ``b`` against every item of the batch; its own item
  is the positive, the others are negatives. With ``items`` (the batch's item
  indices), columns holding the same item as row ``b``'s positive are masked
  out of row ``b``'s negatives (a repeated popular item is not a negative
  for itself).
  """
  logits = jnp.asarray(logits, jnp.float32) / temperature
  b = logits.shape[0]
  diagonal = jnp.eye(b, dtype=bool)
  if items is not None:
    same = items[:, None] == items[None, :]
    logits = jnp.where(same & ~diagonal, -jnp.inf, logits)
  log_probs = jax.nn.log_softmax(logits, axis=1)
  return -jnp.mean(jnp.diagonal(log_probs))
