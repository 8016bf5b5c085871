"""Tests for dlresearch.apps.recommend: the metrics, the recommender models,
the ratings split and the tasks (padding masked; in-batch retrieval), with
the anomaly reconstruction task beside the rating task."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlresearch import tasks
from dlresearch.apps.anomaly import task as anomaly_task
from dlresearch.apps.recommend import metrics as recommend
from dlresearch.apps.recommend import readers
from dlresearch.apps.recommend import tasks as recommend_tasks
from dlresearch.models import recsys
from dlresearch.models import registry


def _tiny_ranking_case():
  scores = np.array([
      [.9, .8, .7, .6, .5, .4],  # u0: 0 seen; test {2, 5}.
      [.1, .2, .3, .4, .5, .6],  # u1: 4, 5 seen; test {0, 3}.
      [.5, .4, .3, .2, .1, .0],  # u2: no test item: left out of the means.
      [1., 1., 1., 1., 1., 1.],  # u3: all tied; test {0, 1, 2, 3} (> k).
  ])
  train = np.zeros((4, 6), bool)
  train[0, 0] = train[1, 4] = train[1, 5] = True
  test = np.zeros((4, 6), bool)
  test[0, [2, 5]] = test[1, [0, 3]] = test[3, [0, 1, 2, 3]] = True
  return scores, train, test


def test_recall_and_ndcg_at_k_by_hand():
  scores, train, test = _tiny_ranking_case()
  # Top 3 unseen: u0 -> 1, 2, 3 (hit at rank 2); u1 -> 3, 2, 1 (hit at rank
  # 1); u3 -> 0, 1, 2 (ties to the lower index; 3 hits of 4).
  d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
  recall = [1 / 2, 1 / 2, 3 / 4]
  ndcg = [d2 / (1 + d2), 1 / (1 + d2), 1.0]  # u3's ideal list has k=3 hits.
  assert recommend.recall_at_k(scores, train, test, 3) == pytest.approx(
      np.mean(recall), abs=1e-6)
  assert recommend.ndcg_at_k(scores, train, test, 3) == pytest.approx(
      np.mean(ndcg), abs=1e-6)
  per_user = jax.jit(recommend.ranking_metrics, static_argnums=3)(
      scores, train, test, 3)
  np.testing.assert_allclose(per_user['recall'], [.5, .5, 0, .75], atol=1e-6)
  np.testing.assert_allclose(per_user['ndcg'], [*ndcg[:2], 0, 1], atol=1e-6)
  np.testing.assert_array_equal(per_user['has_test'], [1, 1, 0, 1])
  # k = 1: only u1 and u3 hit at rank 1.
  assert recommend.recall_at_k(scores, train, test, 1) == pytest.approx(
      (0 + 1 / 2 + 1 / 4) / 3, abs=1e-6)
  assert recommend.ndcg_at_k(scores, train, test, 1) == pytest.approx(
      2 / 3, abs=1e-6)


def test_most_popular_and_top_titles():
  train = {'user': np.array([0, 0, 1, 1, 2, 2, 2]),
           'item': np.array([1, 2, 1, 3, 1, 2, 0])}
  scores = recommend.most_popular_baseline(train, 3, 4)
  assert scores.shape == (3, 4)
  np.testing.assert_array_equal(scores[0], [1, 3, 2, 1])
  seen = recommend.interaction_mask(train['user'], train['item'], 3, 4)
  titles = np.array(['a', 'b', 'c', 'd'])
  # User 0 saw b and c; a and d tie at 1 -> lower index first.
  assert recommend.top_titles(scores[0], seen[0], titles, k=10) == ['a', 'd']
  assert recommend.top_titles(scores[1], np.array([1, 3]), titles, 1) == ['c']
  test = np.zeros((3, 4), bool)
  test[0, 3] = test[1, 2] = True
  # u0 gets [a, d]: hit at 2; u1 gets [c, a]: hit at 1.
  assert recommend.recall_at_k(scores, seen, test, 2) == 1.0


def test_rmse_mae():
  assert recommend.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(
      math.sqrt(4 / 3))
  assert recommend.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)


def test_bias_baseline_recovers_additive_ratings():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=7), rng.normal(size=5)
  users, items = np.meshgrid(np.arange(7), np.arange(5), indexing='ij')
  train = {'user': users.ravel(), 'item': items.ravel(),
           'rating': (3.0 + a[:, None] + b[None, :]).ravel()}
  model = recommend.bias_baseline(train, user_reg=0.0, item_reg=0.0,
                                  sweeps=3)
  np.testing.assert_allclose(model.predict(train['user'], train['item']),
                             train['rating'], atol=1e-9)
  # Regularisation shrinks towards the mean; unseen users get mean + b_i.
  shrunk = recommend.bias_baseline(train, 8, 5, user_reg=100.0, item_reg=0.0)
  assert np.abs(shrunk.user_bias[:7]).max() < 0.5 * np.abs(a - a.mean()).max()
  assert shrunk.user_bias[7] == 0.0


def _low_rank_ratings(seed=0, num_users=60, num_items=50, rank=3):
  rng = np.random.default_rng(seed)
  p = rng.normal(size=(num_users, rank))
  q = rng.normal(size=(num_items, rank))
  full = 3.0 + 0.5 * rng.normal(size=(num_users, 1)) + p @ q.T / math.sqrt(rank)
  full += 0.1 * rng.normal(size=full.shape)
  observed = np.argwhere(rng.random(full.shape) < 0.4)
  rng.shuffle(observed)
  cut = int(0.8 * len(observed))
  def split(rows):
    return {'user': rows[:, 0], 'item': rows[:, 1],
            'rating': full[rows[:, 0], rows[:, 1]].astype(np.float32)}
  return split(observed[:cut]), split(observed[cut:])


def test_matrix_factorization_beats_bias_baseline():
  train, test = _low_rank_ratings()
  model = registry.build('matrix_factorization', num_users=60, num_items=50,
                         dim=3, init_offset=float(train['rating'].mean()))
  assert isinstance(model, recsys.MatrixFactorization)
  users, items = jnp.asarray(train['user']), jnp.asarray(train['item'])
  params = model.init(jax.random.key(0), users[:2], items[:2])['params']
  tx = optax.adam(0.05)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      pred = model.apply({'params': p}, users, items)
      l2 = sum(jnp.sum(p[n]['embedding'] ** 2)
               for n in ('user_factors', 'item_factors'))
      return jnp.mean((pred - train['rating']) ** 2) + 1e-4 * l2
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(300):
    params, opt_state = step(params, opt_state)
  pred = model.apply({'params': params}, test['user'], test['item'])
  mf = recommend.rmse(pred, test['rating'])
  bias = recommend.bias_rmse(train, test)
  assert mf < 0.6 * bias, (mf, bias)
  # score_all agrees with pointwise predictions.
  all_scores = model.apply({'params': params}, jnp.arange(3),
                           method='score_all')
  assert all_scores.shape == (3, 50)
  np.testing.assert_allclose(
      all_scores[2, 7], model.apply({'params': params}, jnp.array([2]),
                                    jnp.array([7]))[0], rtol=1e-5)


def test_two_tower_scores_and_in_batch_loss():
  model = registry.build('two_tower', num_users=5, num_items=6, num_genres=3,
                         dim=4)
  assert isinstance(model, recsys.TwoTower)
  users, items = jnp.array([0, 1, 4]), jnp.array([2, 5, 2])
  genres = jnp.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]], jnp.float32)
  variables = model.init(jax.random.key(0), users, items, genres)
  params = variables['params']
  logits = model.apply(variables, users, items, genres)
  u = params['user_embed']['embedding'][users]
  v = (params['item_embed']['embedding'][items]
       + genres / jnp.maximum(genres.sum(1, keepdims=True), 1)
       @ params['genre_embed'])
  np.testing.assert_allclose(logits, u @ v.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      model.apply(variables, items, genres, method='item_vectors'), v,
      rtol=1e-5, atol=1e-6)

  x = np.array([[2.0, 0.5, 1.0], [0.0, 1.0, 3.0], [1.0, -1.0, 0.5]])
  log_softmax = x - np.log(np.exp(x).sum(1, keepdims=True))
  assert recommend.in_batch_softmax_loss(x) == pytest.approx(
      -np.mean(np.diag(log_softmax)), rel=1e-6)
  # Items 0 and 2 are the same: each is masked from the other's negatives.
  masked = x.copy()
  masked[0, 2] = masked[2, 0] = -np.inf
  log_softmax = masked - np.log(np.exp(masked).sum(1, keepdims=True))
  assert recommend.in_batch_softmax_loss(x, items) == pytest.approx(
      -np.mean(np.diag(log_softmax)), rel=1e-6)
  assert recommend.in_batch_softmax_loss(x, temperature=2.0) == pytest.approx(
      float(recommend.in_batch_softmax_loss(x / 2.0)), rel=1e-6)


def test_per_user_time_split_synthetic():
  rng = np.random.default_rng(0)
  n = 400
  ratings = {'userId': rng.integers(0, 12, n),
             'timestamp': rng.integers(0, 30, n),  # Many ties.
             'row': np.arange(n), 'names': np.array(['kept', 'as is'])}
  ratings['userId'][:1] = 99  # A user with one rating keeps it in train.
  train, test = readers.per_user_time_split(ratings, test_frac=0.2)
  assert not set(train['row']) & set(test['row'])
  assert len(train['row']) + len(test['row']) == n
  np.testing.assert_array_equal(train['names'], ratings['names'])
  assert 99 in train['userId'] and 99 not in test['userId']
  for user in np.unique(ratings['userId']):
    mine = ratings['userId'] == user
    count = mine.sum()
    k = int(test['userId'].tolist().count(user))
    assert k == (0 if count == 1 else min(max(round(0.2 * count), 1),
                                          count - 1))
    # Test holds the k latest, ties broken by row order (later row = later).
    key = ratings['timestamp'][mine] * n + ratings['row'][mine]
    latest = ratings['row'][mine][np.argsort(key)][count - k:]
    np.testing.assert_array_equal(
        np.sort(test['row'][test['userId'] == user]), np.sort(latest))


def test_reconstruction_and_rating_tasks_mask_padding():
  x = jnp.arange(12.0).reshape(4, 3)
  batch = {'x': x, '_valid': jnp.array([1.0, 1.0, 1.0, 0.0])}

  class Half:
    def apply(self, variables, x, train, rngs):
      return x * 0.5

  sums, _ = anomaly_task.Reconstruction()(Half(), {'params': {}}, batch,
                                          train=False)
  want = np.mean((np.asarray(x[:3]) * 0.5) ** 2, 1).sum()
  assert float(sums['loss']) == pytest.approx(want)
  assert float(sums['count']) == 3

  class Sum:
    def apply(self, variables, users, items, train, rngs):
      return (users + items).astype(jnp.float32)

  batch = {'user': jnp.array([1, 2, 3]), 'item': jnp.array([1, 1, 0]),
           'rating': jnp.array([2.0, 4.0, 3.0]),
           '_valid': jnp.array([1.0, 1.0, 0.0])}
  task = recommend_tasks.RatingRegression()
  sums, _ = task(Sum(), {'params': {}}, batch, train=False)
  m = task.finalize(tasks.finalize_sums(sums))
  assert m['mae'] == pytest.approx(0.5)  # errors 0 and -1
  assert m['rmse'] == pytest.approx(np.sqrt(0.5))


def test_in_batch_retrieval_masks_padding_and_repeats():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(5, 5)), jnp.float32)
  items = jnp.array([3, 7, 3, 1, 9])

  class Fixed:
    def apply(self, variables, users, items, genres, train, rngs):
      return logits

  batch = {'user': jnp.arange(5), 'item': items, 'genres': jnp.zeros((5, 2)),
           '_valid': jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])}
  sums, _ = recommend_tasks.InBatchRetrieval()(Fixed(), {'params': {}},
                                               batch, train=False)
  want = recommend.in_batch_softmax_loss(logits[:4, :4], items[:4])
  assert float(sums['loss']) / float(sums['count']) == pytest.approx(
      float(want), rel=1e-6)
  # In training, log q of each column's item is subtracted.
  log_q = jnp.log(jnp.array([0.1, 0.2, 0.1, 0.3, 0.3]))
  sums, _ = recommend_tasks.InBatchRetrieval()(
      Fixed(), {'params': {}}, {**batch, 'item_log_q': log_q}, train=True)
  want = recommend.in_batch_softmax_loss((logits - log_q[None])[:4, :4],
                                         items[:4])
  assert float(sums['loss']) / 4 == pytest.approx(float(want), rel=1e-6)
