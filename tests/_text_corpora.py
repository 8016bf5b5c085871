"""A small Rotten Tomatoes corpus in the raw format its builder reads, as a
test fixture shared by the text tests (``from _text_corpora import
rotten_tomatoes_dir``)."""

import bz2
import csv
import io

import numpy as np
import pytest


@pytest.fixture(scope='module')
def rotten_tomatoes_dir(tmp_path_factory):
  """160 snippets whose words give the label away."""
  root = tmp_path_factory.mktemp('rt')
  rng = np.random.default_rng(0)
  good = 'great wonderful moving superb delightful'.split()
  bad = 'awful boring dull tedious mess'.split()
  neutral = 'the film movie plot actor story is a of this'.split()
  out = io.StringIO()
  writer = csv.DictWriter(out, ['category', 'text', 'movie_name'])
  writer.writeheader()
  for i in range(160):
    fresh = i % 2 == 0
    words = list(rng.choice(neutral, 8)) + list(rng.choice(good if fresh else bad, 2))
    writer.writerow({'category': 'fresh' if fresh else 'rotten',
                     'text': f'{" ".join(rng.permutation(words))} {i}',
                     'movie_name': f'movie {i % 7}'})
  with bz2.open(root / 'rotten_tomatoes_corpus_full.csv.bz2', 'wt') as f:
    f.write(out.getvalue())
  return str(root)
