"""The task's own metrics over a dataset (loss, accuracy, ...).

``TaskMetrics`` runs a compiled ``eval_step`` (masked metric sums per batch)
over every eval batch of its dataset, adds the sums and lets the task turn
them into means. With ``prefix='ema_'`` and the EMA eval step it gives the
same metrics for ``state.ema_params`` (``--ema_decay``).
"""

import dataclasses
from typing import Callable

import jax

from dlresearch import logging as log_lib
from dlresearch import tasks
from dlresearch.data import pipeline


@dataclasses.dataclass
class Head:
  """The first ``limit`` examples of a dataset (``--eval_max_examples``)."""

  dataset: pipeline.Dataset
  limit: int

  @property
  def num_examples(self) -> int:
    return min(self.dataset.num_examples, self.limit)

  def get(self, indices, rngs):
    return self.dataset.get(indices, rngs)


@dataclasses.dataclass
class TaskMetrics:
  """``step_fn(state, batch) -> sums`` over ``dataset``, finalised by ``task``.

  ``strategy`` (``parallel.JitStrategy``/``PmapStrategy``) lays out each
  process's batch and fetches the sums; ``prefix`` renames the keys.
  """

  step_fn: Callable
  dataset: pipeline.Dataset
  task: object  # a tasks.py task: finalize(sums) -> metrics
  strategy: object
  batch_size: int
  prefix: str = ''
  # A full-split eval (the final one, the test split) says what it does and
  # shows progress (``logging.Phase``, ``--progress``); periodic ones do not.
  announce: str = ''
  progress: str = 'none'

  def run(self, state) -> dict:
    sums = None
    n = self.dataset.num_examples
    show = self.progress if self.announce and jax.process_index() == 0 else 'none'
    with log_lib.Phase(self.announce, -(-n // self.batch_size), 'batch',
                       detail=f'{n:,} examples, batch {self.batch_size}',
                       progress=show) as phase:
      for local in pipeline.eval_batches(self.dataset, self.batch_size,
                                         jax.process_index(),
                                         jax.process_count()):
        batch = self.strategy.batch(local)
        sums = tasks.add_sums(sums, self.step_fn(state, batch))
        phase.update()
    result = self.task.finalize(tasks.finalize_sums(self.strategy.host(sums)))
    return {f'{self.prefix}{k}': v for k, v in result.items()}
