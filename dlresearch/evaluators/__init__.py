"""Evaluations, one shape: ``Evaluator.run(state) -> {name: value}``.

- ``base``: the ``Evaluator`` protocol, ``EvalLine`` (one eval line: a
  dataset and its evaluators), ``FromHook`` (an old-style eval hook
  ``hook(model, state) -> dict`` as an Evaluator);
- ``task_metrics``: the task's metrics on a dataset (and their ``ema_``
  twins);
- ``samples``: a sampled continuation of ``--prompt``;
- ``bleu``: decode the eval split and score it (BLEU, chrF, exact match);
- ``schedule``: ``eval_lines``, the lines a run writes (periodic, final,
  test) and what each runs.
"""

from dlresearch.evaluators.base import EvalLine, Evaluator, FromHook
from dlresearch.evaluators.task_metrics import Head, TaskMetrics
from dlresearch.evaluators.schedule import eval_lines
