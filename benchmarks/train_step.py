r"""Train-step throughput of dlresearch against the measured CPU references.

    python benchmarks/train_step.py [--models=lenet,resnet18,lstm,gpt] [--rounds=5]

Runs ``dlresearch.train.train_step`` (jitted, donated state, the engine's own
tasks and optimizer factory) on the four workloads of shared/PERF_NOTES.md
and prints examples/s (median and spread over rounds, cycling several random
batches) next to the figures measured there on the same kind of machine for
plain Flax+optax and PyTorch eager. Nothing is asserted: it prints figures.
"""

import functools
import statistics
import time

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlresearch import config as config_lib, optim, state as state_lib, tasks, train
from dlresearch.models import registry

flags.DEFINE_list('models', ['lenet', 'resnet18', 'lstm', 'gpt'], 'Workloads.')
flags.DEFINE_integer('rounds', 5, 'Timed rounds per workload.')
flags.DEFINE_integer('steps', 20, 'Steps per round.')
FLAGS = flags.FLAGS

# examples/s from shared/PERF_NOTES.md (2 vCPU Zen 4): (plain flax, torch eager)
REFERENCE = {'lenet': (393, 1195), 'resnet18': (30, 50), 'lstm': (422, 928),
             'gpt': (36, 45)}


class BenchLeNet(nn.Module):
  """PERF_NOTES' LeNet: conv32 3x3, conv64 3x3, maxpool 2, dense 128, dense 10."""

  num_classes: int = 10
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(32, (3, 3), padding='VALID')(x))
    x = nn.relu(nn.Conv(64, (3, 3), padding='VALID')(x))
    x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(128)(x)))


def workload(name):
  """(model, task, config, batch maker)."""
  rng = np.random.default_rng(0)
  if name == 'lenet':
    make = lambda: {'image': rng.normal(size=(128, 28, 28, 1)).astype(np.float32),
                    'label': rng.integers(0, 10, 128).astype(np.int32)}
    return BenchLeNet(), tasks.Classification(), config_lib.Config(
        optimizer='adam', batch_size=128), make
  if name == 'resnet18':
    make = lambda: {'image': rng.normal(size=(64, 32, 32, 3)).astype(np.float32),
                    'label': rng.integers(0, 10, 64).astype(np.int32)}
    return (registry.build('resnet18', num_classes=10, stem='small'),
            tasks.Classification(),
            config_lib.Config(optimizer='sgd', learning_rate=0.1, batch_size=64), make)
  if name == 'lstm':
    def make():
      t = rng.integers(0, 128, (32, 65)).astype(np.int32)
      return {'inputs': t[:, :-1], 'targets': t[:, 1:]}
    return (registry.build('lstm_lm', vocab_size=128, embed_dim=64, hidden_size=256),
            tasks.LanguageModel(), config_lib.Config(optimizer='adam', batch_size=32),
            make)
  if name == 'gpt':
    def make():
      t = rng.integers(0, 512, (16, 129)).astype(np.int32)
      return {'inputs': t[:, :-1], 'targets': t[:, 1:]}
    return (registry.build('transformer_lm', vocab_size=512, num_layers=4,
                           d_model=256, num_heads=4, mlp_dim=1024, max_len=128,
                           tie_embeddings=False),
            tasks.LanguageModel(), config_lib.Config(optimizer='adam', batch_size=16),
            make)
  raise ValueError(f'unknown workload {name!r}; choose from {sorted(REFERENCE)}')


def measure(name, rounds, steps):
  model, task, cfg, make = workload(name)
  batches = [make() for _ in range(4)]
  args, kwargs = task.model_inputs(batches[0])
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args,
                                             train=False, **kwargs))['params']
  tx, _ = optim.make(cfg, 10_000, params)
  state = jax.jit(functools.partial(state_lib.create, model, tx, args, kwargs, 0))()
  step = jax.jit(train.make_train_step(model, task, tx), donate_argnums=0)
  t0 = time.perf_counter()
  state, m = step(state, batches[0])
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  rates = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    for i in range(steps):
      state, m = step(state, batches[i % len(batches)])
    jax.block_until_ready(m)
    rates.append(steps * cfg.batch_size / (time.perf_counter() - t0))
  return compile_s, rates


def main(argv):
  del argv
  print(f'jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].platform}')
  print(f'{"workload":10s} {"ex/s (median)":>14s} {"min-max":>14s} {"compile s":>10s}'
        f' {"ref flax":>9s} {"ref torch":>9s} {"vs torch":>9s}')
  for name in FLAGS.models:
    compile_s, rates = measure(name, FLAGS.rounds, FLAGS.steps)
    med = statistics.median(rates)
    flax_ref, torch_ref = REFERENCE[name]
    print(f'{name:10s} {med:14.0f} {min(rates):6.0f}-{max(rates):<7.0f} '
          f'{compile_s:10.1f} {flax_ref:9d} {torch_ref:9d} {med / torch_ref:8.2f}x',
          flush=True)


if __name__ == '__main__':
  app.run(main)
