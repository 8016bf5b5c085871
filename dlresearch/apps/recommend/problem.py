"""Problems ``ratings`` and ``retrieval``: recommendation.

Data (``--dataset=movielens``): MovieLens latest-small, read from the files
``python -m dlresearch.data.fetch movielens`` cached (or ``--manual_dir``).
Users and movies get dense indices over the whole table
(``readers.index_ratings``); each user's latest 20% of ratings (by
timestamp) are the eval split, the rest train
(``readers.per_user_time_split``).

- ``ratings``: explicit ratings, ``(user, item) -> rating`` with
  ``tasks.RatingRegression`` (e.g. ``matrix_factorization``, whose global
  offset starts at the train mean). Eval lines: ``rmse``, ``mae``, and the
  baseline of global mean + user + item biases fitted on train,
  ``bias_rmse`` / ``bias_mae``.
- ``retrieval``: every rating is an interaction; a two-tower model
  (``two_tower``: user ID tower; item tower of ID + genres) trains with
  in-batch negatives (``tasks.InBatchRetrieval``, log-q corrected). Eval
  lines: ``recall@K`` and ``ndcg@K`` (``--ranking_k``) over all items the
  user did not rate in training, with ``most_popular_recall@K`` /
  ``most_popular_ndcg@K`` of the most-popular baseline.

``user_top_titles`` gives a trained model's top titles for a user.
"""

import functools
import os

import numpy as np

from dlresearch import problems
from dlresearch.apps.recommend import evaluators, metrics, readers, tasks
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline

TEST_FRAC = 0.2  # each user's latest 20% of ratings are held out
READERS = {'movielens': readers.movielens}


@functools.lru_cache(maxsize=2)
def _load(dataset: str, manual_dir: str) -> tuple[dict, dict, dict]:
  if dataset not in READERS:
    raise ConfigError('dataset', f'the ratings problems read {", ".join(READERS)}'
                      f' (got {dataset!r})')
  raw = os.path.expanduser(manual_dir) if manual_dir else None
  try:
    table = READERS[dataset](raw)
  except FileNotFoundError as e:
    raise ConfigError('manual_dir', str(e)) from None
  index = readers.index_ratings(table)
  train, test = readers.per_user_time_split(index, TEST_FRAC, user_key='user')
  keys = ('user', 'item', 'rating')
  return index, {k: train[k] for k in keys}, {k: test[k] for k in keys}


def load(cfg: Config) -> tuple[dict, dict, dict]:
  """``(index, train, test)``: the item table and the two rating splits.

  ``index`` is ``readers.index_ratings``'s output (``user_ids``,
  ``item_ids``, ``titles``, ``genres``, ...); ``train`` / ``test`` hold
  ``user``, ``item`` (dense int32) and ``rating``.
  """
  return _load(cfg.dataset, cfg.manual_dir)


def _sizes(cfg: Config, index: dict, **extra) -> dict:
  return problems.model_sizes(cfg, num_users=len(index['user_ids']),
                           num_items=len(index['item_ids']),
                           num_genres=index['genres'].shape[1], **extra)


@problems.register('ratings')
def ratings(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Explicit rating regression against the bias baseline."""
  del workdir, fresh
  index, train, test = load(cfg)
  sizes = _sizes(cfg, index, init_offset=float(np.mean(train['rating'])))
  return pipeline.Data(
      pipeline.ArrayDataset(train), pipeline.ArrayDataset(test),
      tasks.RatingRegression(), sizes,
      eval_hooks=[evaluators.bias_baseline_hook(train, test)])


@problems.register('retrieval')
def retrieval(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Two-tower retrieval against the most-popular baseline."""
  del workdir, fresh
  index, train, test = load(cfg)
  genres = index['genres'].astype(np.float32)
  counts = np.bincount(train['item'], minlength=len(genres))
  log_q = np.log(np.maximum(counts, 1) / len(train['item'])).astype(np.float32)

  def features(batch):
    return {**batch, 'genres': genres[batch['item']],
            'item_log_q': log_q[batch['item']]}

  def dataset(split):
    return pipeline.ArrayDataset({'user': split['user'], 'item': split['item']},
                                 batch_fn=features)

  hook = evaluators.retrieval_hook(cfg, train, test, len(index['user_ids']),
                                   genres)
  return pipeline.Data(dataset(train), dataset(test), tasks.InBatchRetrieval(),
                       _sizes(cfg, index), eval_hooks=[hook])


def user_top_titles(model, variables, cfg: Config, user_id: int,
                    k: int = 10) -> list[str]:
  """The ``k`` best-scored titles for MovieLens user ``user_id``.

  Movies the user rated (train or held out) are never recommended.

  Raises:
    KeyError: no such user.
  """
  return [title for title, _ in user_view(model, variables, cfg, user_id,
                                           k)['recommended']]


def user_view(model, variables, cfg: Config, user_id: int, k: int = 10,
              rated: int = 5) -> dict:
  """What ``--user`` prints: the user's own best-rated movies and the
  recommendations with their scores.

  Returns ``{'num_rated': n, 'rated': [(title, rating)] (the user's
  ``rated`` highest ratings, train or held out), 'recommended': [(title,
  score)] (``k`` unseen titles, best first; the score is the model's:
  a predicted rating for matrix factorisation, a dot product for the two
  towers)}``.

  Raises:
    KeyError: no such user.
  """
  index, _, _ = load(cfg)
  where = np.searchsorted(index['user_ids'], user_id)
  if where >= len(index['user_ids']) or index['user_ids'][where] != user_id:
    raise KeyError(f'no user {user_id} in {cfg.dataset} (user ids '
                     f'{index["user_ids"][0]}..{index["user_ids"][-1]})')
  scores = evaluators.score_items(model, variables, np.array([where]),
                                  index['genres'].astype(np.float32))[0]
  mine = index['user'] == where
  seen, ratings = index['item'][mine], np.asarray(index['rating'])[mine]
  best = np.argsort(-ratings, kind='stable')[:rated]
  top = metrics.top_items(scores, seen, k)
  return {'num_rated': int(mine.sum()),
          'rated': [(str(index['titles'][seen[i]]), float(ratings[i]))
                    for i in best],
          'recommended': [(str(index['titles'][i]), float(scores[i]))
                          for i in top]}
