r"""Process start to first train step, with a cold and a warm compilation
cache; or, with ``--errors``, process start to the error line of bad input.

    python -m benchmarks.startup [--model=lenet] [--repeats=2]
    python -m benchmarks.startup --errors [--root=CHECKOUT] [--repeats=3]

``--errors`` runs each command of ``BAD_COMMANDS`` (a misspelt flag, a
misspelt model or dataset, an ill-typed value, an official TFDS name that
needs TensorFlow, a tool's unknown flag) ``--repeats`` times in a fresh
process from ``--root`` (default this checkout; another checkout, e.g. an
export of an older commit, gives the "before") and reports the median wall
time to its exit, the exit status and the error line. The issue's bar is
3 s on an idle machine.

Starts a fresh Python process per measurement that imports the library, runs
``train.run`` for one step of the workload (benchmarks/workloads.py) with
``--compilation_cache`` in a new temporary directory (cold: the first
process; warm: the next ones reuse it), and reports the wall time from
process start to the end of that step (the first train line), plus the
whole process. Nothing else is cached between processes.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import workloads

flags.DEFINE_string('model', 'lenet', 'Workload.')
flags.DEFINE_integer('repeats', 2, 'Processes per cache state (per command '
                     'with --errors).')
flags.DEFINE_bool('errors', False, 'Time to the error line of bad input.')
flags.DEFINE_string('root', None, 'With --errors: the checkout to run '
                    '(default: this one).')
FLAGS = flags.FLAGS

BAD_COMMANDS = (
    ('experiments.cnn_imagenet', '--bogus_flag=1'),
    ('experiments.cnn_imagenet', '--model=lenet'),
    ('experiments.cnn_imagenet', '--batch_size=abc'),
    ('experiments.cnn_imagenet', '--dataset=digts'),
    ('experiments.cnn_imagenet', '--dataset=mnist'),
    ('experiments.mnist1d', '--model=mlpp'),
    ('experiments.tabular', '--num_steps=-1'),
    ('experiments.monitor', '--bogus_flag=1'),
    ('dlresearch.export', '--workdir=x', '--out=y', '--bogus_flag=1'),
)

CHILD = r'''
import json, sys, tempfile, time
T0 = float(sys.argv[1])
from benchmarks import train_step, workloads
from dlresearch import train
from dlresearch.data import pipeline
w = workloads.get(sys.argv[2])
cfg = train_step.config(w, steps=1, rounds=0).replace(num_steps=1,
                                                      compilation_cache=sys.argv[3])
cfg = cfg.replace(log_every=1)
class First:
  t = None
  def write(self, step, split, metrics):
    if split == 'train' and self.t is None:
      self.t = time.time()
  def close(self):
    pass
first = First()
b = cfg.batch_size
data = pipeline.Data(pipeline.ArrayDataset(w.arrays(2 * b)),
                     pipeline.ArrayDataset(w.arrays(b, seed=1)), w.task(), {})
with tempfile.TemporaryDirectory() as workdir:
  train.run(cfg, workdir, data=data, writer=first)
print(json.dumps({'first_step_s': first.t - T0, 'process_s': time.time() - T0}))
'''


def once(cache: str) -> dict:
  t0 = time.time()
  out = subprocess.run([sys.executable, '-c', CHILD, repr(t0), FLAGS.model, cache],
                       capture_output=True, text=True, check=False,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if out.returncode:
    raise SystemExit(out.stderr.strip().splitlines()[-1])
  return json.loads(out.stdout.strip().splitlines()[-1])


def time_to_error(root: str, module: str, *argv: str) -> tuple[float, int, str]:
  """(seconds to exit, exit status, last stderr line) of one fresh process."""
  with tempfile.TemporaryDirectory(prefix='dlresearch-bad-') as workdir:
    args = [sys.executable, '-m', module, *argv]
    if module.startswith('experiments.') and module not in (
        'experiments.monitor',):
      args.append(f'--workdir={workdir}/w')
    env = dict(os.environ, PYTHONPATH=root)
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, check=False,
                         cwd=root, env=env)
    seconds = time.perf_counter() - t0
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  error = next((l for l in lines if l.startswith(('error:', 'FATAL'))),
               (lines or [''])[-1])
  return seconds, out.returncode, error


def errors_main() -> None:
  root = os.path.abspath(FLAGS.root or os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  print(f'{workloads.cpu_model()}, {os.cpu_count()} cores, load '
        f'{os.getloadavg()[0]:.2f}; {root}; median of {FLAGS.repeats}')
  for module, *argv in BAD_COMMANDS:
    runs = [time_to_error(root, module, *argv) for _ in range(FLAGS.repeats)]
    seconds = sorted(r[0] for r in runs)[len(runs) // 2]
    print(f'{seconds:6.2f} s  exit {runs[0][1]}  {module} {" ".join(argv)}: '
          f'{runs[0][2][:90]}', flush=True)
  print(f'load after: {os.getloadavg()[0]:.2f}')


def main(argv):
  del argv
  if FLAGS.errors:
    errors_main()
    return
  workloads.get(FLAGS.model)
  print(f'{workloads.cpu_model()}, {os.cpu_count()} cores, load '
        f'{os.getloadavg()[0]:.2f}; {FLAGS.model}, one train.run step')
  with tempfile.TemporaryDirectory(prefix='dlresearch-startup-cache-') as cache:
    runs = [('cold', once(cache))]
    runs += [('warm', once(cache)) for _ in range(FLAGS.repeats)]
  runs += [('no cache', once('none'))]
  for name, r in runs:
    print(f'{name:8s} first step after {r["first_step_s"]:6.2f} s, process '
          f'{r["process_s"]:6.2f} s', flush=True)
  print(f'load after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  app.run(main)
