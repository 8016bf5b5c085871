"""Tasks: how a batch becomes a loss and metric sums.

A task is a small frozen object with three methods:

- ``model_inputs(batch) -> (args, kwargs)`` for ``model.apply``;
- ``__call__(model, variables, batch, *, train, rng) -> (sums, model_state)``
  where ``sums`` are masked metric sums with a ``count`` and
  ``sums['loss'] / sums['count']`` is the training loss;
- ``finalize(metrics) -> metrics`` adds derived metrics (perplexity, ...).

Metrics are masked sums, so they aggregate exactly over uneven batches: a
step returns sums (``loss``, ``accuracy``, ...) and ``count``; sums add up
across batches, devices and hosts (``add_sums``); ``finalize_sums`` divides
once at the end. Eval batches carry ``_valid`` (0.0 for padding examples).

Per-group fairness metrics (``--audit_group``): ``Classification`` with
``groups`` adds, on eval batches that carry the group columns, per-group
confusion counts under ``group_sums/<key>/<count>`` ([num_groups] arrays,
``group_metrics.GroupMetrics``). ``finalize_sums`` keeps those as raw sums
(not divided by ``count``) and ``Classification.finalize`` turns them into
the eval-line keys ``group/<key>=<name>/<metric>`` and
``fairness/<key>/<gap>``.

This module also holds the per-example losses (``LOSSES``).
"""

import dataclasses
import math
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlresearch import group_metrics

# ---------------------------------------------------------------------------
# Per-example losses. Each returns an array of shape [batch] (or [batch, T]).


def softmax_xent(logits: jax.Array, labels: jax.Array,
                 label_smoothing: float = 0.0) -> jax.Array:
  """Softmax cross-entropy with optional label smoothing.

  ``labels`` are integer class ids, or soft targets with the logits' shape
  (rows summing to 1: Mixup/CutMix, ``data.augment.Mix``).
  """
  if labels.ndim == logits.ndim:
    targets = labels.astype(jnp.float32)
  else:
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def sigmoid_xent(logits: jax.Array, labels: jax.Array,
                 label_smoothing: float = 0.0) -> jax.Array:
  """Sigmoid binary cross-entropy, summed over classes.

  ``labels`` are integer class ids (one-hot targets) or multi-hot floats with
  the logits' shape.
  """
  if labels.ndim == logits.ndim - 1:
    labels = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  labels = labels.astype(jnp.float32)
  if label_smoothing:
    labels = labels * (1 - label_smoothing) + 0.5 * label_smoothing
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                            labels).sum(-1)


def mse(predictions: jax.Array, targets: jax.Array,
        label_smoothing: float = 0.0) -> jax.Array:
  """Mean squared error per example (mean over the non-batch axes).

  Integer ``targets`` with one fewer axis are one-hot encoded first, so MSE
  also works as a classification loss.
  """
  del label_smoothing
  if targets.ndim == predictions.ndim - 1 and jnp.issubdtype(targets.dtype, jnp.integer):
    targets = jax.nn.one_hot(targets, predictions.shape[-1])
  err = (predictions.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2
  return err.reshape(err.shape[0], -1).mean(-1)


LOSSES = {'softmax_xent': softmax_xent, 'sigmoid_xent': sigmoid_xent, 'mse': mse}


# ---------------------------------------------------------------------------
# Masked metric sums.


def classification_sums(logits: jax.Array, labels: jax.Array,
                        per_example_loss: jax.Array,
                        mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """Loss, top-1 and (for more than 5 classes) top-5 correct counts."""
  if mask is None:
    mask = jnp.ones(labels.shape[0], jnp.float32)
  mask = mask.astype(jnp.float32)
  out = {
      'loss': jnp.sum(per_example_loss * mask),
      'accuracy': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      'count': jnp.sum(mask),
  }
  if logits.shape[-1] > 5:
    top5 = jax.lax.top_k(logits, 5)[1]
    out['top5_accuracy'] = jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask)
  return out


def add_sums(a: Mapping[str, jax.Array] | None, b: Mapping[str, jax.Array]):
  """Adds two sum dicts (``a`` may be None for the first batch)."""
  if a is None:
    return dict(b)
  return {k: a[k] + b[k] for k in b}


GROUP_SUMS = 'group_sums/'  # prefix of per-group sums kept undivided


def finalize_sums(sums: Mapping[str, jax.Array]) -> dict[str, float]:
  """Divides every sum by ``count`` (a float per metric, full precision).

  Per-group sums (keys starting with ``GROUP_SUMS``) stay raw float64
  arrays, for the task's ``finalize``.
  """
  sums = jax.device_get(sums)
  raw = {k: np.asarray(v, np.float64) for k, v in sums.items()
         if k.startswith(GROUP_SUMS)}
  sums = {k: float(np.asarray(v, np.float64)) for k, v in sums.items()
          if k not in raw}
  count = sums.pop('count')
  if count <= 0:
    raise ValueError('no examples were evaluated (count is 0)')
  return {**{k: v / count for k, v in sums.items()}, **raw}


# ---------------------------------------------------------------------------
# Tasks.


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
  """One label per example: softmax/sigmoid cross-entropy or MSE.

  Labels are int class ids ``[B]``, or soft targets ``[B, C]`` (float rows
  summing to 1, from Mixup/CutMix) in training: the loss is then the
  cross-entropy against them, and accuracy counts their argmax as the label.

  ``groups``: ``((key, (group names...)), ...)``: batch columns of int group
  ids (never model inputs). On eval batches that carry them, the sums add
  each group's confusion counts and ``finalize`` the per-group metrics and
  fairness gaps (positive class ``pos_label``; see the module docstring).
  """

  input_key: str = 'image'
  label_key: str = 'label'
  mask_key: str = ''  # a [B, T] padding mask passed to sequence models
  loss: str = 'softmax_xent'
  label_smoothing: float = 0.0
  groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
  pos_label: int = 1

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
    per_example = LOSSES[self.loss](logits, labels, smoothing)
    if labels.ndim == logits.ndim:  # soft targets: metrics on their argmax
      labels = jnp.argmax(labels, -1)
    sums = classification_sums(logits, labels, per_example,
                               batch.get('_valid'))
    if not train:
      for group in self._group_metrics():
        if group.key in batch:
          sums.update(group.sums(logits, labels, batch.get('_valid'),
                                 batch[group.key]))
    return sums, model_state

  def _group_metrics(self) -> list[group_metrics.GroupMetrics]:
    return [group_metrics.GroupMetrics(key, tuple(names), self.pos_label,
                                       prefix=f'{GROUP_SUMS}{key}/')
            for key, names in self.groups]

  def finalize(self, m):
    out = {k: v for k, v in m.items() if not k.startswith(GROUP_SUMS)}
    for group in self._group_metrics():
      out.update(group.finalize(m))
    return out


def _token_sums(logits, targets, mask, valid, label_smoothing):
  """Masked per-token loss/accuracy sums; ``count`` is the number of tokens."""
  mask = mask.astype(jnp.float32)
  if valid is not None:
    mask = mask * valid[:, None]
  per_token = softmax_xent(logits, targets, label_smoothing)
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


# ---------------------------------------------------------------------------
# For tasks whose metrics are means over examples (the applications' tasks in
# ``dlresearch/apps/*/``).


def valid_mask(batch, n: int) -> jax.Array:
  """float32 ``[n]``: 1 for a real example, 0 for an eval batch's padding."""
  valid = batch.get('_valid')
  return (jnp.ones(n, jnp.float32) if valid is None
          else valid.astype(jnp.float32))


# ---------------------------------------------------------------------------
# Fine-tuning: a frozen backbone, batch statistics included.


def _flat(tree) -> dict:
  """``{'a/b/c': leaf}`` of a (frozen) nested dict."""
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def frozen_state_paths(trainable, model_state) -> frozenset:
  """Model-state paths (``'batch_stats/block1/dw_bn/mean'``) of frozen modules.

  A module is frozen when every parameter it holds is frozen (``trainable``
  is False for each); its batch statistics are then frozen too.
  """
  if trainable is None or not model_state:
    return frozenset()
  flat = _flat(trainable)
  modules: dict[str, bool] = {}
  for path, train in flat.items():
    module = path.rsplit('/', 1)[0]
    modules[module] = modules.get(module, False) or bool(train)
  stats = _flat(model_state)
  return frozenset(p for p in stats
                   if modules.get(p.split('/', 1)[1].rsplit('/', 1)[0]) is False)


@dataclasses.dataclass(frozen=True)
class FrozenBackbone:
  """A task whose frozen part does not change in training.

  ``eval_mode`` (``--probe``): the model runs in eval mode in training too
  (batch norm normalises with its running statistics and does not update
  them; no dropout), so only the trained head can change. ``keep``: model
  state paths (``frozen_state_paths``) whose new values are dropped after
  each training step (``--freeze`` of batch-normalised layers): a frozen
  layer's statistics stay bit-identical. ``frozen``: parameter paths
  (``'encoder/block_0/attn/key/kernel'``) that do not train; the loss sees
  them through ``stop_gradient``, so their gradients are zeros that cost
  nothing (XLA drops the backward products that only they need: a probe
  does no backward pass through the backbone) and the global norm that
  ``--grad_clip_norm`` clips by is the trained parameters' own. Everything
  else is the inner task.
  """

  task: Any
  eval_mode: bool = False
  keep: frozenset = frozenset()
  frozen: frozenset = frozenset()

  def model_inputs(self, batch):
    return self.task.model_inputs(batch)

  def finalize(self, m):
    return self.task.finalize(m)

  def __getattr__(self, name):  # the inner task's fields (input_key, ...)
    if name == 'task':
      raise AttributeError(name)
    return getattr(self.task, name)

  def __call__(self, model, variables, batch, *, train, rng=None):
    if self.frozen:
      flat = {p: jax.lax.stop_gradient(v) if p in self.frozen else v
              for p, v in _flat(variables['params']).items()}
      variables = {**variables,
                   'params': flax.traverse_util.unflatten_dict(flat, sep='/')}
    sums, model_state = self.task(model, variables, batch,
                                  train=train and not self.eval_mode, rng=rng)
    if train and self.keep and model_state:
      new = _flat(model_state)
      old = _flat({k: variables[k] for k in model_state})
      new.update({p: old[p] for p in self.keep if p in new})
      model_state = flax.traverse_util.unflatten_dict(new, sep='/')
    return sums, model_state


def freeze_backbone(task, *, probe: bool, trainable, model_state):
  """``task``, or a ``FrozenBackbone`` of it when something is frozen."""
  keep = frozen_state_paths(trainable, model_state)
  frozen = frozenset() if trainable is None else frozenset(
      p for p, t in _flat(trainable).items() if not t)
  if not probe and not keep and not frozen:
    return task
  return FrozenBackbone(task, eval_mode=probe, keep=keep, frozen=frozen)
