"""Which eval lines a run writes, named and scheduled in one place.

- ``periodic``: every ``--eval_every`` steps (not at the last step), on the
  eval split (its first ``--eval_max_examples`` examples when set); ranked
  by keep-best.
- ``final``: once, after the last step (or a stop), on all of the eval
  split; also ``--eval_only``.
- ``test``: once, after the final eval, on the held-out test split when the
  data has one (``--eval_only``: when ``--test_split`` names it); its keys
  come back as ``test_*``; never ranked.

Each line runs the task's metrics, their ``ema_`` twins (``--ema_decay``)
and hooks ``hook(model, state) -> dict`` (through ``base.FromHook``): the
eval lines the problem's and the caller's eval hooks, the test line the
problem's test hooks (``Data.test_hooks``: BLEU of the test split's
translations).
"""

import functools
from typing import Callable, Iterable

from dlresearch.evaluators.base import EvalLine, FromHook
from dlresearch.evaluators.task_metrics import Head, TaskMetrics


def eval_lines(cfg, data, model, task, strategy, eval_step: Callable,
               eval_hooks: Iterable[Callable] = ()) -> dict:
  """``{'periodic', 'final', 'test'}`` -> ``EvalLine`` (``test``: or None).

  ``eval_step(state, batch, *, model, task, ema) -> sums`` is compiled by
  ``strategy.eval_step`` once per variant (params, EMA params).
  """
  batch_size = cfg.eval_batch_size or cfg.batch_size
  steps = [('', strategy.eval_step(functools.partial(
      eval_step, model=model, task=task)))]
  if cfg.ema_decay:
    steps.append(('ema_', strategy.eval_step(functools.partial(
        eval_step, model=model, task=task, ema=True))))
  hooks = [FromHook(h, model) for h in [*data.eval_hooks, *eval_hooks]]
  test_hooks = [FromHook(h, model) for h in data.test_hooks]

  def line(dataset, split, name, hooks=hooks, full=False):
    what = lambda prefix: (f'{"final" if split == "eval" else "test"} eval'
                           f'{" of the EMA weights" if prefix else ""} on '
                           f'{name}') if full else ''
    evaluators = [TaskMetrics(fn, dataset, task, strategy, batch_size, prefix,
                              announce=what(prefix), progress=cfg.progress)
                  for prefix, fn in steps]
    return EvalLine(split, name, dataset.num_examples, evaluators + hooks)

  name = data.eval_split or 'eval'
  periodic = (Head(data.eval, cfg.eval_max_examples)
              if cfg.eval_max_examples else data.eval)
  return {'periodic': line(periodic, 'eval', name),
          'final': line(data.eval, 'eval', name, full=True),
          'test': (line(data.test, 'test', data.test_split, hooks=test_hooks,
                        full=True)
                   if data.test is not None else None)}
