"""Readers of the recommendation data: MovieLens latest-small.

``movielens`` reads the files ``python -m dlresearch.data.fetch movielens``
cached (``raw.raw_file``: sha256-checked; a missing cache raises
``FileNotFoundError`` naming the fetch command): 100,004 ratings of 9,066
movies by 671 users (2016 cut, dslabs), stored as an R lazy-load database
(``read_lazyload``). ``index_ratings`` maps ids to dense indices and builds
the item table (titles, multi-hot genres); ``per_user_time_split`` holds
out each user's latest ratings.
"""

import bz2
import lzma
import pathlib
import zlib

import numpy as np

from dlresearch.data import raw
from dlresearch.data.raw import PathLike

MOVIELENS_COLUMNS = ('userId', 'movieId', 'rating', 'timestamp', 'title',
                     'genres')


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
  index = raw.read_r(pathlib.Path(rdx).read_bytes())
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
  return raw.read_r(body)


def movielens(data_dir: PathLike | None = None) -> dict[str, np.ndarray]:
  """MovieLens latest-small ratings (dslabs ``movielens``), in file order.

  Returns:
    Columns ``userId`` int32, ``movieId`` int32, ``rating`` float32 (0.5-5),
    ``timestamp`` int64 (Unix seconds), ``title`` str (7 missing titles are
    ''), ``genres`` str ('|'-separated; '(no genres listed)').
  """
  rdb = raw.raw_file('movielens', 'Rdata.rdb', data_dir)
  rdx = raw.raw_file('movielens', 'Rdata.rdx', data_dir)
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
