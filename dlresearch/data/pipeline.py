"""Input pipelines: global batches that depend only on (seed, step).

The global batch at step ``s`` is a fixed function of the seed and ``s``:
epoch ``e = s // steps_per_epoch`` is a seeded permutation of the split, and
step ``s`` takes the next ``batch_size`` indices of it (the epoch's remainder
is dropped). Each process reads only its own contiguous slice of the global
batch. Per-example augmentation draws from ``rng(seed, step, position)``;
batch-level Mixup/CutMix from ``rng(seed, step)`` (``MIX_STREAM``).
So the iterator state is just the next step: a resumed run, or a run with a
different number of processes, sees exactly the same global batches.

Two ways to read examples, same batches either way:
- ``ArrayDataset``: the split lives in memory as NumPy arrays and a batch is a
  fancy index (fast on 2 cores; see shared/PERF_NOTES.md).
- ``SourceDataset``: examples are read one by one from a random-access source
  (``tfds.data_source`` over ArrayRecord), decoded and augmented in grain
  threads or worker processes; for data that does not fit in memory.
"""

import dataclasses
import functools
import os
import re
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np

from dlresearch.data import augment as augment_lib
from dlresearch.data import transforms

Example = dict[str, np.ndarray]
# (example, rng or None) -> example. rng is None at eval time.
ExampleFn = Callable[[Example, np.random.Generator | None], Example]
# batch -> batch, vectorised (e.g. normalisation).
BatchFn = Callable[[Example], Example]
# (training batch, rng of (seed, step)) -> batch: Mixup/CutMix
# (``augment.Mix``), after ``batch_fn``; never applied to eval batches.
MixFn = Callable[[Example, np.random.Generator], Example]
# The last word of a batch-level rng's seed, (seed, step, 0, MIX_STREAM): no
# per-example rng (seed, step, position) can be equal to it.
MIX_STREAM = 0x6D6978


class ExampleError(ValueError):
  """One example could not be read or transformed: one line naming it (its
  index in the split, and the file when the reader names one).

  ``first_batch`` is True when it stopped the first batch a
  ``TrainIterator`` was asked for (nothing trained: the start failed).
  """

  first_batch = False


class WorkerError(RuntimeError):
  """A grain worker process died (killed, out of memory, crashed)."""

  first_batch = False


class Dataset(Protocol):
  num_examples: int

  def get(self, indices: np.ndarray, rngs: list | None) -> Example:
    """The examples at ``indices`` stacked into a batch."""


@dataclasses.dataclass
class ArrayDataset:
  """A split held in memory as a dict of equal-length NumPy arrays."""

  arrays: Mapping[str, np.ndarray]
  example_fn: ExampleFn | None = None
  batch_fn: BatchFn | None = None
  mix_fn: MixFn | None = None  # training batches only (``_BatchAt``)

  @property
  def num_examples(self) -> int:
    return len(next(iter(self.arrays.values())))

  def get(self, indices, rngs):
    batch = {k: v[indices] for k, v in self.arrays.items()}
    if self.example_fn is not None:
      examples = [self.example_fn({k: v[i] for k, v in batch.items()},
                                  None if rngs is None else rngs[i])
                  for i in range(len(indices))]
      batch = _stack(examples)
    return self.batch_fn(batch) if self.batch_fn else batch


@dataclasses.dataclass
class SourceDataset:
  """A split read example by example from a random-access source."""

  source: Any  # len() and __getitem__ -> dict of numpy
  example_fn: ExampleFn | None = None
  batch_fn: BatchFn | None = None
  keys: tuple[str, ...] | None = None  # the features to keep
  mix_fn: MixFn | None = None  # training batches only (``_BatchAt``)

  @property
  def num_examples(self) -> int:
    return len(self.source)

  def get(self, indices, rngs):
    examples = []
    for i, index in enumerate(indices):
      try:
        ex = self.source[int(index)]
        if self.keys is not None:
          ex = {k: ex[k] for k in self.keys}
        if self.example_fn is not None:
          ex = self.example_fn(ex, None if rngs is None else rngs[i])
      except Exception as e:  # pylint: disable=broad-except
        # In a grain worker this crosses to the trainer, which stops with
        # this one line (the original is chained for debugging).
        reason = ' '.join(str(e).split()) or type(e).__name__
        raise ExampleError(f'could not read example {int(index)} of the '
                           f'split ({len(self.source)} examples): '
                           f'{reason:.300}') from e
      examples.append(ex)
    batch = _stack(examples)
    return self.batch_fn(batch) if self.batch_fn else batch


def _stack(examples: list[Example]) -> Example:
  return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, n]).permutation(n)


def global_indices(step: int, *, num_examples: int, batch_size: int,
                   seed: int) -> np.ndarray:
  """The example indices of the global batch at ``step``."""
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise ValueError(
        f'the batch size {batch_size} is larger than the split '
        f'({num_examples} examples); use a smaller --batch_size')
  epoch, k = divmod(step, per_epoch)
  return _permutation(seed, epoch, num_examples)[k * batch_size:(k + 1) * batch_size]


def local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  if global_batch % process_count:
    raise ValueError(f'global batch {global_batch} does not split over '
                     f'{process_count} processes')
  per = global_batch // process_count
  return slice(process_index * per, (process_index + 1) * per)


@dataclasses.dataclass
class TrainIterator:
  """Yields this process's slice of the global batch, step after step.

  ``state()``/the constructor's ``step`` are all it takes to resume.
  """

  dataset: Dataset
  batch_size: int  # global
  seed: int
  step: int = 0  # the next step to produce
  process_index: int = 0
  process_count: int = 1
  threads: int = 0  # grain read threads; 0 = read in the calling thread
  workers: int = 0  # grain worker processes

  def __post_init__(self):
    self._slice = local_slice(self.batch_size, self.process_index, self.process_count)
    self._iter: Iterator[Example] | None = None
    self._served = False  # a batch was returned

  def batch_at(self, step: int) -> Example:
    """This process's slice of the global batch at ``step`` (pure)."""
    return self._batcher()(step)

  def _batcher(self) -> '_BatchAt':
    return _BatchAt(self.dataset, self.batch_size, self.seed, self._slice)

  def _start(self) -> Iterator[Example]:
    if not self.threads and not self.workers:
      return (self.batch_at(s) for s in _count(self.step))
    import grain  # pylint: disable=import-outside-toplevel  # only this path needs it
    # Grain pickles the mapped function into each worker process: a small
    # value holding the dataset, not this iterator (whose running grain
    # iterator cannot be pickled).
    ds = grain.MapDataset.range(self.step, 2**62).map(self._batcher())
    it = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=max(self.threads, 1), prefetch_buffer_size=4))
    if self.workers:
      from absl import flags  # pylint: disable=import-outside-toplevel
      if not flags.FLAGS.is_parsed():  # a notebook or a test: grain reads
        flags.FLAGS.mark_as_parsed()  # its absl flags (defaults) to start
      it = it.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self.workers),
          worker_init_fn=_exit_with_parent)
    return iter(it)

  def __iter__(self):
    return self

  def __next__(self) -> Example:
    if self._iter is None:
      self._iter = self._start()
    try:
      try:
        batch = next(self._iter)
      except RuntimeError as e:
        # grain's own words for a worker that exited without raising.
        if self.workers and 'Worker process was terminated' in str(e):
          code = re.search(r'exit code (-?\d+)', str(e))
          raise WorkerError(_died(self.step, int(code[1]) if code else None)
                            ) from None
        raise
    except (ExampleError, WorkerError) as e:
      e.first_batch = not self._served
      raise
    if self.workers:
      _unlink_shared(batch)
    self.step += 1
    self._served = True
    return batch

  def state(self) -> dict:
    return {'step': self.step, 'seed': self.seed, 'batch_size': self.batch_size}

  def close(self) -> None:
    """Stops grain's reader threads and worker processes (and frees their
    shared memory); the next ``next()`` starts them again at ``step``."""
    it, self._iter = self._iter, None
    if it is not None and hasattr(it, 'close'):
      it.close()


@dataclasses.dataclass(frozen=True)
class _BatchAt:
  """``step -> this process's slice of the global batch``: a pure function
  of its fields, picklable into grain's worker processes."""

  dataset: Dataset
  batch_size: int  # global
  seed: int
  part: slice  # this process's rows of the global batch

  def __call__(self, step: int) -> Example:
    idx = global_indices(step, num_examples=self.dataset.num_examples,
                         batch_size=self.batch_size, seed=self.seed)
    rngs = None
    if getattr(self.dataset, 'example_fn', None) is not None:  # augmentation
      rngs = [np.random.default_rng([self.seed, step, p])
              for p in range(self.part.start, self.part.stop)]
    batch = self.dataset.get(idx[self.part], rngs)
    mix = getattr(self.dataset, 'mix_fn', None)
    if mix is not None:  # Mixup/CutMix: one draw per global batch
      batch = mix(batch, np.random.default_rng([self.seed, step, 0, MIX_STREAM]))
    return batch


def _unlink_shared(batch: Example) -> None:
  """Removes the names of the shared-memory blocks a worker passed ``batch``
  in, as soon as the trainer holds it.

  Grain's workers write each array into a named POSIX shared-memory block
  (registered with multiprocessing's resource tracker); the trainer maps it
  and grain unlinks the name when the array is garbage-collected, on a
  background thread. An array still referenced at exit (in a 20-step run:
  one array of the first batch, which ``LoopInfo`` keeps for the callbacks,
  and one of the last) or a deletion still queued on that thread when the
  interpreter stops was never unlinked, and the tracker printed
  "resource_tracker: There appear to be N leaked shared_memory objects to
  clean up at shutdown". Unlinking right away keeps the zero-copy mapping
  (the memory is freed when the array is, or at exit) but leaves no name
  to leak. ``_unlink_on_del`` is grain 0.2's flag for "unlink in __del__";
  were it renamed this would do nothing and tests/e2e/test_grain_workers.py
  would see the warning again.
  """
  for value in batch.values():
    shm = getattr(value, 'shm', None)
    if shm is not None and getattr(value, '_unlink_on_del', False):
      shm.unlink()  # the name and its tracker entry; the mapping stays
      value._unlink_on_del = False  # pylint: disable=protected-access


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
  """In each grain worker: exit when the trainer is gone.

  A trainer killed with SIGKILL (OOM killer, ``kill -9``, a lost node)
  cannot stop its workers; without this they would live on, holding shared
  memory and the trainer's stdout/stderr (a caller waiting for those to close
  would hang). Polls the parent pid twice a second from a daemon thread.
  """
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True, name='exit-with-parent').start()


def _died(step: int, code: int | None) -> str:
  how = f'exit code {code}' if code is not None else 'no exit code'
  if code is not None and code < 0:
    how = f'killed by {signal.Signals(-code).name}'
    if code == -signal.SIGKILL:
      how += ' (often the out-of-memory killer: see dmesg)'
  return (f'a grain worker process died ({how}) while reading the batch of '
          f'step {step}; rerun the same command to resume from the last '
          'checkpoint (fewer --grain_workers if memory ran out)')


def _count(start: int):
  while True:
    yield start
    start += 1


def eval_batches(dataset: Dataset, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Example]:
  """Every example exactly once, in order; the last global batch is padded.

  Each batch carries ``_valid`` (1.0 for real examples, 0.0 for padding), so
  masked sums count each example exactly once.
  """
  sl = local_slice(batch_size, process_index, process_count)
  n = dataset.num_examples
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)[sl]
    valid = idx < n
    batch = dataset.get(np.where(valid, idx, 0), None)
    batch['_valid'] = valid.astype(np.float32)
    yield batch


# ---------------------------------------------------------------------------
# Image preprocessing chosen by the config.


def image_batch_fn(normalize: str, input_key: str = 'image') -> BatchFn:
  """uint8 images -> float32 ('scale': [0, 1]; 'imagenet': mean/std)."""

  def fn(batch):
    x = batch[input_key]
    if normalize == 'none':
      x = x.astype(np.float32)
    elif normalize == 'scale':
      x = x.astype(np.float32) / 255.0
    else:
      x = transforms.normalize(x, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    return {**batch, input_key: x}

  return fn


def image_example_fn(augment: str, image_size: int, train: bool,
                     input_key: str = 'image', **recipe) -> ExampleFn | None:
  """Per-example crops/flips (and ``recipe``: the ``augment.ImageTrainFn``
  fields crop_scale, crop_ratio, randaugment_*, color_jitter, random_erase)
  for training, resize + centre crop for eval.

  Returns None when nothing per-example is needed (the fast, vectorised path).
  """
  if not train:
    if not image_size:
      return None
    return lambda ex, rng: {**ex, input_key: transforms.resize_center_crop(
        ex[input_key], image_size)}
  fn = augment_lib.ImageTrainFn(augment, image_size, input_key, **recipe)
  if (augment == 'none' and not image_size and not fn.randaugment_ops
      and not fn.color_jitter and not fn.random_erase):
    return None
  return fn


# ---------------------------------------------------------------------------
# What a problem builds (dlresearch/problems/).

# Splits up to this size (decoded) are loaded into memory by pipeline='auto'.
MEMORY_LIMIT_BYTES = 4 << 30


@dataclasses.dataclass
class Data:
  """What ``train.run`` trains and evaluates on (built by ``dlresearch/problems``)."""

  train: Dataset
  eval: Dataset
  task: Any  # see dlresearch/tasks.py
  model_kwargs: dict  # e.g. {'num_classes': 10}; merged under --model_kwargs
  use_grain: bool = False  # read through grain threads/workers
  tokenizer: Any = None  # text kinds: the run's tokenizer
  # ``hook(model, state) -> dict`` called at every eval; their keys join the
  # eval line (e.g. BLEU, a sampled continuation).
  eval_hooks: list = dataclasses.field(default_factory=list)
  # The dataset split ``eval`` holds (named in every eval line); periodic
  # evals and model selection use it.
  eval_split: str = ''
  # A held-out split evaluated once, at the end (eval line split 'test'),
  # when it differs from ``eval_split``; never used for selection.
  test: Dataset | None = None
  test_split: str = ''
  # Hooks like ``eval_hooks`` for the test line only (e.g. BLEU of the test
  # split's translations); their keys come back as ``test_*``.
  test_hooks: list = dataclasses.field(default_factory=list)
  label_names: list | None = None  # class names, for pictures and export
