r"""Process start to first train step, with a cold and a warm compilation cache.

    python -m benchmarks.startup [--model=lenet] [--repeats=2]

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
flags.DEFINE_integer('repeats', 2, 'Processes per cache state.')
FLAGS = flags.FLAGS

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


def main(argv):
  del argv
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
