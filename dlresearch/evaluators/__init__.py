"""Evaluations, one shape: ``Evaluator.run(state) -> {name: value}``.

- ``base``: the ``Evaluator`` protocol, ``EvalLine`` (one eval line: a
  dataset and its evaluators), ``FromHook`` (an old-style eval hook
  ``hook(model, state) -> dict`` as an Evaluator);
- ``task_metrics``: the task's metrics on a dataset (and their ``ema_``
  twins);
- ``samples``: a sampled continuation of ``--prompt``;
- ``bleu``: decode the eval split and score it (BLEU, chrF, exact match).
"""

from dlresearch.evaluators.base import EvalLine, Evaluator, FromHook
from dlresearch.evaluators.task_metrics import Head, TaskMetrics
