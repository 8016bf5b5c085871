"""The one shape of an evaluation: ``Evaluator.run(state) -> {name: value}``.

An eval line (``split`` 'eval' or 'test' in ``metrics.jsonl``) is an
``EvalLine``: one dataset and the evaluators whose keys it merges, in order
(task metrics, their ``ema_`` twins, then what the problem adds: BLEU,
samples, anomaly scores, ...). Names are the evaluators' keys; a
``prefix`` renames them (``ema_``). When an eval runs is the loop's
schedule (``--eval_every`` and the final eval; the test split at the final
eval only), the same for every evaluator.

Older code hands the loop *hooks*, ``hook(model, state) -> dict``
(``pipeline.Data.eval_hooks``, ``train.run(eval_hooks=...)``); ``FromHook``
makes one an Evaluator.
"""

import dataclasses
from typing import Callable, Protocol, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np


class Evaluator(Protocol):
  """Anything with ``run(state) -> dict``: metric name -> value."""

  def run(self, state) -> dict:
    ...


@dataclasses.dataclass
class FromHook:
  """An eval hook ``hook(model, state) -> dict`` as an Evaluator."""

  hook: Callable
  model: object

  def run(self, state) -> dict:
    return self.hook(self.model, state)


@dataclasses.dataclass
class EvalLine:
  """One line of ``metrics.jsonl``: ``evaluators`` run on one dataset.

  ``split``: the line's split ('eval' or 'test'); ``dataset_split``: what
  was evaluated (e.g. 'validation'); ``num_examples``: how many examples.
  """

  split: str
  dataset_split: str
  num_examples: int
  evaluators: Sequence[Evaluator]

  def run(self, step: int, state, writer) -> dict:
    """Runs every evaluator, writes the line; returns the merged metrics."""
    result = {}
    for evaluator in self.evaluators:
      result.update(evaluator.run(state))
    writer.write(step, self.split, {'dataset_split': self.dataset_split,
                                    'num_examples': self.num_examples,
                                    **result})
    return result


def host_params(state):
  """This process's full copy of ``state.params`` as NumPy arrays.

  For the jit layout (global arrays, replicated or sharded) and the pmap
  layout (replicated with a leading device axis: ``state.step`` is 1-D).
  """
  pmapped = state.step.ndim == 1

  def get(x):
    if pmapped:
      return np.asarray(x.addressable_data(0))[0]
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, state.params)


def host_step(state) -> int:
  return int(np.asarray(jax.device_get(
      state.step.addressable_data(0))).reshape(-1)[0])


def host_variables(state) -> dict:
  """This process's full copy of the model's variables (params + state),
  for evaluators that score the eval split on the host."""
  model_state = host_params(state.replace(params=state.model_state))
  return {'params': host_params(state), **model_state}


def batched(fn: Callable, arrays: tuple[np.ndarray, ...],
            batch_size: int) -> np.ndarray:
  """``fn(*batch)`` over the rows of ``arrays``, concatenated.

  Every call gets ``batch_size`` rows (the last batch is padded with copies
  of row 0 and the padding dropped), so a jitted ``fn`` compiles once.
  """
  n = len(arrays[0])
  out = []
  for start in range(0, n, batch_size):
    part = [a[start:start + batch_size] for a in arrays]
    real = len(part[0])
    if real < batch_size:
      part = [np.concatenate([p, np.repeat(a[:1], batch_size - real, 0)])
              for p, a in zip(part, arrays)]
    out.append(np.asarray(fn(*part))[:real])
  return np.concatenate(out)
