"""Tests for runs.py: the table of differing config fields and final evals."""

import json
import os
import subprocess
import sys

import pytest

from dlresearch import logging as log_lib
from dlresearch.tools import entry, runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = {'model': 'cnn', 'learning_rate': 0.1, 'batch_size': 32, 'seed': 0,
        'model_kwargs': {'width': 8}}


def _run(tmp_path, name, config=None, lines=(), commit='a' * 40):
  workdir = tmp_path / name
  workdir.mkdir()
  if config is not None:
    (workdir / 'config.json').write_text(json.dumps(
        {'config': config, 'git_commit': commit, 'versions': {'jax': '0'}}))
  if lines:
    writer = log_lib.JsonlWriter(str(workdir / 'metrics.jsonl'))
    for step, split, metrics in lines:
      writer.write(step, split, metrics)
    writer.close()
  return str(workdir)


def test_compare_shows_differing_fields_and_the_last_eval(tmp_path):
  a = _run(tmp_path, 'a', BASE, [
      (10, 'train', {'loss': 1.0}), (10, 'eval', {'loss': 0.9, 'accuracy': 0.5}),
      (20, 'eval', {'loss': 0.7, 'accuracy': 0.6, 'time': 3.0, 'samples': 'text'}),
      (20, 'eval', {'loss': 0.6, 'accuracy': 0.7, 'time': 4.0}),  # a restart's repeat wins
      (30, 'train', {'loss': 0.5})])
  b = _run(tmp_path, 'b', {**BASE, 'learning_rate': 0.01, 'model_kwargs': {'width': 16}}, [
      (20, 'eval', {'loss': 0.8, 'accuracy': 0.55, 'perplexity': 'nan'})])
  c = _run(tmp_path, 'c', {k: v for k, v in BASE.items() if k != 'seed'})  # no metrics yet
  columns, rows = runs.compare([a, b, c])
  assert columns == ['run', 'learning_rate', 'model_kwargs', 'seed', 'eval/step',
                     'eval/loss', 'eval/accuracy', 'eval/perplexity']
  assert rows == [
      ['a', 0.1, {'width': 8}, 0, 20, 0.6, 0.7, None],
      ['b', 0.01, {'width': 16}, 0, 20, 0.8, 0.55, 'nan'],
      ['c', 0.1, {'width': 8}, None, None, None, None, None],
  ]
  columns, rows = runs.compare([a, b], all_fields=True)
  assert columns[:6] == ['run', 'batch_size', 'git_commit', 'learning_rate', 'model',
                         'model_kwargs']


def test_a_different_commit_is_a_column_and_names_stay_unique(tmp_path):
  (tmp_path / 'x').mkdir()
  (tmp_path / 'y').mkdir()
  a = _run(tmp_path / 'x', 'run', BASE, commit='a' * 40)
  b = _run(tmp_path / 'y', 'run', BASE, commit='b' * 40)
  columns, rows = runs.compare([a, b])
  assert columns == ['run', 'git_commit', 'eval/step']
  assert [r[0] for r in rows] == [os.path.normpath(a), os.path.normpath(b)]
  table = runs.format_table(columns, rows)
  assert 'a' * 12 in table and 'a' * 13 not in table  # commits shortened


def test_format_table():
  text = runs.format_table(['run', 'lr', 'eval/accuracy'],
                           [['a', 0.1, 0.912345], ['long_name', None, 1]])
  assert text.splitlines() == [
      'run        lr   eval/accuracy',
      '---------  ---  -------------',
      'a          0.1  0.9123',
      'long_name  -    1',
  ]


def test_cli_prints_the_table_sorted(tmp_path, capsys):
  a = _run(tmp_path, 'a', BASE, [(5, 'eval', {'accuracy': 0.5})])
  b = _run(tmp_path, 'b', {**BASE, 'seed': 1}, [(5, 'eval', {'accuracy': 0.9})])
  c = _run(tmp_path, 'c', {**BASE, 'seed': 2})
  assert entry.run(runs, [a, b, c, '--sort=-eval/accuracy']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split() == ['run', 'seed', 'eval/step', 'eval/accuracy']
  assert [l.split()[0] for l in lines[2:]] == ['b', 'a', 'c']
  assert entry.run(runs, [a, '--sort=nope']) == 2
  assert "no column 'nope'" in capsys.readouterr().err


def test_cli_rejects_a_directory_that_is_not_a_run(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  proc = subprocess.run([sys.executable, '-m', 'dlresearch.runs', str(empty)],
                        capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      f'error: {empty}: no config.json or metrics.jsonl (not a run directory?)')
  with pytest.raises(FileNotFoundError):
    runs.compare([str(tmp_path / 'missing')])


def test_epoch_based_runs_show_the_steps_they_train(tmp_path):
  def run(name, num_steps, resolved):
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / 'config.json').write_text(json.dumps(
        {'config': {**BASE, 'num_steps': num_steps, 'num_epochs': 30},
         'num_steps': resolved}))
    return str(workdir)
  columns, rows = runs.compare([run('epochs', 0, 674), run('steps', 500, 500)])
  assert columns == ['run', 'num_steps', 'eval/step']
  assert rows == [['epochs', 674, None], ['steps', 500, None]]
