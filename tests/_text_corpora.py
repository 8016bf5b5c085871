"""Small text corpora in the raw formats their builders read, shared by the
text tests: a Rotten Tomatoes fixture (``from _text_corpora import
rotten_tomatoes_dir``) and ``write_shakespeare`` (pseudo-verse works)."""

import bz2
import csv
import io

import numpy as np
import pytest


# The vocabulary of the pseudo-verse (``write_shakespeare``).
VERSE_WORDS = ('the king is dead and the queen doth weep for him . '
               'my lord , what say you to the clouds above ? ').split()


def write_shakespeare(root, words_per_work: int, words=VERSE_WORDS):
  """Ten works of seeded pseudo-verse (8 words a line) as the shakespeare
  builder's ``work*_gut.txt`` files in ``root`` (a pathlib.Path)."""
  rng = np.random.default_rng(0)
  for i in range(10):
    chosen = [words[j] for j in rng.integers(0, len(words), words_per_work)]
    lines = [' '.join(chosen[k:k + 8]).capitalize()
             for k in range(0, words_per_work, 8)]
    (root / f'work{i:02d}_gut.txt').write_text('\n'.join(lines) + '\n')


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
