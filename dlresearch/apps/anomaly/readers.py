"""Readers of the anomaly-detection data: card fraud and Statlog Shuttle.

Each reader reads the raw files that ``python -m dlresearch.data.fetch NAME``
cached once (``raw.raw_file``: sha256-checked; a missing cache raises
``FileNotFoundError`` naming the fetch command) and returns NumPy arrays.

- ``creditcard``: 284,807 card transactions over two days (ULB/Worldline),
  492 frauds; V1-V28 are PCA components, plus Time (s) and Amount.
  ``time_split`` (first 80% by Time train, rest test), ``normal_rows`` and
  ``standardize`` (train statistics, log1p on Amount) prepare it for an
  autoencoder; ``creditcard_split`` does all three.
- ``shuttle``: Statlog Shuttle (mlbench), 58,000 rows x 9; the majority class
  ``Rad.Flow`` (45,586) is normal, the other six classes anomalous.
  ``shuttle_split``: Statlog's own train (43,500) / test (14,500) rows.
"""

import numpy as np

from dlresearch.data import raw
from dlresearch.data.raw import PathLike

CREDITCARD_COLUMNS = ('Time', *(f'V{i}' for i in range(1, 29)), 'Amount',
                      'Class')
# Columns of ``creditcard()['features']``: V1..V28, Amount (Time is separate).
CREDITCARD_FEATURES = CREDITCARD_COLUMNS[1:-1]
AMOUNT_COLUMN = CREDITCARD_FEATURES.index('Amount')

SHUTTLE_NORMAL_CLASS = 'Rad.Flow'


# ----------------------------------------------------------------------------
# Credit-card fraud.


def creditcard(data_dir: PathLike | None = None) -> dict[str, np.ndarray]:
  """The credit-card fraud table, in file order (sorted by Time).

  Returns:
    ``features`` float32 [284807, 29] (V1..V28, Amount; raw values),
    ``labels`` int32 (1 = fraud), ``time`` float64 (seconds from the first
    transaction).
  """
  path = raw.raw_file('creditcard', 'creditcard.csv', data_dir)
  with open(path) as f:
    header = tuple(c.strip('"') for c in f.readline().strip().split(','))
    if header != CREDITCARD_COLUMNS:
      raise ValueError(f'{path}: unexpected columns {header}')
    table = np.loadtxt(f, delimiter=',', quotechar='"', dtype=np.float64)
  return {'features': table[:, 1:-1].astype(np.float32),
          'labels': table[:, -1].astype(np.int32),
          'time': table[:, 0]}


def time_split(features: np.ndarray, labels: np.ndarray, time: np.ndarray,
               train_frac: float = 0.8):
  """Earliest ``train_frac`` of rows by ``time`` train, the rest test.

  Rows are ordered by time (stable, so equal times keep file order) and cut
  at ``floor(train_frac * n)``: every test row is at least as late as every
  train row.

  Returns:
    ``(x_train, y_train), (x_test, y_test)``.
  """
  if not 0 < train_frac < 1:
    raise ValueError(f'train_frac must be in (0, 1), got {train_frac}')
  order = np.argsort(time, kind='stable')
  cut = int(np.floor(train_frac * len(order)))
  train, test = order[:cut], order[cut:]
  return (features[train], labels[train]), (features[test], labels[test])


def normal_rows(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The rows labelled normal (0): what an autoencoder is trained on."""
  return features[np.asarray(labels) == 0]


def standardize(train: np.ndarray, *others: np.ndarray,
                log1p_columns=()) -> tuple[np.ndarray, ...]:
  """Standardises ``train`` and ``others`` with ``train``'s mean and std.

  ``log1p_columns`` (e.g. ``(AMOUNT_COLUMN,)``, amounts are >= 0 and heavy
  tailed) are mapped by ``log1p`` first. Constant columns are centred only.

  Returns:
    The transformed ``(train, *others)``, float32.
  """
  cols = list(log1p_columns)

  def prepare(x):
    x = np.array(x, np.float64)
    x[:, cols] = np.log1p(x[:, cols])
    return x

  xs = [prepare(x) for x in (train, *others)]
  mean, std = xs[0].mean(0), xs[0].std(0)
  std = np.where(std > 0, std, 1.0)
  return tuple(((x - mean) / std).astype(np.float32) for x in xs)


def creditcard_split(data_dir: PathLike | None = None,
                     train_frac: float = 0.8) -> dict[str, np.ndarray]:
  """The fraud data split by time and standardised with train statistics.

  Returns:
    ``x_train``, ``y_train`` (all train rows; ``normal_rows`` keeps the
    autoencoder's), ``x_test``, ``y_test``; features float32, log1p on Amount.
  """
  data = creditcard(data_dir)
  (x_train, y_train), (x_test, y_test) = time_split(
      data['features'], data['labels'], data['time'], train_frac)
  x_train, x_test = standardize(x_train, x_test,
                                log1p_columns=(AMOUNT_COLUMN,))
  return {'x_train': x_train, 'y_train': y_train,
          'x_test': x_test, 'y_test': y_test}


# ----------------------------------------------------------------------------
# Shuttle.


def shuttle(data_dir: PathLike | None = None) -> dict[str, np.ndarray]:
  """Statlog Shuttle from mlbench's ``Shuttle.rda``, in file order.

  Returns:
    ``features`` float32 [58000, 9], ``labels`` int32 (1 = anomaly, i.e. any
    class but ``Rad.Flow``), ``classes`` int32 codes into ``class_names``
    (a str array of the 7 R factor levels).
  """
  path = raw.raw_file('shuttle', 'Shuttle.rda', data_dir)
  frame = raw.read_r(path)['Shuttle']
  features = frame[[f'V{i}' for i in range(1, 10)]].to_numpy(np.float32)
  cls = frame['Class']
  class_names = np.asarray(cls.cat.categories, dtype=str)
  classes = cls.cat.codes.to_numpy(np.int32)
  normal = list(class_names).index(SHUTTLE_NORMAL_CLASS)
  return {'features': features, 'labels': (classes != normal).astype(np.int32),
          'classes': classes, 'class_names': class_names}


SHUTTLE_TRAIN_FRAC = 0.75  # 43,500 of 58,000 rows: Statlog's shuttle.trn


def shuttle_split(data_dir: PathLike | None = None) -> dict[str, np.ndarray]:
  """Shuttle in Statlog's own train/test split, standardised.

  mlbench's table is Statlog's training file (43,500 rows, 34,108 normal)
  followed by its test file (14,500 rows, 11,478 normal): the first
  ``SHUTTLE_TRAIN_FRAC`` of the rows (exactly the 43,500) train, the rest
  test. Features are standardised with the statistics of all train rows.

  Returns:
    ``x_train``, ``y_train``, ``x_test``, ``y_test`` (labels 1 = anomaly).
  """
  data = shuttle(data_dir)
  x, y = data['features'], data['labels']
  cut = int(round(SHUTTLE_TRAIN_FRAC * len(x)))
  x_train, x_test = standardize(x[:cut], x[cut:])
  return {'x_train': x_train, 'y_train': y[:cut],
          'x_test': x_test, 'y_test': y[cut:]}
