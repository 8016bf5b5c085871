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
import math

import jax.numpy as jnp

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
    # Label smoothing regularises training; eval reports the plain loss.
    smoothing = self.label_smoothing if train else 0.0
    per_example = losses.LOSSES[self.loss](logits, labels, smoothing)
    sums = metrics.classification_sums(logits, labels, per_example,
                                       batch.get('_valid'))
    return sums, model_state

  def finalize(self, m):
    return m




def _token_sums(logits, targets, mask, valid, label_smoothing):
  """Masked per-token loss/accuracy sums; ``count`` is the number of tokens."""
  mask = mask.astype(jnp.float32)
  if valid is not None:
    mask = mask * valid[:, None]
  per_token = losses.softmax_xent(logits, targets, label_smoothing)
  return {'loss': jnp.sum(per_token * mask),
          'accuracy': jnp.sum((jnp.argmax(logits, -1) == targets) * mask),
          'count': jnp.sum(mask)}


def _per_token_finalize(m, bits_name):
  m = dict(m)
  m['perplexity'] = math.exp(min(m['loss'], 700.0))
  m[bits_name] = m['loss'] / math.log(2)
  return m


@dataclasses.dataclass(frozen=True)
class LanguageModel:
  """Next-token prediction: ``inputs`` [B, T] -> logits [B, T, V] vs ``targets``.

  Positions where ``targets_mask`` is 0 (padding) do not count. Eval adds
  ``perplexity`` and bits per token, named ``bits_name`` (``bits_per_char``
  for character-level models).
  """

  bits_name: str = 'bits_per_token'
  label_smoothing: float = 0.0

  def model_inputs(self, batch):
    return (batch['inputs'],), {}

  def __call__(self, model, variables, batch, *, train, rng=None):
    logits, model_state = apply_model(model, variables, (batch['inputs'],), {},
                                      train=train, rng=rng)
    mask = batch.get('targets_mask', jnp.ones_like(batch['targets']))
    sums = _token_sums(logits, batch['targets'], mask, batch.get('_valid'),
                       self.label_smoothing if train else 0.0)
    return sums, model_state

  def finalize(self, m):
    return _per_token_finalize(m, self.bits_name)


@dataclasses.dataclass(frozen=True)
class Seq2Seq:
  """Encoder-decoder: (``inputs``, ``targets_in``) -> logits vs ``targets``.

  ``inputs_mask`` marks real source tokens; ``targets_mask`` real targets.
  """

  label_smoothing: float = 0.0

  def model_inputs(self, batch):
    return (batch['inputs'], batch['targets_in']), {'src_mask': batch['inputs_mask']}

  def __call__(self, model, variables, batch, *, train, rng=None):
    args, kwargs = self.model_inputs(batch)
    logits, model_state = apply_model(model, variables, args, kwargs,
                                      train=train, rng=rng)
    sums = _token_sums(logits, batch['targets'], batch['targets_mask'],
                       batch.get('_valid'), self.label_smoothing if train else 0.0)
    return sums, model_state

  def finalize(self, m):
    return _per_token_finalize(m, 'bits_per_token')
