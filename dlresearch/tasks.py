"""Tasks: how a batch becomes a loss and metric sums.

A task is a small frozen object with three methods:

- ``model_inputs(batch) -> (args, kwargs)`` for ``model.apply``;
- ``__call__(model, variables, batch, *, train, rng) -> (sums, model_state)``
  where ``sums`` are masked metric sums with a ``count`` (see metrics.py) and
  ``sums['loss'] / sums['count']`` is the training loss;
- ``finalize(metrics) -> metrics`` adds derived metrics (perplexity, ...).

Eval batches carry ``_valid`` (0.0 for padding examples).
"""

import dataclasses


from dlresearch import losses, metrics


def apply_model(model, variables, args, kwargs, *, train: bool, rng):
  """``model.apply`` in train or eval mode; returns (output, model_state)."""
  collections = [k for k in variables if k != 'params']
  if train and collections:
    return model.apply(variables, *args, train=True, rngs={'dropout': rng},
                       mutable=collections, **kwargs)
  rngs = {'dropout': rng} if train else None
  out = model.apply(variables, *args, train=train, rngs=rngs, **kwargs)
  return out, {k: variables[k] for k in collections}


@dataclasses.dataclass(frozen=True)
class Classification:
  """One label per example: softmax/sigmoid cross-entropy or MSE."""

  input_key: str = 'image'
  label_key: str = 'label'
  mask_key: str = ''  # a [B, T] padding mask passed to sequence models
  loss: str = 'softmax_xent'
  label_smoothing: float = 0.0

  def model_inputs(self, batch):
    kwargs = {'mask': batch[self.mask_key]} if self.mask_key else {}
    return (batch[self.input_key],), kwargs

  def __call__(self, model, variables, batch, *, train, rng=None):
    args, kwargs = self.model_inputs(batch)
    logits, model_state = apply_model(model, variables, args, kwargs,
                                      train=train, rng=rng)
    labels = batch[self.label_key]
    per_example = losses.LOSSES[self.loss](logits, labels, self.label_smoothing)
    sums = metrics.classification_sums(logits, labels, per_example,
                                       batch.get('_valid'))
    return sums, model_state

  def finalize(self, m):
    return m


