r"""Train-step throughput of ``dlresearch.train.run`` on the benchmark workloads.

    python -m benchmarks.train_step --model=lenet --json
    python -m benchmarks.train_step --model=resnet18_cifar,gpt_small --rounds=5

Runs the library's own loop, ``train.run`` (the mesh, the jit strategy of
``parallel.py`` with its compiler options, ``train.make_train_step``, donated
state, batches from an in-memory ``pipeline.ArrayDataset`` through
``TrainIterator`` and ``strategy.batch``, the on-device metric window, a
metrics fetch every ``--steps`` steps), on random data of each workload's
shapes (benchmarks/workloads.py). A round is the time between two train
lines (``--steps`` steps, ending with the metrics fetch); the first two
rounds are warm-up (compilation, page faults) and excluded.

``--json`` prints one object per model and line: model, batch_size,
examples_per_sec (median over rounds), examples_per_sec_min/_max, rounds,
steps_per_round, compile_s (first round minus a median round: start-up,
state init and step compilation), flops_per_step and gflops_per_sec (XLA's
cost analysis of the step), peak_gflops_per_sec (a 2048x2048 matmul, 8192x8192
on a GPU, in ``--dtype``, measured in the same process), pct_of_peak, dtype,
the CPU model, core count and load average, jax version, device; on GPU
also mfu (step FLOP/s over the measured matmul peak). Without ``--json`` a
table. Nothing is asserted.

Run it with XLA's default flags (not the test suite's
``--xla_backend_optimization_level=0``, which halves these figures).
"""

import functools
import json
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from benchmarks import workloads
from dlresearch import config as config_lib, optim, state as state_lib, train
from dlresearch.data import pipeline

WARMUP = 2


def config(w: workloads.Workload, steps: int, rounds: int, batch_size: int = 0,
           **overrides) -> config_lib.Config:
  """The ``Config`` a user would write for workload ``w``."""
  return config_lib.Config(
      model=w.model, model_kwargs=dict(w.model_kwargs),
      batch_size=batch_size or w.batch_size, optimizer=w.optimizer,
      learning_rate=w.learning_rate, **w.optimizer_kwargs,
      num_steps=steps * (rounds + WARMUP), log_every=steps,
      checkpoint_every=10**9, keep_checkpoints=1, model_summary=False,
      plots=False, progress='none', compilation_cache='none', **overrides)


def step_flops(cfg: config_lib.Config, w: workloads.Workload) -> float:
  """XLA's FLOP count of one train step (cost analysis of the lowered step)."""
  model = train.build_model(cfg, {})
  batch = w.batches(1, cfg.batch_size)[0]
  args, kwargs = w.task().model_inputs(batch)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args,
                                             train=False, **kwargs))['params']
  tx, _ = optim.make(cfg, cfg.num_steps, params)
  shapes = jax.eval_shape(functools.partial(state_lib.create, model, tx, args,
                                            kwargs, 0))
  step = jax.jit(train.make_train_step(model, w.task(), tx))
  cost = step.lower(shapes, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


class _Clock:
  """A metric writer that timestamps train lines; ``between()`` runs outside
  the timed windows (compare.py runs the other frameworks' rounds there)."""

  def __init__(self, between=None):
    self.between = between
    self.start = time.perf_counter()
    self.windows, self._resume = [], self.start

  def write(self, step, split, metrics):
    del step, metrics
    if split != 'train':
      return
    now = time.perf_counter()
    self.windows.append(now - self._resume)
    if self.between is not None:
      self.between(len(self.windows))
    self._resume = time.perf_counter()

  def close(self):
    pass


def measure(name: str, rounds: int = 5, steps: int = 10, batch_size: int = 0,
            between=None, **overrides) -> dict:
  """Runs ``train.run`` on workload ``name``; returns the JSON record."""
  w = workloads.get(name)
  cfg = config(w, steps, rounds, batch_size, **overrides)
  b = cfg.batch_size
  data = pipeline.Data(pipeline.ArrayDataset(w.arrays(8 * b)),
                       pipeline.ArrayDataset(w.arrays(b, seed=1)), w.task(), {})
  clock = _Clock(between)
  with tempfile.TemporaryDirectory(prefix='dlresearch-bench-') as workdir:
    train.run(cfg, workdir, data=data, writer=clock)
  timed = clock.windows[WARMUP:]
  rates = [steps * b / t for t in timed]
  out = {'model': name, 'batch_size': b, **workloads.summary(rates),
         'rounds': len(timed), 'steps_per_round': steps,
         'compile_s': round(clock.windows[0] - float(np.median(timed)), 2),
         '_rates': rates}
  flops = step_flops(cfg, w)
  out['flops_per_step'] = flops
  out['gflops_per_sec'] = round(flops * out['examples_per_sec'] / b / 1e9, 2)
  return out


def with_peak(record: dict, peak: float) -> dict:
  record = {**record, 'peak_gflops_per_sec': round(peak, 1),
            'pct_of_peak': round(100 * record['gflops_per_sec'] / peak, 1)}
  if jax.devices()[0].platform == 'gpu':
    record['mfu'] = round(record['gflops_per_sec'] / peak, 4)
  return {**record, **workloads.machine()}


def main(argv):
  del argv
  for name in FLAGS.model:
    workloads.get(name)  # bad names fail before anything runs
  gpu = jax.devices()[0].platform == 'gpu'
  # A 2048^2 matmul is the practical peak of a CPU; a GPU needs 8192^2 to fill.
  peak = workloads.peak_gflops(8192 if gpu else 2048, dtype=FLAGS.dtype)
  if not FLAGS.json:
    print(f'{"model":15s} {"batch":>5s} {"ex/s":>8s} {"min-max":>15s} '
          f'{"compile s":>9s} {"GFLOP/s":>8s} {"% peak":>6s} {"load":>5s}')
  for name in FLAGS.model:
    rec = measure(name, FLAGS.rounds, FLAGS.steps, FLAGS.batch_size,
                  cpu_eigen_convs=FLAGS.cpu_eigen_convs, cpu_kernels=FLAGS.cpu_kernels,
                  parallelism=FLAGS.parallelism, dtype=FLAGS.dtype)
    del rec['_rates']
    rec = with_peak({**rec, 'dtype': FLAGS.dtype}, peak)
    if FLAGS.json:
      print(json.dumps(rec), flush=True)
    else:
      print(f'{name:15s} {rec["batch_size"]:5d} {rec["examples_per_sec"]:8.1f} '
            f'{rec["examples_per_sec_min"]:7.1f}-{rec["examples_per_sec_max"]:<7.1f} '
            f'{rec["compile_s"]:9.1f} {rec["gflops_per_sec"]:8.1f} '
            f'{rec["pct_of_peak"]:6.1f} {rec["load_avg_1m"]:5.2f}', flush=True)
  if not FLAGS.json:
    m = workloads.machine()
    print(f'{m["cpu"]}, {m["cpu_count"]} cores, jax {m["jax"]}; matmul peak '
          f'{peak:.0f} GFLOP/s')


def define_flags():
  """This entry point's flags (not defined on import: compare.py imports us)."""
  flags.DEFINE_list('model', list(workloads.COMPARED),
                    'Workloads: ' + ', '.join(workloads.WORKLOADS))
  flags.DEFINE_integer('rounds', 5, 'Timed rounds per workload (after 2 warm-up).')
  flags.DEFINE_integer('steps', 10, 'Steps per round.')
  flags.DEFINE_integer('batch_size', 0, 'Override the workload batch size (0: its own).')
  flags.DEFINE_bool('json', False, 'One JSON object per line.')
  flags.DEFINE_bool('cpu_eigen_convs', True, 'The library switch of that name.')
  flags.DEFINE_enum('cpu_kernels', 'auto', ['auto', 'xla', 'native'],
                    'The library switch of that name (default: its default).')
  flags.DEFINE_string('parallelism', 'jit', 'jit or pmap (the library switch).')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                    'Computation dtype (the library --dtype; parameters stay '
                    'float32); the matmul peak is measured in it too.')


FLAGS = flags.FLAGS

if __name__ == '__main__':
  define_flags()
  app.run(main)
