"""Readers of the anomaly-detection data: card fraud and Statlog Shuttle.

Each reader reads the raw files that ``python -m dlresearch.data.fetch NAME``
cached once (``raw.raw_file``: sha256-checked; a missing cache raises
``FileNotFoundError`` naming the fetch command) and returns NumPy arrays.

- ``creditcard``: 284,807 card transactions over two days (ULB/Worldline),
  492 frauds; V1-V28 are PCA components, plus Time (s) and Amount.
  ``time_split`` (first 80% by Time train, rest test), ``normal_rows`` and
  ``standardize`` (train statistics, log1p on Amount) or ``robust_scale``
  (train median and interquartile range) prepare it for an autoencoder;
  ``hour_of_day`` encodes Time as a daily cycle; ``creditcard_split`` does
  it all.
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


def _log1p(x: np.ndarray, log1p_columns) -> np.ndarray:
  x = np.array(x, np.float64)
  cols = list(log1p_columns)
  x[:, cols] = np.log1p(x[:, cols])
  return x


def standardize(train: np.ndarray, *others: np.ndarray,
                log1p_columns=()) -> tuple[np.ndarray, ...]:
  """Standardises ``train`` and ``others`` with ``train``'s mean and std.

  ``log1p_columns`` (e.g. ``(AMOUNT_COLUMN,)``, amounts are >= 0 and heavy
  tailed) are mapped by ``log1p`` first. Constant columns are centred only.

  Returns:
    The transformed ``(train, *others)``, float32.
  """
  xs = [_log1p(x, log1p_columns) for x in (train, *others)]
  mean, std = xs[0].mean(0), xs[0].std(0)
  std = np.where(std > 0, std, 1.0)
  return tuple(((x - mean) / std).astype(np.float32) for x in xs)


def robust_scale(train: np.ndarray, *others: np.ndarray,
                 log1p_columns=()) -> tuple[np.ndarray, ...]:
  """Centres ``train`` and ``others`` on ``train``'s median and divides by
  its interquartile range (the 75th minus the 25th percentile).

  Unlike ``standardize``, the heavy tails of a column do not shrink its
  bulk: on the card data V1..V28 have a few extreme normal rows, which
  inflate the std and squeeze the typical rows together. ``log1p_columns``
  are mapped by ``log1p`` first; a column with a zero interquartile range
  is centred only.

  Returns:
    The transformed ``(train, *others)``, float32.
  """
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top
  xs = [_log1p(x, log1p_columns) for x in (train, *others)]
  scaler = preprocessing.RobustScaler().fit(xs[0])  # median, IQR 25-75
  return tuple(scaler.transform(x).astype(np.float32) for x in xs)


SCALINGS = {'standard': standardize, 'robust': robust_scale}
SECONDS_PER_DAY = 86400.0


def hour_of_day(time: np.ndarray) -> np.ndarray:
  """``[sin, cos]`` of the time of day, float32 [n, 2].

  ``time`` is the card data's seconds from the first transaction, which is
  taken to be at midnight: the hourly transaction count is lowest 1-7 h and
  25-31 h after it (night), and frauds are far more frequent among those
  night transactions. So ``time mod 86400`` is the time of day; the sine
  and cosine put 23:59 next to 00:00.
  """
  angle = 2 * np.pi * (np.asarray(time, np.float64) % SECONDS_PER_DAY
                       ) / SECONDS_PER_DAY
  return np.stack([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def creditcard_split(data_dir: PathLike | None = None,
                     train_frac: float = 0.8, scaling: str = 'standard',
                     time_feature: str = 'none') -> dict[str, np.ndarray]:
  """The fraud data split by time and scaled with train statistics.

  Args:
    data_dir: the fetched raw files (None: the default cache).
    train_frac: the earliest fraction of rows that train.
    scaling: ``'standard'`` (``standardize``) or ``'robust'``
      (``robust_scale``), both after log1p on Amount.
    time_feature: ``'none'`` (Time is not a feature) or ``'hour'`` (the two
      ``hour_of_day`` columns appended after Amount, unscaled).

  Returns:
    ``x_train``, ``y_train`` (all train rows; ``normal_rows`` keeps the
    autoencoder's), ``x_test``, ``y_test``; features float32. Also
    ``baseline_x_train`` and ``baseline_x_test``: the same rows as
    ``scaling='standard'``, ``time_feature='none'`` make them (what the
    IsolationForest baseline is fitted on and scores, whatever the model
    sees).
  """
  if scaling not in SCALINGS:
    raise ValueError(f'scaling must be one of {sorted(SCALINGS)}, got '
                     f'{scaling!r}')
  if time_feature not in ('none', 'hour'):
    raise ValueError(f"time_feature must be 'none' or 'hour', got "
                     f'{time_feature!r}')
  data = creditcard(data_dir)
  (x_train, y_train), (x_test, y_test) = time_split(
      data['features'], data['labels'], data['time'], train_frac)
  (t_train, _), (t_test, _) = time_split(data['time'][:, None], data['labels'],
                                         data['time'], train_frac)
  log1p = (AMOUNT_COLUMN,)
  base_train, base_test = standardize(x_train, x_test, log1p_columns=log1p)
  x_train, x_test = SCALINGS[scaling](x_train, x_test, log1p_columns=log1p)
  if time_feature == 'hour':
    x_train = np.concatenate([x_train, hour_of_day(t_train[:, 0])], axis=1)
    x_test = np.concatenate([x_test, hour_of_day(t_test[:, 0])], axis=1)
  return {'x_train': x_train, 'y_train': y_train,
          'x_test': x_test, 'y_test': y_test,
          'baseline_x_train': base_train, 'baseline_x_test': base_test}


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


def shuttle_split(data_dir: PathLike | None = None,
                  scaling: str = 'standard') -> dict[str, np.ndarray]:
  """Shuttle in Statlog's own train/test split, standardised.

  mlbench's table is Statlog's training file (43,500 rows, 34,108 normal)
  followed by its test file (14,500 rows, 11,478 normal): the first
  ``SHUTTLE_TRAIN_FRAC`` of the rows (exactly the 43,500) train, the rest
  test. Features are scaled with the statistics of all train rows
  (``scaling``: ``'standard'`` or ``'robust'``, as in ``creditcard_split``).

  Returns:
    ``x_train``, ``y_train``, ``x_test``, ``y_test`` (labels 1 = anomaly).
  """
  data = shuttle(data_dir)
  x, y = data['features'], data['labels']
  cut = int(round(SHUTTLE_TRAIN_FRAC * len(x)))
  if scaling not in SCALINGS:
    raise ValueError(f'scaling must be one of {sorted(SCALINGS)}, got '
                     f'{scaling!r}')
  x_train, x_test = SCALINGS[scaling](x[:cut], x[cut:])
  return {'x_train': x_train, 'y_train': y[:cut],
          'x_test': x_test, 'y_test': y[cut:]}
