"""The compared workloads as a plain Flax + optax script would write them.

``jax.jit`` with a donated state and XLA's default compiler options, optax,
``optax.softmax_cross_entropy_with_integer_labels``; no dlresearch loop,
strategy or pooling. LeNet uses flax's ``nn.max_pool``; the LSTM LM is
``nn.RNN(nn.OptimizedLSTMCell)``; ResNet-18 and the GPTs reuse the library's
linen modules (plain ``flax.linen`` code), as a script importing a model
definition would. ``nanogpt_char`` uses nanoGPT's optimizer: gradient
clipping at norm 1, then AdamW with weight decay on the 2-D parameters.
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import workloads
from dlresearch import kernels
from dlresearch.models import registry


class LeNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(32, (3, 3), padding='VALID')(x))
    x = nn.relu(nn.Conv(64, (3, 3), padding='VALID')(x))
    x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
    return nn.Dense(10)(nn.relu(nn.Dense(128)(x)))


class LSTMLM(nn.Module):

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(128, 64)(tokens)
    x = nn.RNN(nn.OptimizedLSTMCell(256))(x)
    return nn.Dense(128)(x)


def _optimizer(w: workloads.Workload) -> optax.GradientTransformation:
  if w.optimizer == 'sgd':
    return optax.sgd(w.learning_rate, momentum=0.9)
  if w.optimizer == 'adam':
    return optax.adam(w.learning_rate)
  kw = w.optimizer_kwargs
  return optax.chain(
      optax.clip_by_global_norm(kw.get('grad_clip_norm', 1e9)),
      optax.adamw(w.learning_rate, b2=kw.get('adam_b2', 0.999),
                  weight_decay=kw.get('weight_decay', 0.0),
                  mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))


class Runner:
  """``round(steps) -> seconds`` of plain jitted train steps."""

  def __init__(self, name: str, batch_size: int = 0, native: bool = False):
    """``native``: Dense layers on ``dlresearch.kernels`` (loaded by the caller)."""
    w = workloads.get(name)
    self.batches = w.batches(4, batch_size or w.batch_size, seed=2)
    self.image = w.kind == 'image'
    if name == 'lenet':
      self.model = LeNet()
    elif name == 'lstm_lm':
      self.model = LSTMLM()
    else:
      self.model = registry.build(w.model, **w.model_kwargs)
    first = self.batches[0]['image' if self.image else 'inputs']
    kw = {} if name in ('lenet', 'lstm_lm') else {'train': False}
    variables = self.model.init(jax.random.PRNGKey(0), first, **kw)
    params = variables['params']
    self.extra = {k: v for k, v in variables.items() if k != 'params'}
    tx = _optimizer(w)
    self.state = (params, tx.init(params), self.extra)
    train_kw = {} if name in ('lenet', 'lstm_lm') else {'train': True}
    mutable = list(self.extra)
    model = self.model

    def step(state, x, y):
      params, opt_state, extra = state

      def loss_fn(params):
        out = model.apply({'params': params, **extra}, x, mutable=mutable,
                          **train_kw) if mutable else (
                              model.apply({'params': params}, x, **train_kw), {})
        logits, new_extra = out
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new_extra

      (loss, new_extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state,
              {**extra, **new_extra}), loss

    self.step = jax.jit(kernels.traced_with_native(step) if native else step,
                        donate_argnums=0)
    self.count = 0

  def round(self, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      b = self.batches[self.count % 4]
      self.count += 1
      x, y = (b['image'], b['label']) if self.image else (b['inputs'], b['targets'])
      self.state, loss = self.step(self.state, x, y)
    loss = float(loss)
    if not np.isfinite(loss):
      raise FloatingPointError(f'plain flax loss {loss}')
    return time.perf_counter() - t0
