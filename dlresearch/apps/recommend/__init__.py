"""Recommendation on MovieLens (``experiments/recommend.py``).

- ``problem.py``: the ``ratings`` and ``retrieval`` problems and a trained
  model's top titles for a user (``user_top_titles``; ``user_view`` adds
  the scores and the user's own best-rated movies).
- ``tasks.py``: ``RatingRegression`` and ``InBatchRetrieval``.
- ``evaluators.py``: the eval hooks (bias baseline; recall/NDCG@K next to
  most-popular).
- ``metrics.py``: rating errors, ranking metrics, baselines, in-batch loss.
- ``readers.py``: the MovieLens files, dense indices, the per-user split.
"""
