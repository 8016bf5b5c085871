"""The benchmark workloads (shapes of ../shared/PERF_NOTES.md) and measuring helpers.

=============== ============================================================
lenet           conv32 3x3, conv64 3x3, max-pool 2, dense 128, dense 10;
                28x28x1, batch 128, Adam
resnet18_cifar  ResNet-18, CIFAR stem (3x3 conv, no pool), 32x32x3, batch 64,
                SGD momentum 0.9
lstm_lm         vocab 128, embed 64, LSTM 256, T 64, batch 32, Adam
gpt_small       4 layers, d 256, 4 heads, MLP 1024, T 128, vocab 512, batch 16,
                Adam
nanogpt_char    nanoGPT's CPU configuration (its README's Shakespeare-char
                command on CPU): 4 layers, d 128, 4 heads, MLP 512, block 64,
                char vocab 65, batch 12, dropout 0, tied embedding/head,
                AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1 (2-D
                weights), gradient clipping at norm 1
resnet50        ResNet-50 at 224x224x3, batch 64, SGD momentum (for GPUs)
vit_s16         ViT-S/16 at 224x224x3, batch 64, Adam (for GPUs)
=============== ============================================================

Batches are random (several, cycled: one fixed batch gets memorised and
drifts into denormals). ``lenet`` is registered here as ``bench_lenet``: it
is the library's way of building a model (and its max-pool), not one of the
library's presets.
"""

import dataclasses
import os
import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.mnist1d_table import cpu_model
from dlresearch import tasks
from dlresearch.models import cnn, registry


class BenchLeNet(nn.Module):
  """conv32 3x3, conv64 3x3, max-pool 2 (``cnn.max_pool``), dense 128, dense 10."""

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(nn.Conv(32, (3, 3), padding='VALID', dtype=self.dtype)(x))
    x = nn.relu(nn.Conv(64, (3, 3), padding='VALID', dtype=self.dtype)(x))
    x = cnn.max_pool(x, (2, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


if 'bench_lenet' not in registry.names():
  registry.register('bench_lenet', BenchLeNet)


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  model: str               # registry name
  model_kwargs: dict
  batch_size: int
  optimizer: str           # 'adam' or 'sgd' (momentum 0.9)
  learning_rate: float
  kind: str                # 'image' or 'lm'
  shape: tuple             # image HWC or (vocab, T)
  # More Config fields of the optimizer (adamw: weight_decay, adam_b2, ...).
  optimizer_kwargs: dict = dataclasses.field(default_factory=dict)

  def task(self):
    return tasks.Classification() if self.kind == 'image' else tasks.LanguageModel()

  def arrays(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random examples."""
    rng = np.random.default_rng(seed)
    if self.kind == 'image':
      return {'image': rng.normal(size=(n, *self.shape)).astype(np.float32),
              'label': rng.integers(0, self.model_kwargs.get('num_classes', 10),
                                    n).astype(np.int32)}
    vocab, length = self.shape
    t = rng.integers(0, vocab, (n, length + 1)).astype(np.int32)
    return {'inputs': t[:, :-1], 'targets': t[:, 1:]}

  def batches(self, count: int = 4, batch_size: int | None = None, seed: int = 0):
    b = batch_size or self.batch_size
    a = self.arrays(count * b, seed)
    return [{k: v[i * b:(i + 1) * b] for k, v in a.items()} for i in range(count)]


WORKLOADS = {w.name: w for w in [
    Workload('lenet', 'bench_lenet', {'num_classes': 10}, 128, 'adam', 1e-3,
             'image', (28, 28, 1)),
    Workload('resnet18_cifar', 'resnet18', {'num_classes': 10, 'stem': 'small'},
             64, 'sgd', 0.1, 'image', (32, 32, 3)),
    Workload('lstm_lm', 'lstm_lm', {'vocab_size': 128, 'embed_dim': 64,
                                    'hidden_size': 256}, 32, 'adam', 1e-3, 'lm',
             (128, 64)),
    Workload('gpt_small', 'transformer_lm', {
        'vocab_size': 512, 'num_layers': 4, 'd_model': 256, 'num_heads': 4,
        'mlp_dim': 1024, 'max_len': 128, 'tie_embeddings': False}, 16, 'adam',
             1e-3, 'lm', (512, 128)),
    Workload('nanogpt_char', 'transformer_lm', {
        'vocab_size': 65, 'num_layers': 4, 'd_model': 128, 'num_heads': 4,
        'mlp_dim': 512, 'max_len': 64, 'tie_embeddings': True}, 12, 'adamw',
             1e-3, 'lm', (65, 64), {'weight_decay': 0.1, 'adam_b2': 0.99,
                               'grad_clip_norm': 1.0}),
    Workload('resnet50', 'resnet50', {'num_classes': 1000}, 64, 'sgd', 0.1,
             'image', (224, 224, 3)),
    Workload('vit_s16', 'vit_s16', {'num_classes': 1000}, 64, 'adam', 1e-3,
             'image', (224, 224, 3)),
]}
COMPARED = ('lenet', 'resnet18_cifar', 'lstm_lm', 'gpt_small', 'nanogpt_char')


def get(name: str) -> Workload:
  if name not in WORKLOADS:
    raise SystemExit(f'unknown --model={name!r}; choose from {", ".join(WORKLOADS)}')
  return WORKLOADS[name]


def machine() -> dict:
  """What the figures were measured on (CPU, cores, load, jax, device)."""
  return {'cpu': cpu_model(), 'cpu_count': os.cpu_count(),
          'load_avg_1m': round(os.getloadavg()[0], 2), 'jax': jax.__version__,
          'device': jax.devices()[0].device_kind,
          'platform': jax.devices()[0].platform,
          'device_count': jax.device_count()}


def peak_gflops(n: int = 2048, reps: int = 10, dtype=jnp.float32) -> float:
  """Median GFLOP/s of an ``n x n`` matmul under jax.jit (the practical peak).

  Three warm-up calls, then the median of ``reps``. The host's own speed
  still moves: runs on 2026-11-30 read 188-209 GFLOP/s at their start and
  269-276 at their end, so compare.py prints both.
  """
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
  f = jax.jit(lambda a, b: a @ b)
  for _ in range(3):
    f(a, a).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / statistics.median(times) / 1e9


def summary(rates: list[float]) -> dict:
  """Median, min and max of per-round examples/s."""
  return {'examples_per_sec': round(statistics.median(rates), 2),
          'examples_per_sec_min': round(min(rates), 2),
          'examples_per_sec_max': round(max(rates), 2)}


def settle(seconds: float = 0.3) -> None:
  """A pause between frameworks' rounds: thread pools stop spinning."""
  time.sleep(seconds)
