r"""Input pipeline throughput against what the train step consumes.

    python -m benchmarks.input_pipeline                  # ImageNet's path
    python -m benchmarks.input_pipeline --tiny           # a few seconds' smoke run
    python -m benchmarks.input_pipeline --images=cifar   # small in-memory images

``--images=jpeg`` (default): the path an ImageNet run takes
(``--pipeline=grain``): each example is a JPEG-encoded photo of ImageNet's
typical size (500x375, 375x500, 500x333; made from scikit-learn's two
bundled photos, re-cropped and re-encoded at quality 90), decoded by the
same function TFDS's NumPy data source calls for an ``Image`` feature
(``tfds.features.Image.decode_example_np``), then ``--augment`` at
``--image_size`` (``crop_flip``: RandomResizedCrop + flip,
``pipeline.image_example_fn``; ``--randaugment_ops=2`` adds the presets'
RandAugment), stacked, normalised with ImageNet's mean/std
(``pipeline.image_batch_fn``), all through ``pipeline.TrainIterator`` as
``train.run`` builds it: 0 workers (``--grain_threads`` read threads in the
trainer's process) and 1, 2, ... worker processes (``--workers``). Reading
the ArrayRecord file and parsing the example's proto are left out.
Next to it, the train step of ``--consumer`` (default ``resnet50`` at
224x224, ``benchmarks.train_step``) on this host: the images/s the input
path has to reach so as not to slow training. Run it on the training host
(a GPU's step rate is what the loader must feed); ``--target`` adds the
cores needed for a given rate. On a 2-core host the loader and the step
compete for the cores, so each figure is measured alone.

``--images=cifar``: random 32x32 uint8 images held in memory (the CIFAR
path), in memory vs grain threads vs workers, next to ``resnet18_cifar``.
"""

import functools
import io
import math
import os
import statistics
import time

from absl import app, flags
import numpy as np

from benchmarks import train_step, workloads
from dlresearch.data import pipeline

flags.DEFINE_enum('images', 'jpeg', ['jpeg', 'cifar'],
                  'jpeg: encoded photos decoded per example (ImageNet); '
                  'cifar: 32x32 arrays in memory.')
flags.DEFINE_integer('batch_size', 0, 'Batch size (0: 64 for jpeg, 128 for '
                     'cifar).')
flags.DEFINE_integer('num_examples', 0, 'Distinct examples (0: 256 for jpeg, '
                     '10,000 for cifar).')
flags.DEFINE_integer('image_size', 224, 'jpeg: the training crop.')
flags.DEFINE_string('augment', '', "Train augmentation ('': crop_flip for "
                    'jpeg, pad_crop_flip for cifar; any value of --augment).')
flags.DEFINE_integer('randaugment_ops', 0, 'jpeg: RandAugment ops per image '
                     'after the crop (0: none; the ImageNet presets use 2).')
flags.DEFINE_float('randaugment_magnitude', 9.0, 'jpeg: RandAugment magnitude '
                   '(0-10 scale; std 0.5 as the presets).')
flags.DEFINE_list('workers', ['0', '1', '2'], 'jpeg: grain worker processes '
                  'per row (0: read threads in this process).')
flags.DEFINE_integer('threads', 2, 'Grain read threads per process (the '
                     '--grain_threads default).')
flags.DEFINE_integer('batches', 8, 'Batches per round.')
flags.DEFINE_integer('rounds', 3, 'Rounds per row (after the first batch).')
flags.DEFINE_string('consumer', '', "Workload whose train step rate is "
                    "printed alongside ('': resnet50 for jpeg, resnet18_cifar "
                    "for cifar; 'none': skip).")
flags.DEFINE_integer('consumer_batch', 0, 'The consumer step\'s batch (0: '
                     'the workload\'s; 16 for resnet50 on a CPU).')
flags.DEFINE_integer('consumer_steps', 2, 'Consumer steps per round.')
flags.DEFINE_float('target', 0.0, 'Also print the cores needed to feed this '
                   'many images/s (e.g. a GPU step rate measured elsewhere).')
flags.DEFINE_bool('tiny', False, 'A smoke run: 16 images, batch 8, 2 batches, '
                  'one round, 0 and 1 workers, the lenet step.')
FLAGS = flags.FLAGS

# ImageNet's common sizes (height, width); its train JPEGs average ~110 KB
# (ILSVRC2012_img_train.tar: 138 GB for 1.28M images).
SIZES = ((375, 500), (500, 375), (333, 500))
CIFAR_PATHS = {'memory': (0, 0), 'grain 1 thread': (1, 0),
               'grain 4 threads': (4, 0), 'grain 2 workers': (1, 2)}


@functools.lru_cache(maxsize=1)
def _image_feature():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.features.Image(shape=(None, None, 3))


class JpegSource:
  """``source[i]`` -> ``{'image': uint8 [H, W, 3], 'label'}`` decoded from
  JPEG bytes the way TFDS's data source decodes an ``Image`` feature.
  Picklable (grain sends it to its worker processes)."""

  def __init__(self, encoded: list[bytes], labels: np.ndarray):
    self.encoded, self.labels = encoded, labels

  def __len__(self):
    return len(self.encoded)

  def __getitem__(self, index: int) -> dict:
    return {'image': _image_feature().decode_example_np(self.encoded[index]),
            'label': self.labels[index]}


def jpegs(n: int, seed: int = 0) -> list[bytes]:
  """``n`` photos at ImageNet's sizes, JPEG quality 90."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    photo = photos[i % len(photos)]
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    size = SIZES[i % len(SIZES)]
    image = Image.fromarray(photo[y:y + ch, x:x + cw]).resize(
        (size[1], size[0]), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format='JPEG', quality=90)
    out.append(buf.getvalue())
  return out


def rate(dataset, batch_size: int, threads: int, workers: int):
  """(images/s per round, seconds to the first batch), through the iterator
  ``train.run`` uses."""
  t0 = time.perf_counter()
  it = pipeline.TrainIterator(dataset, batch_size, seed=0, threads=threads,
                              workers=workers)
  try:
    next(it)
    first_s = time.perf_counter() - t0
    rates = []
    for _ in range(FLAGS.rounds):
      t0 = time.perf_counter()
      for _ in range(FLAGS.batches):
        batch = next(it)
      rates.append(FLAGS.batches * batch_size / (time.perf_counter() - t0))
  finally:
    it.close()
  assert batch['image'].dtype == np.float32 and len(batch['image']) == batch_size
  return rates, first_s


def rows(batch_size: int, n: int):
  """(name, dataset, threads, workers) for each row of the table."""
  if FLAGS.images == 'cifar':
    rng = np.random.default_rng(0)
    arrays = {'image': rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
              'label': rng.integers(0, 10, n).astype(np.int32)}
    dataset = pipeline.ArrayDataset(
        arrays, pipeline.image_example_fn(FLAGS.augment or 'pad_crop_flip', 0,
                                          train=True),
        pipeline.image_batch_fn('scale'))
    return [(name, dataset, t, w) for name, (t, w) in CIFAR_PATHS.items()]
  encoded = jpegs(n)
  ra = (f' + RandAugment n{FLAGS.randaugment_ops} m{FLAGS.randaugment_magnitude:g}'
        if FLAGS.randaugment_ops else '')
  print(f'{n} JPEGs, mean {np.mean([len(e) for e in encoded]) / 1e3:.0f} KB '
        f'(ImageNet train: ~110 KB); augment {FLAGS.augment or "crop_flip"}'
        f'{ra} at {FLAGS.image_size}, imagenet normalisation')
  dataset = pipeline.SourceDataset(
      JpegSource(encoded, np.arange(n, dtype=np.int64) % 1000),
      pipeline.image_example_fn(
          FLAGS.augment or 'crop_flip', FLAGS.image_size, train=True,
          randaugment_ops=FLAGS.randaugment_ops,
          randaugment_magnitude=FLAGS.randaugment_magnitude,
          randaugment_magnitude_std=0.5 if FLAGS.randaugment_ops else 0.0),
      pipeline.image_batch_fn('imagenet'))
  out = []
  for w in map(int, FLAGS.workers):
    name = (f'{FLAGS.threads} threads, no workers' if w == 0 else
            f'{w} worker{"s" if w > 1 else ""}')
    out.append((name, dataset, FLAGS.threads, w))
  return out


def main(argv):
  del argv
  if FLAGS.tiny:
    FLAGS.num_examples, FLAGS.batch_size = FLAGS.num_examples or 16, 8
    FLAGS.batches, FLAGS.rounds, FLAGS.workers = 2, 1, ['0', '1']
    FLAGS.consumer, FLAGS.consumer_batch = FLAGS.consumer or 'lenet', 8
    FLAGS.consumer_steps = 1
  jpeg = FLAGS.images == 'jpeg'
  batch_size = FLAGS.batch_size or (64 if jpeg else 128)
  n = FLAGS.num_examples or (256 if jpeg else 10_000)
  consumer = FLAGS.consumer or ('resnet50' if jpeg else 'resnet18_cifar')
  if consumer != 'none':
    workloads.get(consumer)  # a bad name fails before anything runs
  print(f'{workloads.cpu_model()}, {os.cpu_count()} cores, load '
        f'{os.getloadavg()[0]:.2f}; batch {batch_size}')
  table = rows(batch_size, n)
  print(f'{"path":26s} {"images/s":>9s} {"min-max":>13s} {"first batch":>11s}')
  per_worker = None
  for name, dataset, threads, workers in table:
    try:
      rates, first_s = rate(dataset, batch_size, threads, workers)
    except Exception as e:  # pylint: disable=broad-exception-caught
      print(f'{name:26s} failed: {type(e).__name__}: {str(e).splitlines()[0]}')
      continue
    median = statistics.median(rates)
    if jpeg and workers == 1:
      per_worker = median
    print(f'{name:26s} {median:9.0f} {min(rates):6.0f}-{max(rates):<6.0f} '
          f'{first_s:10.2f}s', flush=True)
  step_rate = None
  if consumer != 'none':
    batch = FLAGS.consumer_batch or (16 if consumer == 'resnet50' else 0)
    rec = train_step.measure(consumer, rounds=2, steps=FLAGS.consumer_steps,
                             batch_size=batch)
    step_rate = rec['examples_per_sec']
    print(f'{consumer} train step (batch {rec["batch_size"]}, this host): '
          f'{step_rate:.1f} images/s; load {os.getloadavg()[0]:.2f}')
  if per_worker:
    for what, need in (('the step above', step_rate), ('--target', FLAGS.target)):
      if need:
        print(f'to feed {what} ({need:.0f} images/s): ~{math.ceil(need / per_worker)} '
              f'worker processes (cores) at {per_worker:.0f} images/s each '
              f'(--grain_workers)')


if __name__ == '__main__':
  app.run(main)
