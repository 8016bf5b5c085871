"""Plots (``--plots``): learning curves after every eval, and at the end a
confusion matrix of the eval split.

``WORKDIR/plots/curves.png`` is redrawn from ``metrics.jsonl`` after each
periodic eval and at the end; ``WORKDIR/plots/confusion_matrix.png`` is
drawn at the end for a classification with integer labels and at most 100
classes; an eval hook with a ``pictures(out_dir) -> [paths]`` method draws
its own at the end (anomaly runs: ``roc_pr.png``, the ROC and PR curves).
The curves show the run's own metrics (``plot.run_panels``). Only process 0 draws; a run with a custom writer (no
``metrics.jsonl``) draws nothing.
"""

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from dlresearch import tasks
from dlresearch.callbacks.base import Callback
from dlresearch.data import pipeline


def confusion_step(state, batch, *, model, task, num_classes: int):
  """``[true, predicted]`` counts of one eval batch (padding counts 0)."""
  args, kwargs = task.model_inputs(batch)
  logits = model.apply(state.variables(), *args, train=False, **kwargs)
  labels = batch[task.label_key].astype(jnp.int32).reshape(-1)
  predicted = jnp.argmax(logits, axis=-1).reshape(-1)
  valid = batch.get('_valid', jnp.ones(labels.shape, jnp.float32))
  return jnp.zeros((num_classes, num_classes), jnp.float32).at[
      labels, predicted].add(valid.reshape(-1))


def confusion_counts(model, task, dataset, num_classes, strategy, state,
                     batch_size: int):
  """Counts ``[true, predicted]`` over ``dataset``, or None (not a
  classification with integer labels, or more than 100 classes)."""
  if (not isinstance(task, tasks.Classification) or not num_classes or
      num_classes > 100 or task.loss == 'mse'):
    return None
  step = strategy.eval_step(functools.partial(
      confusion_step, model=model, task=task, num_classes=num_classes))
  counts = None
  for local in pipeline.eval_batches(dataset, batch_size,
                                     jax.process_index(), jax.process_count()):
    c = step(state, strategy.batch(local))
    counts = c if counts is None else counts + c
  return np.rint(np.asarray(strategy.host(counts))).astype(np.int64)


def write_plots(workdir: str, counts=None, class_names=None,
                split: str = '') -> None:
  """``WORKDIR/plots/curves.png`` (and ``confusion_matrix.png``)."""
  if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    return  # a custom writer: no metrics file to plot
  # Imported here: matplotlib costs ~0.4 s at start-up, before the first step.
  from dlresearch import plot  # pylint: disable=import-outside-toplevel
  out = os.path.join(workdir, 'plots')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    plot.plot_curves([workdir], os.path.join(out, 'curves.png'),
                     labels=[os.path.basename(os.path.normpath(workdir))])
  if counts is not None:
    names = class_names or [str(i) for i in range(len(counts))]
    plot.confusion_counts_png(counts, names,
                              os.path.join(out, 'confusion_matrix.png'),
                              title_split=split)


class Plots(Callback):
  """Curves after each periodic eval; curves and confusion at the end.

  ``confusion(state)`` -> the counts (``confusion_counts`` bound to the
  run) or None.
  """

  def __init__(self, workdir: str, confusion, class_names=None,
               split_name: str = 'eval', eval_hooks=()):
    self.workdir, self.confusion = workdir, confusion
    self.pictures = [h.pictures for h in eval_hooks if hasattr(h, 'pictures')]
    self.class_names, self.split_name = class_names, split_name
    self.chief = jax.process_index() == 0

  def on_eval(self, step, state, split, metrics, final):
    if self.chief and split == 'eval' and not final:
      write_plots(self.workdir)

  def on_end(self, step, state, result):
    if 'preempted' in result:
      return
    counts = self.confusion(state)  # every process: a collective
    if self.chief:
      write_plots(self.workdir, counts, self.class_names, self.split_name)
      for draw in self.pictures:
        draw(os.path.join(self.workdir, 'plots'))
