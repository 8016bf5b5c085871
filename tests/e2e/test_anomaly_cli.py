"""``python -m experiments.anomaly`` without its data: one line, exit 2,
nothing written (each case its own process, forked by tests/_fork_cli.py)."""

import os

import _forked  # pylint: disable=g-bad-import-order  (tests/, via conftest)


def test_missing_raw_data_is_one_line_naming_the_fetch_command(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  cases = [{'module': 'experiments.anomaly', 'argv': [
      f'--preset={preset}', f'--manual_dir={empty}',
      f'--workdir={tmp_path / preset}']} for preset in ('creditcard', 'shuttle')]
  for case, (name, filename) in zip(
      _forked.run(cases, tmp_path, env={'JAX_PLATFORMS': 'cpu'}),
      (('creditcard', 'creditcard.csv'), ('shuttle', 'Shuttle.rda'))):
    assert case['code'] == 2, case['stderr'][-2000:]
    errors = [l for l in case['stderr'].splitlines() if 'rror' in l]
    assert errors == [
        f'error: --manual_dir: {empty / filename} not found: fetch the '
        f"{name!r} data once with `python -m dlresearch.data.fetch {name} "
        f'--dest {empty}`.'], case['stderr'][-2000:]
    assert not os.path.exists(tmp_path / name)
