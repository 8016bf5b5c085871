r"""Input pipeline throughput against what the model consumes.

    python -m benchmarks.input_pipeline [--batch_size=128] [--augment=pad_crop_flip]

Reads batches of CIFAR-shaped uint8 images (random, 32x32x3) through the
library's ``pipeline.TrainIterator`` exactly as ``train.run`` does: the
in-memory path (``--pipeline=memory``: batches made in the calling thread)
and the grain path with read threads and with worker processes
(``--grain_threads``/``--grain_workers``), with the train augmentation and
the ``scale`` normalisation of ``pipeline.image_*_fn``. Prints examples/s
per path (median over rounds) next to the examples/s the ResNet-18 CIFAR
train step consumes (``--consumer``, measured by ``benchmarks.train_step``
in the same run; 0 rounds skips it). On 2 cores the loader and the step
compete for the same cores, so the consumer figure is the one to beat.
"""

import os
import statistics
import time

from absl import app, flags
import numpy as np

from benchmarks import train_step, workloads
from dlresearch.data import pipeline

flags.DEFINE_integer('batch_size', 128, 'Batch size.')
flags.DEFINE_integer('num_examples', 10_000, 'Examples held in memory.')
flags.DEFINE_enum('augment', 'pad_crop_flip', ['none', 'flip', 'pad_crop_flip'],
                  'Train augmentation (none: the vectorised batch path).')
flags.DEFINE_integer('batches', 30, 'Batches per round.')
flags.DEFINE_integer('rounds', 3, 'Rounds per path (after one warm-up).')
flags.DEFINE_string('consumer', 'resnet18_cifar', 'Workload whose step rate '
                    "is printed alongside ('' = none).")
FLAGS = flags.FLAGS

PATHS = {'memory': (0, 0), 'grain 1 thread': (1, 0), 'grain 4 threads': (4, 0),
         'grain 2 workers': (1, 2)}


def rate(dataset, threads: int, workers: int) -> tuple[list[float], float]:
  t0 = time.perf_counter()
  it = pipeline.TrainIterator(dataset, FLAGS.batch_size, seed=0, threads=threads,
                              workers=workers)
  next(it)
  start_s = time.perf_counter() - t0
  rates = []
  for _ in range(FLAGS.rounds):
    t0 = time.perf_counter()
    for _ in range(FLAGS.batches):
      batch = next(it)
    rates.append(FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - t0))
  assert batch['image'].dtype == np.float32
  return rates, start_s


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  arrays = {'image': rng.integers(0, 256, (FLAGS.num_examples, 32, 32, 3), np.uint8),
            'label': rng.integers(0, 10, FLAGS.num_examples).astype(np.int32)}
  dataset = pipeline.ArrayDataset(
      arrays, pipeline.image_example_fn(FLAGS.augment, 0, train=True),
      pipeline.image_batch_fn('scale'))
  print(f'{workloads.cpu_model()}, {os.cpu_count()} cores, load '
        f'{os.getloadavg()[0]:.2f}; batch {FLAGS.batch_size}, augment {FLAGS.augment}')
  for name, (threads, workers) in PATHS.items():
    try:
      rates, start_s = rate(dataset, threads, workers)
    except Exception as e:  # pylint: disable=broad-exception-caught
      print(f'{name:18s} failed: {type(e).__name__}: {str(e).splitlines()[0]}')
      continue
    print(f'{name:18s} {statistics.median(rates):9.0f} examples/s '
          f'({min(rates):.0f}-{max(rates):.0f}), first batch after {start_s:.2f} s',
          flush=True)
  if FLAGS.consumer:
    rec = train_step.measure(FLAGS.consumer, rounds=3, steps=5)
    print(f'{FLAGS.consumer} train step consumes {rec["examples_per_sec"]:.0f} '
          f'examples/s (batch {rec["batch_size"]}); load {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  app.run(main)
