"""``--num_train_examples``: a stratified, seeded subset of the train split.

``train_subset`` keeps ``n`` examples of a dataset (array-backed or a
random-access source), drawn without replacement by a NumPy generator
seeded with ``(seed, n)``; with a label column the class shares are kept
(``stratified_indices``).
"""

import dataclasses

from absl import logging
import numpy as np

from dlresearch.config import ConfigError
from dlresearch.data import pipeline

def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """``n`` indices whose class counts are proportional to ``labels``'.

  Each class gets ``floor(n * share)``; the examples left over go to the
  classes with the largest remainders (ties: the lower class). Examples are
  drawn without replacement by a NumPy generator seeded with ``seed``; the
  result is sorted.
  """
  labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
  classes, counts = np.unique(labels, return_counts=True)
  exact = n * counts / counts.sum()
  take = np.floor(exact).astype(int)
  order = np.lexsort((classes, -(exact - take)))
  take[order[:n - take.sum()]] += 1
  rng = np.random.default_rng([seed, n])
  out = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
         for c, k in zip(classes, take)]
  return np.sort(np.concatenate(out))


def train_subset(ds, n: int, seed: int, label_key: str | None):
  """``n`` examples of ``ds``, stratified by ``label_key`` when there is one."""
  if n > ds.num_examples:
    raise ConfigError('num_train_examples', f'{n} is more than the train '
                      f'split holds ({ds.num_examples} examples)')
  if isinstance(ds, pipeline.ArrayDataset):
    labels = ds.arrays.get(label_key) if label_key else None
  else:
    labels = (np.asarray([ds.source[i][label_key] for i in range(ds.num_examples)])
              if label_key else None)
  if labels is None:
    idx = np.sort(np.random.default_rng([seed, n]).choice(
        ds.num_examples, n, replace=False))
  else:
    idx = stratified_indices(labels, n, seed)
  logging.info('train subset: %d of %d examples (seed %d)', n,
               ds.num_examples, seed)
  if isinstance(ds, pipeline.ArrayDataset):
    return dataclasses.replace(ds, arrays={k: v[idx] for k, v in
                                           ds.arrays.items()})
  return dataclasses.replace(ds, source=_Indexed(ds.source, idx))


@dataclasses.dataclass(frozen=True)
class _Indexed:
  """The examples ``indices`` of a random-access source."""

  source: object
  indices: np.ndarray

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]
