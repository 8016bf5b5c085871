"""The recommenders' tasks: rating regression and in-batch retrieval.

Both follow ``dlresearch.tasks``' protocol (masked metric sums with a
``count``); the exact ranking metrics over all items come from an eval
hook (``evaluators.retrieval_hook``).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from dlresearch import tasks


@dataclasses.dataclass(frozen=True)
class RatingRegression:
  """Explicit ratings: ``model(users, items) -> [B]`` predicted ratings.

  The loss is the squared error; eval adds ``rmse`` (the square root of the
  mean squared error, ``loss``) and ``mae``.
  """

  user_key: str = 'user'
  item_key: str = 'item'
  rating_key: str = 'rating'

  def model_inputs(self, batch):
    return (batch[self.user_key], batch[self.item_key]), {}

  def __call__(self, model, variables, batch, *, train, rng=None):
    args, kwargs = self.model_inputs(batch)
    pred, model_state = tasks.apply_model(model, variables, args, kwargs,
                                          train=train, rng=rng)
    err = pred.astype(jnp.float32) - batch[self.rating_key].astype(jnp.float32)
    mask = tasks.valid_mask(batch, err.shape[0])
    return {'loss': jnp.sum(err ** 2 * mask),
            'mae': jnp.sum(jnp.abs(err) * mask),
            'count': jnp.sum(mask)}, model_state

  def finalize(self, m):
    m = dict(m)
    m['rmse'] = math.sqrt(max(m['loss'], 0.0))
    return m


@dataclasses.dataclass(frozen=True)
class InBatchRetrieval:
  """Two-tower retrieval with in-batch negatives.

  ``model(users, items, genres) -> [B, B]`` logits: row ``b`` scores user
  ``b`` against every item of the batch; its own item (the diagonal) is the
  positive. Columns holding the same item as row ``b``'s positive and
  padding columns are not negatives. With ``logq_correction`` the training
  logits are reduced by the log of each item's sampling probability
  (``batch['item_log_q']``: its share of the train interactions; Yi et al.
  2019), so popular items, which are negatives more often, are not
  under-scored. Eval reports the plain in-batch ``loss`` and ``accuracy``
  (the positive ranks first in its row); recall/NDCG over all items come
  from an eval hook.
  """

  logq_correction: bool = True

  def model_inputs(self, batch):
    return (batch['user'], batch['item'], batch['genres']), {}

  def __call__(self, model, variables, batch, *, train, rng=None):
    args, kwargs = self.model_inputs(batch)
    logits, model_state = tasks.apply_model(model, variables, args, kwargs,
                                            train=train, rng=rng)
    logits = logits.astype(jnp.float32)
    b = logits.shape[0]
    if train and self.logq_correction:
      logits = logits - batch['item_log_q'].astype(jnp.float32)[None, :]
    mask = tasks.valid_mask(batch, b)
    items = batch['item']
    diagonal = jnp.eye(b, dtype=bool)
    # Padding rows keep their own (finite) diagonal, so 0 * loss stays 0.
    excluded = ((items[:, None] == items[None, :]) | (mask[None, :] == 0)
                ) & ~diagonal
    logits = jnp.where(excluded, -jnp.inf, logits)
    per_example = -jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
    correct = jnp.argmax(logits, axis=1) == jnp.arange(b)
    return {'loss': jnp.sum(per_example * mask),
            'accuracy': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}, model_state

  def finalize(self, m):
    return m
