"""Readers for the applications' real data: fraud, shuttle, ratings.

Each reader reads the raw files that ``python -m dlresearch.data.fetch NAME``
cached once (default ``~/.cache/dlresearch/raw/NAME``), checks them against
the pinned sha256 of ``fetch.SOURCES``, and returns plain NumPy arrays (in
dicts or tuples). Readers never download; a missing cache raises
``FileNotFoundError`` naming the fetch command.

- ``creditcard``: 284,807 card transactions over two days (ULB/Worldline),
  492 frauds; V1-V28 are PCA components, plus Time (s) and Amount.
  ``time_split`` (first 80% by Time train, rest test), ``normal_rows`` and
  ``standardize`` (train statistics, log1p on Amount) prepare it for an
  autoencoder; ``creditcard_split`` does all three.
- ``shuttle``: Statlog Shuttle (mlbench), 58,000 rows x 9; the majority class
  ``Rad.Flow`` (45,586) is normal, the other six classes anomalous.
  ``shuttle_split``: Statlog's own train (43,500) / test (14,500) rows.
- ``movielens``: MovieLens latest-small (2016 cut, dslabs), 100,004 ratings of
  9,066 movies by 671 users, read from an R lazy-load database
  (``read_lazyload``). ``index_ratings`` maps ids to dense indices and builds
  the item table (titles, multi-hot genres); ``per_user_time_split`` holds
  out each user's latest ratings.
  (The chest X-rays' reader is ``dlresearch/apps/xray/readers.py``.)
"""

import bz2
import lzma
import os
import pathlib
import warnings
import zlib

import numpy as np

from dlresearch.data import fetch

PathLike = str | os.PathLike

CREDITCARD_COLUMNS = ('Time', *(f'V{i}' for i in range(1, 29)), 'Amount',
                      'Class')
# Columns of ``creditcard()['features']``: V1..V28, Amount (Time is separate).
CREDITCARD_FEATURES = CREDITCARD_COLUMNS[1:-1]
AMOUNT_COLUMN = CREDITCARD_FEATURES.index('Amount')

SHUTTLE_NORMAL_CLASS = 'Rad.Flow'
MOVIELENS_COLUMNS = ('userId', 'movieId', 'rating', 'timestamp', 'title',
                     'genres')


def raw_file(name: str, filename: str,
             data_dir: PathLike | None = None) -> pathlib.Path:
  """Path of ``filename`` from ``name``'s fetched files, sha256-checked.

  Args:
    name: a key of ``fetch.SOURCES``.
    filename: a file that fetch extracted (base name).
    data_dir: where fetch wrote; default ``~/.cache/dlresearch/raw/NAME``.

  Raises:
    FileNotFoundError: the data was not fetched (the message says how).
    ValueError: the file's sha256 is not the pinned one.
  """
  directory = pathlib.Path(data_dir).expanduser() if data_dir else (
      fetch.default_dest(name))
  path = directory / filename
  if not fetch.fetched(name, directory) or not path.is_file():
    raise FileNotFoundError(
        f'{path} not found: fetch the {name!r} data once with '
        f'`python -m dlresearch.data.fetch {name}'
        f'{" --dest " + str(directory) if data_dir else ""}`.')
  want = dict(fetch.SOURCES[name].file_sha256).get(filename)
  if want is not None:
    got = fetch.sha256_file(path)
    if got != want:
      raise ValueError(f'{path} has sha256 {got}, expected {want}; fetch '
                       f'{name!r} again.')
  return path


# ----------------------------------------------------------------------------
# Credit-card fraud.


def creditcard(data_dir: PathLike | None = None) -> dict[str, np.ndarray]:
  """The credit-card fraud table, in file order (sorted by Time).

  Returns:
    ``features`` float32 [284807, 29] (V1..V28, Amount; raw values),
    ``labels`` int32 (1 = fraud), ``time`` float64 (seconds from the first
    transaction).
  """
  path = raw_file('creditcard', 'creditcard.csv', data_dir)
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


def _read_r(path_or_bytes):
  """Parses and converts R serialized data with ``rdata`` (no R needed)."""
  import rdata  # pylint: disable=g-import-not-at-top

  with warnings.catch_warnings():
    # Lazy-load records carry no file magic (rdata assumes RDS, rightly);
    # strings without a declared encoding are ASCII factor levels here.
    warnings.filterwarnings('ignore', 'Unknown file type')
    warnings.filterwarnings('ignore', 'Unknown encoding')
    if isinstance(path_or_bytes, bytes):
      parsed = rdata.parser.parse_data(path_or_bytes)
    else:
      parsed = rdata.parser.parse_file(path_or_bytes)
    return rdata.conversion.convert(parsed)


def shuttle(data_dir: PathLike | None = None) -> dict[str, np.ndarray]:
  """Statlog Shuttle from mlbench's ``Shuttle.rda``, in file order.

  Returns:
    ``features`` float32 [58000, 9], ``labels`` int32 (1 = anomaly, i.e. any
    class but ``Rad.Flow``), ``classes`` int32 codes into ``class_names``
    (a str array of the 7 R factor levels).
  """
  path = raw_file('shuttle', 'Shuttle.rda', data_dir)
  frame = _read_r(path)['Shuttle']
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


# ----------------------------------------------------------------------------
# MovieLens.


def read_lazyload(rdb: PathLike, rdx: PathLike, name: str):
  """Reads object ``name`` from an R lazy-load database (``.rdb``/``.rdx``).

  The ``.rdx`` is a compressed serialized R list whose ``variables`` maps
  each object's name to ``(offset, length)`` in the ``.rdb``. A record is a
  4-byte big-endian uncompressed length and the compressed serialization of
  the object: zlib, or (R's compress types 2 and 3) a type byte then bzip2
  / xz / raw data.

  Returns:
    The object as ``rdata.conversion.convert`` gives it (a data frame is a
    pandas DataFrame).
  """
  index = _read_r(pathlib.Path(rdx).read_bytes())
  variables = {str(k): v for k, v in index['variables'].items()}
  if name not in variables:
    raise KeyError(f'{rdb} holds no object {name!r}; it holds '
                   f'{sorted(variables)}')
  offset, length = (int(v) for v in variables[name])
  with open(rdb, 'rb') as f:
    f.seek(offset)
    record = f.read(length)
  size = int.from_bytes(record[:4], 'big')
  compressed = int(np.asarray(index['compressed']).ravel()[0])
  if compressed == 1:
    body = zlib.decompress(record[4:])
  else:
    kind, data = record[4:5], record[5:]
    body = {b'2': bz2.decompress, b'Z': lzma.decompress,
            b'0': bytes}[kind](data)
  if len(body) != size:
    raise ValueError(f'{rdb}: record {name!r} is {len(body)} bytes, its '
                     f'header says {size}')
  return _read_r(body)


def movielens(data_dir: PathLike | None = None) -> dict[str, np.ndarray]:
  """MovieLens latest-small ratings (dslabs ``movielens``), in file order.

  Returns:
    Columns ``userId`` int32, ``movieId`` int32, ``rating`` float32 (0.5-5),
    ``timestamp`` int64 (Unix seconds), ``title`` str (7 missing titles are
    ''), ``genres`` str ('|'-separated; '(no genres listed)').
  """
  rdb = raw_file('movielens', 'Rdata.rdb', data_dir)
  rdx = raw_file('movielens', 'Rdata.rdx', data_dir)
  frame = read_lazyload(rdb, rdx, 'movielens')
  return {
      'userId': frame['userId'].to_numpy(np.int32),
      'movieId': frame['movieId'].to_numpy(np.int32),
      'rating': frame['rating'].to_numpy(np.float32),
      'timestamp': frame['timestamp'].to_numpy(np.int64),
      'title': frame['title'].astype(object).fillna('').to_numpy(str),
      'genres': frame['genres'].astype(str).to_numpy(str),
  }


def index_ratings(ratings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Dense user / item indices and the item table of a ratings dict.

  Returns:
    ``user``, ``item`` int32 per rating (indices into ``user_ids`` /
    ``item_ids``, the sorted original ids), ``rating``, ``timestamp``;
    per item: ``titles`` (str) and ``genres`` (bool [num_items, num_genres]
    multi-hot over ``genre_names``, sorted; '(no genres listed)' is no
    genre).
  """
  user_ids, user = np.unique(ratings['userId'], return_inverse=True)
  item_ids, first, item = np.unique(ratings['movieId'], return_index=True,
                                    return_inverse=True)
  item_genres = [set(g.split('|')) - {'(no genres listed)', ''}
                 for g in ratings['genres'][first]]
  genre_names = np.array(sorted(set().union(*item_genres)), dtype=str)
  column = {g: j for j, g in enumerate(genre_names)}
  genres = np.zeros((len(item_ids), len(genre_names)), bool)
  for i, gs in enumerate(item_genres):
    genres[i, [column[g] for g in gs]] = True
  return {'user': user.astype(np.int32), 'item': item.astype(np.int32),
          'rating': np.asarray(ratings['rating']),
          'timestamp': np.asarray(ratings['timestamp']),
          'user_ids': user_ids, 'item_ids': item_ids,
          'titles': np.asarray(ratings['title'])[first],
          'genres': genres, 'genre_names': genre_names}


def per_user_time_split(ratings: dict[str, np.ndarray], test_frac: float = 0.2,
                        user_key: str = 'userId', time_key: str = 'timestamp'):
  """Holds out each user's latest ratings.

  A user with ``n`` ratings gets ``k = round(test_frac * n)`` test ratings,
  clipped to ``[1, n - 1]`` (a user with one rating keeps it in train):
  their ``k`` latest by ``time_key``, ties broken by row order (a later row
  counts as later).

  Args:
    ratings: dict of equal-length columns, including ``user_key`` and
      ``time_key``. Per-rating columns are split; other entries (anything
      whose first dimension differs) are copied to both.
    test_frac: fraction of each user's ratings to hold out.

  Returns:
    ``(train, test)`` dicts of the same keys; rows keep their input order.
  """
  if not 0 < test_frac < 1:
    raise ValueError(f'test_frac must be in (0, 1), got {test_frac}')
  user = np.asarray(ratings[user_key])
  n = len(user)
  order = np.lexsort((np.arange(n), np.asarray(ratings[time_key]), user))
  _, start, counts = np.unique(user[order], return_index=True,
                               return_counts=True)
  k = np.clip(np.rint(test_frac * counts), 1, counts - 1).astype(np.int64)
  k = np.where(counts > 1, k, 0)
  rank = np.arange(n) - np.repeat(start, counts)  # Position in the user's run.
  is_test = np.empty(n, bool)
  is_test[order] = rank >= np.repeat(counts - k, counts)

  def take(mask):
    return {key: (np.asarray(v)[mask] if np.shape(v)[:1] == (n,) else v)
            for key, v in ratings.items()}

  return take(~is_test), take(is_test)
