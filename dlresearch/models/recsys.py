"""Recommender models: matrix factorisation and a two-tower retrieval model.

Users and items are dense indices
(``dlresearch.apps.recommend.readers.index_ratings``).

``MatrixFactorization`` predicts explicit ratings::

    rating = model.apply(variables, users, items)              # [B]
    scores = model.apply(variables, users, method='score_all')  # [B, items]

``TwoTower`` scores users against items by a dot product and is trained with
in-batch negatives
(``dlresearch.apps.recommend.metrics.in_batch_softmax_loss``)::

    logits = model.apply(variables, users, items, item_genres)  # [B, B]
    u = model.apply(variables, users, method='user_vectors')    # [B, dim]
    v = model.apply(variables, items, genres, method='item_vectors')
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlresearch.models import registry

Array = jax.Array


class MatrixFactorization(nn.Module):
  """Rating ``offset + user_bias[u] + item_bias[i] + <p_u, q_i>``.

  ``init_offset`` starts the global offset (e.g. at the train mean rating);
  biases start at zero; the factors ``p`` (``user_factors``) and ``q``
  (``item_factors``) at N(0, init_scale^2). Weight decay on the
  factors and biases is the trainer's business.
  """

  num_users: int
  num_items: int
  dim: int = 32
  init_offset: float = 0.0
  init_scale: float = 0.1
  dtype: Any = jnp.float32

  def setup(self):
    init = nn.initializers.normal(self.init_scale)
    self.user_factors = nn.Embed(self.num_users, self.dim, embedding_init=init,
                                 dtype=self.dtype)
    self.item_factors = nn.Embed(self.num_items, self.dim, embedding_init=init,
                                 dtype=self.dtype)
    zeros = nn.initializers.zeros
    self.user_bias = nn.Embed(self.num_users, 1, embedding_init=zeros,
                              dtype=self.dtype)
    self.item_bias = nn.Embed(self.num_items, 1, embedding_init=zeros,
                              dtype=self.dtype)
    self.offset = self.param(
        'offset', nn.initializers.constant(self.init_offset), ())

  def __call__(self, users: Array, items: Array, train: bool = False) -> Array:
    del train
    dot = jnp.sum(self.user_factors(users) * self.item_factors(items), -1)
    return (self.offset + self.user_bias(users)[..., 0]
            + self.item_bias(items)[..., 0] + dot)

  def score_all(self, users: Array) -> Array:
    """Predicted ratings of ``users`` for every item, ``[B, num_items]``."""
    p = self.user_factors(users)
    q = jnp.asarray(self.item_factors.embedding, self.dtype)
    item_bias = jnp.asarray(self.item_bias.embedding[:, 0], self.dtype)
    return (self.offset + self.user_bias(users) + item_bias[None]
            + p @ q.T)


class TwoTower(nn.Module):
  """User tower (ID embedding) and item tower (ID + genre embedding bag).

  The item vector is the item's ID embedding plus the mean of its genres'
  embeddings (``item_genres`` is a multi-hot ``[B, num_genres]``; an item
  with no genre gets only its ID embedding). Scores are dot products.
  """

  num_users: int
  num_items: int
  num_genres: int
  dim: int = 32
  dtype: Any = jnp.float32

  def setup(self):
    init = nn.initializers.normal(0.1)
    self.user_embed = nn.Embed(self.num_users, self.dim, embedding_init=init,
                               dtype=self.dtype)
    self.item_embed = nn.Embed(self.num_items, self.dim, embedding_init=init,
                               dtype=self.dtype)
    self.genre_embed = self.param('genre_embed', init,
                                  (self.num_genres, self.dim))

  def user_vectors(self, users: Array) -> Array:
    return self.user_embed(users)

  def item_vectors(self, items: Array, item_genres: Array) -> Array:
    genres = jnp.asarray(item_genres, self.dtype)
    count = jnp.maximum(genres.sum(-1, keepdims=True), 1)
    bag = (genres / count) @ jnp.asarray(self.genre_embed, self.dtype)
    return self.item_embed(items) + bag

  def __call__(self, users: Array, items: Array, item_genres: Array,
               train: bool = False) -> Array:
    """In-batch logits ``[B, B]``: user ``b`` against each item of the batch."""
    del train
    return self.user_vectors(users) @ self.item_vectors(items, item_genres).T


registry.register('matrix_factorization', MatrixFactorization)
registry.register('two_tower', TwoTower)
