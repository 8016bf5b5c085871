"""``python -m experiments.audit`` on existing scores, no trained run.

The contract command (``--dataset=compas --score_column=decile_score
--threshold=5 --group_key=race``) reproduces ProPublica's error rates: its
per-race FPR/FNR equal a direct NumPy computation from the raw CSV; its own
``predictions.csv`` fed back through ``--predictions`` gives the same
report; bad ``--predictions`` input ends with one line and writes nothing.
The tiny ``compas`` and ``german_credit`` presets train and audit by group.
The raw files come from the pinned wheel as in ``tests/unit/test_compas.py``.
"""

import csv
import json

import numpy as np
import pytest

from dlresearch.data import fetch
import _forked  # pylint: disable=g-bad-import-order


@pytest.fixture(scope='module')
def raw_dir(tmp_path_factory):
  return fetch.cached('compas') or fetch.fetch(
      'compas', dest=tmp_path_factory.mktemp('compas_raw'))


def _propublica(raw_dir):
  """Per race: (FPR, FNR, TPR, count) of decile_score >= 5, from the CSV."""
  with open(raw_dir / 'compas-scores-two-years.csv', newline='') as f:
    reader = csv.reader(f)
    header = next(reader)
    rows = np.array(list(reader), dtype=object)
  col = {name: rows[:, header.index(name)] for name in reversed(header)}
  days = np.array([float(d) if d else np.inf
                   for d in col['days_b_screening_arrest']])
  keep = ((np.abs(days) <= 30) & (col['is_recid'] != '-1')
          & (col['c_charge_degree'] != 'O') & (col['score_text'] != 'N/A'))
  high = col['decile_score'][keep].astype(int) >= 5
  recid = col['two_year_recid'][keep] == '1'
  race = col['race'][keep]
  out = {}
  for r in np.unique(race):
    m = race == r
    out[r] = ((high & ~recid & m).sum() / (~recid & m).sum(),
              (~high & recid & m).sum() / (recid & m).sum(),
              (high & recid & m).sum() / (recid & m).sum(), int(m.sum()))
  return out


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_compas_scores_reproduce_propublica_and_bad_input(raw_dir, tmp_path):
  data = [f'--data_dir={tmp_path}/tfds', f'--manual_dir={raw_dir}']
  out, back = tmp_path / 'score_audit', tmp_path / 'round_trip'
  good = 'label,score,grp\n1,0.9,a\n0,0.2,b\n'
  bad_inputs = {  # name -> (argv, start of the error line)
      'missing_column': (
          [f'--predictions={_write(tmp_path / "a.csv", good)}',
           '--group_key=sex'],
          "error: --group_key: {} has no column 'sex'; its columns: label, "
          'score, grp'),
      'non_numeric_score': (
          [f'--predictions={_write(tmp_path / "b.csv", good + "1,high,a")}',
           '--group_key=grp'],
          "error: --score_column: {}:4: 'score' is 'high', not a finite "
          'number'),
      'nan_score': (
          [f'--predictions={_write(tmp_path / "c.csv", good + "1,nan,a")}',
           '--group_key=grp'],
          "error: --score_column: {}:4: 'score' is 'nan', not a finite"),
      'fractional_label': (
          [f'--predictions={_write(tmp_path / "d.csv", good + "0.5,1,a")}',
           '--group_key=grp'],
          "error: --label_column: {}:4: 'label' is '0.5', not an integer"),
      'label_not_binary': (
          [f'--predictions={_write(tmp_path / "g.csv", good + "2,0.3,a")}',
           '--group_key=grp'],
          "error: --label_column: 'label' holds [2]; a score audit needs "
          'classes 0 and 1'),
      'nan_threshold': (
          [f'--predictions={tmp_path / "a.csv"}', '--group_key=grp',
           '--threshold=nan'],
          'error: --threshold: must be a number'),
      'short_row': (
          [f'--predictions={_write(tmp_path / "e.csv", good + "1,0.3")}',
           '--group_key=grp'],
          'error: --predictions: {}:4: 2 fields, the header has 3'),
      'empty_file': (
          [f'--predictions={_write(tmp_path / "f.csv", "")}',
           '--group_key=grp'],
          'error: --predictions: {} is empty'),
      'no_out': (
          [f'--predictions={tmp_path / "a.csv"}', '--group_key=grp'],
          'error: --out: name the output directory'),
      'two_sources': (
          [f'--predictions={tmp_path / "a.csv"}', '--dataset=compas',
           '--group_key=grp'],
          'error: --workdir: give exactly one of'),
      'dataset_without_score': (
          ['--dataset=compas', '--group_key=race', *data],
          "error: --score_column: name the dataset's score column"),
      'dataset_vector_score': (
          ['--dataset=compas', '--score_column=features', '--group_key=race',
           *data],
          "error: --score_column: column 'features' holds (7,) vectors"),
  }
  cases = [
      {'module': 'experiments.audit', 'argv': [
          '--dataset=compas', '--score_column=decile_score', '--threshold=5',
          '--group_key=race', f'--out={out}', '--n_bootstrap=200', *data]},
      {'module': 'experiments.audit', 'after': [0], 'argv': [
          f'--predictions={out}/predictions.csv', '--group_key=group',
          '--threshold=5', f'--out={back}', '--n_bootstrap=200']},
  ]
  for name, (argv, _) in bad_inputs.items():
    argv = argv if name == 'no_out' else [*argv, f'--out={tmp_path}/{name}']
    cases.append({'module': 'experiments.audit', 'after': [0], 'argv': argv})
  results = _forked.run(cases, tmp_path, env={'JAX_PLATFORMS': 'cpu'})

  audit, round_trip = results[:2]
  assert audit['code'] == 0, audit['stderr'][-2000:]
  report = json.load(open(out / 'report.json'))
  assert report['n'] == 6172 and report['split'] == 'full'
  assert report['score_column'] == 'decile_score' and report['threshold'] == 5
  expected = _propublica(raw_dir)
  groups = report['groups']['race']
  assert set(groups) == set(expected)
  for race, (fpr, fnr, tpr, count) in expected.items():
    g = groups[race]
    assert g['count'] == count
    assert g['fpr']['value'] == pytest.approx(fpr, abs=1e-12), race
    assert g['fnr']['value'] == pytest.approx(fnr, abs=1e-12), race
    assert g['tpr']['value'] == pytest.approx(tpr, abs=1e-12), race
    assert g['ece']['value'] is None  # decile scores are not probabilities
  black, white = groups['African-American'], groups['Caucasian']
  # On these 6,172 rows: FPR 42.3% vs 22.0%, FNR 28.5% vs 49.6%.
  assert round(100 * black['fpr']['value'], 1) == 42.3
  assert round(100 * white['fpr']['value'], 1) == 22.0
  assert round(100 * black['fnr']['value'], 1) == 28.5
  assert round(100 * white['fnr']['value'], 1) == 49.6
  for g in (black, white):
    for metric in ('fpr', 'fnr'):
      lo, hi = g[metric]['ci']
      assert lo < g[metric]['value'] < hi and hi - lo < 0.08
  with open(out / 'predictions.csv') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['label', 'prediction', 'score', 'group']
  assert len(rows) == 6173
  assert (out / 'race_fnr.png').exists()
  assert 'race=African-American (n=3175)' in audit['stdout']
  assert 'FPR 42.3' in audit['stdout'] and 'FNR 28.5' in audit['stdout']

  # The same scores through --predictions give the same report.
  assert round_trip['code'] == 0, round_trip['stderr'][-2000:]
  again = json.load(open(back / 'report.json'))
  assert again['groups']['group'] == groups
  assert again['overall'] == report['overall']

  for (name, (argv, message)), result in zip(bad_inputs.items(), results[2:]):
    path = next((a.split('=', 1)[1] for a in argv
                 if a.startswith('--predictions=')), '')
    lines = result['stderr'].strip().splitlines()
    assert result['code'] == 2, (name, result['stderr'][-1000:])
    assert lines[-1].startswith(message.format(path)), (name, lines[-1])
    assert sum(l.startswith('error:') for l in lines) == 1, name
    assert not (tmp_path / name).exists(), name


def test_tiny_presets_train_and_audit(raw_dir, tmp_path_factory, tmp_path):
  german = fetch.cached('german_credit') or fetch.fetch(
      'german_credit', dest=tmp_path_factory.mktemp('german_raw'))
  runs = {'compas': ('race', raw_dir), 'german_credit': ('sex,age_group',
                                                         german)}
  cases = []
  for name, (groups, manual) in runs.items():
    cases += [
        {'module': 'experiments.tabular', 'argv': [
            f'--preset={name}', '--tiny', f'--data_dir={tmp_path}/tfds',
            f'--manual_dir={manual}', f'--audit_group={groups}',
            f'--workdir={tmp_path}/{name}', '--nobaselines']},
        {'module': 'experiments.audit', 'after': [len(cases)], 'argv': [
            f'--workdir={tmp_path}/{name}', f'--group_key={groups}',
            '--n_bootstrap=20']}]
  results = _forked.run(cases, tmp_path, env={'JAX_PLATFORMS': 'cpu'})
  for result in results:
    assert result['code'] == 0, result['stderr'][-2000:]
  compas_report = json.load(open(tmp_path / 'compas/audit/report.json'))
  assert compas_report['n'] == 1234 and compas_report['data']['rows'] == 4938
  assert set(compas_report['groups']['race']) == {
      'African-American', 'Asian', 'Caucasian', 'Hispanic', 'Native American',
      'Other'}
  german_report = json.load(open(tmp_path / 'german_credit/audit/report.json'))
  assert german_report['n'] == 200 and german_report['data']['rows'] == 800
  assert german_report['groups']['sex']['Female']['count'] + german_report[
      'groups']['sex']['Male']['count'] == 200
  assert set(german_report['groups']['age_group']) == {'19-25', '26+'}
