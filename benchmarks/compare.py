r"""dlresearch vs plain Flax+optax vs PyTorch eager, interleaved in one run.

    python -m benchmarks.compare --torch_python=/work/benchvenv/bin/python
    python -m benchmarks.compare --model=lenet --rounds=7 --json

For each workload (benchmarks/workloads.py) three contenders take turns,
round by round: dlresearch's own ``train.run`` (benchmarks/train_step.py),
a plain Flax+optax jitted step (benchmarks/flax_plain.py) and PyTorch eager
(benchmarks/torch_worker.py, in a subprocess of ``--torch_python``). A round
is ``--steps`` steps ending with a loss/metrics fetch; rounds alternate
(ours, flax, torch, pause, ours, ...), the first two of each are warm-up and
excluded. Printed per workload: each one's median examples/s with min-max,
and the medians of the per-round ratios ours/torch and ours/flax (paired
rounds, so a load change hits all three alike), plus the CPU, the load
average before and after, and the matmul peak measured in the same run.
Without a torch interpreter (none given and torch not importable) the
PyTorch column is left out and the run says so.
"""

import datetime
import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

from benchmarks import flax_plain, train_step, workloads
from dlresearch import kernels

flags.DEFINE_list('model', list(workloads.COMPARED), 'Workloads to compare.')
flags.DEFINE_integer('rounds', 5, 'Timed rounds per contender (after 2 warm-up).')
flags.DEFINE_integer('steps', 10, 'Steps per round.')
flags.DEFINE_string('torch_python', '', 'Python with torch installed (default: '
                    'this one if it can import torch; else no PyTorch column).')
flags.DEFINE_bool('json', False, 'One JSON object per workload and line.')
flags.DEFINE_enum('cpu_kernels', 'auto', ['auto', 'xla', 'native'], 'dlresearch\'s '
                  '--cpu_kernels (auto, its default: native for the models '
                  'without convolutions). native: also a fourth contender, the '
                  'plain Flax step with its Dense layers on the native GEMM '
                  '(dlresearch.kernels), is paired with plain Flax.')
flags.DEFINE_integer('blas_threads', 0, 'With --cpu_kernels=native: the BLAS '
                     'thread count (0: the library default, 1).')
FLAGS = flags.FLAGS


class Torch:
  """The torch_worker subprocess."""

  def __init__(self, python: str):
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_worker.py')
    self.proc = subprocess.Popen([python, worker], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)

  def ask(self, **cmd) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError('the torch worker stopped; run benchmarks/torch_worker.py '
                         'by hand to see why')
    return json.loads(line)

  def close(self):
    try:
      self.ask(cmd='quit')
    except (RuntimeError, BrokenPipeError, json.JSONDecodeError):
      pass
    self.proc.wait(timeout=30)


def torch_python() -> str | None:
  if FLAGS.torch_python:
    return FLAGS.torch_python
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
    return sys.executable
  except ImportError:
    return None


def compare(name: str, rounds: int, steps: int, torch: Torch | None) -> dict:
  w = workloads.get(name)
  flax = flax_plain.Runner(name)
  native = FLAGS.cpu_kernels == 'native'
  flax_native = flax_plain.Runner(name, native=True) if native else None
  if torch is not None:
    torch.ask(cmd='setup', model=name, batch_size=w.batch_size)
  others = {'flax': [], 'torch': [], 'flax_native': []}

  def between(_):
    workloads.settle()
    others['flax'].append(flax.round(steps))
    if flax_native is not None:
      workloads.settle()
      others['flax_native'].append(flax_native.round(steps))
    if torch is not None:
      workloads.settle()
      others['torch'].append(torch.ask(cmd='round', steps=steps)['seconds'])
    workloads.settle()

  load = os.getloadavg()[0]
  ours = train_step.measure(name, rounds, steps, between=between,
                            cpu_kernels=FLAGS.cpu_kernels)
  record = {'model': name, 'batch_size': w.batch_size, 'steps_per_round': steps,
            'rounds': rounds, 'load_avg_1m_before': round(load, 2),
            'load_avg_1m_after': round(os.getloadavg()[0], 2),
            'dlresearch': {k: ours[k] for k in ('examples_per_sec',
                                                'examples_per_sec_min',
                                                'examples_per_sec_max',
                                                'gflops_per_sec')}}
  ours_rates = ours.pop('_rates')
  for key, secs in others.items():
    if not secs:
      continue
    rates = [steps * w.batch_size / s for s in secs[train_step.WARMUP:]]
    record[key] = workloads.summary(rates)
    ratios = [a / b for a, b in zip(ours_rates, rates)]
    record[f'ratio_vs_{key}'] = round(statistics.median(ratios), 3)
    record[f'ratio_vs_{key}_min'] = round(min(ratios), 3)
    record[f'ratio_vs_{key}_max'] = round(max(ratios), 3)
  if others['flax_native']:
    # examples/s of native over XLA's dots = seconds of XLA's over native
    ratios = [a / b for a, b in zip(others['flax'][train_step.WARMUP:],
                                    others['flax_native'][train_step.WARMUP:])]
    record['flax_native_vs_flax'] = round(statistics.median(ratios), 3)
    record['flax_native_vs_flax_min'] = round(min(ratios), 3)
    record['flax_native_vs_flax_max'] = round(max(ratios), 3)
  return record


def main(argv):
  del argv
  for name in FLAGS.model:
    workloads.get(name)
  python = torch_python()
  torch = Torch(python) if python else None
  if torch is None:
    print('no PyTorch: pass --torch_python=PATH (a Python with torch, e.g. '
          'pip install -e .[bench]); comparing with plain Flax only',
          file=sys.stderr)
  if FLAGS.cpu_kernels == 'native' and not kernels.configure(
      'native', threads=FLAGS.blas_threads or None):
    raise SystemExit('--cpu_kernels=native: the native GEMM did not load (see the '
                     'warning above)')
  peak = workloads.peak_gflops()
  info = {**workloads.machine(), 'date': datetime.date.today().isoformat(),
          'peak_gflops_per_sec': round(peak, 1)}
  if torch is not None:
    info['torch'] = torch.ask(cmd='setup', model='lenet', batch_size=1)['torch']
  records = []
  try:
    for name in FLAGS.model:
      rec = compare(name, FLAGS.rounds, FLAGS.steps, torch)
      records.append(rec)
      if FLAGS.json:
        print(json.dumps({**rec, **info}), flush=True)
  finally:
    if torch is not None:
      torch.close()
  info['peak_gflops_per_sec_end'] = round(workloads.peak_gflops(), 1)
  if FLAGS.json:
    return
  print(f'{info["date"]}, {info["cpu"]}, {info["cpu_count"]} cores, jax '
        f'{info["jax"]}, torch {info.get("torch", "-")}; matmul peak '
        f'{info["peak_gflops_per_sec"]:.0f} / {info["peak_gflops_per_sec_end"]:.0f} '
        'GFLOP/s (start / end)')
  print('| workload | dlresearch ex/s | plain Flax ex/s | PyTorch eager ex/s | '
        'ours / PyTorch | ours / Flax | ours % of peak | load 1m |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|')

  def cell(rec, key):
    r = rec.get(key)
    return (f'{r["examples_per_sec"]:.0f} ({r["examples_per_sec_min"]:.0f}-'
            f'{r["examples_per_sec_max"]:.0f})') if r else '-'

  def ratio(rec, key):
    k = f'ratio_vs_{key}'
    return (f'{rec[k]:.2f} ({rec[k + "_min"]:.2f}-{rec[k + "_max"]:.2f})'
            if k in rec else '-')

  def pct(rec):
    # the step's GFLOP/s (XLA's cost analysis of the step with XLA's dots) over
    # the faster of the two 2048^2 matmul measurements (the first one is often
    # taken before the host has come up to speed)
    peak = max(info['peak_gflops_per_sec'], info['peak_gflops_per_sec_end'])
    return f'{100 * rec["dlresearch"]["gflops_per_sec"] / peak:.0f}%'

  for rec in records:
    print(f'| {rec["model"]} b{rec["batch_size"]} | {cell(rec, "dlresearch")} | '
          f'{cell(rec, "flax")} | {cell(rec, "torch")} | {ratio(rec, "torch")} | '
          f'{ratio(rec, "flax")} | {pct(rec)} | {rec["load_avg_1m_before"]:.1f}-'
          f'{rec["load_avg_1m_after"]:.1f} |')
  if FLAGS.cpu_kernels == 'native':
    print('\n| workload | plain Flax + native GEMM ex/s | native / XLA dots (plain Flax, paired) |')
    print('|---|---:|---:|')
    for rec in records:
      k = 'flax_native_vs_flax'
      print(f'| {rec["model"]} b{rec["batch_size"]} | {cell(rec, "flax_native")} | '
            f'{rec[k]:.2f} ({rec[k + "_min"]:.2f}-{rec[k + "_max"]:.2f}) |')


if __name__ == '__main__':
  app.run(main)
