r"""Fairness audit of a trained run's predictions, or of any system's scores,
by group.

    python -m experiments.audit --workdir=runs/adult --group_key=sex
    python -m experiments.audit --workdir=runs/adult --group_key=sex,race \
        --out=runs/adult/audit_sex_race
    python -m experiments.audit --dataset=compas --score_column=decile_score \
        --threshold=5 --group_key=race --out=runs/compas_score_audit
    python -m experiments.audit --predictions=scores.csv --label_column=y \
        --score_column=risk --threshold=0.5 --group_key=sex --out=DIR

A run (``--workdir``): restores it (``dlresearch.restore``), predicts its
eval split (or ``--split``) and writes to ``--out`` (default ``RUN/audit``).
A system's existing scores, no trained run: ``--dataset=NAME`` reads a
column of a dataset (``--split``, default its ``full`` split where it has
one, else its eval split; e.g. COMPAS's own ``decile_score``);
``--predictions=FILE.csv`` reads a CSV with a header (``--label_column``:
integer classes, 1 the positive one; ``--score_column``: numbers;
``--group_key``: any values). The prediction is ``score >= --threshold``;
ECE is left out (null) unless every score lies in [0, 1]; the data audit
covers the audited rows. ``--out`` is required. Files:

- ``report.json``: per group of each ``--group_key`` column: count,
  accuracy, selection rate, TPR, FPR, FNR, precision, ECE; the gaps
  (demographic-parity difference and ratio, equalized-odds difference);
  seeded bootstrap 95% intervals for all (``--n_bootstrap``); and under
  ``data`` a data audit of the train split (rows, label rate, class balance
  and representation per group, groups below ``--min_group_size``).
- ``predictions.csv``: ``label,prediction,score,group``, one row per eval
  example (``score``: probability of class 1).
- ``{key}_{metric}.png`` and ``{key}_gaps.png``: bars with intervals.

The math is ``dlresearch.rai.audit`` (``model_audit``, ``data_audit``,
``write_report``); this module reads the run (``run_data``).
"""

import csv
import dataclasses
import math
import os
import pathlib
from typing import Sequence

import numpy as np

import dlresearch
from dlresearch.config import ConfigError
from dlresearch.tools import entry

# Loaded when first used, after the flags are checked (jax takes seconds).
tfds = entry.lazy('tensorflow_datasets')
datasets = entry.lazy('dlresearch.data.datasets')
audit = entry.lazy('dlresearch.rai.audit')
run_data = entry.lazy('dlresearch.tools.run_data')

PROG = 'python -m experiments.audit'
@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m experiments.audit``'s flags."""

  workdir: str = entry.option('', 'The trained run to audit (or give '
                              '--dataset or --predictions).')
  group_key: str = entry.option(help="Group column(s), comma-separated (e.g. "
                                "'sex' or 'sex,race').", required=True)
  split: str = entry.option('', "Split to audit (default: the run's eval "
                            "split; with --dataset its 'full' split, else its "
                            'eval split).')
  out: str = entry.option('', 'Output directory (default: RUN/audit; '
                          'required with --dataset/--predictions).')
  dataset: str = entry.option('', "Audit this dataset's own score column "
                              '(--score_column), no trained run.')
  predictions: str = entry.option('', "Audit a CSV of any system's "
                                  'predictions (header row), no trained run.')
  label_column: str = entry.option('label', 'With --dataset/--predictions: '
                                   'the true class (integers; 1 positive).')
  score_column: str = entry.option('', "With --dataset/--predictions: the "
                                   "system's score (--predictions default: "
                                   'score).')
  threshold: float = entry.option(0.5, 'With --dataset/--predictions: '
                                  'predict the positive class when score '
                                  '>= threshold.')
  data_dir: str = entry.option('~/tensorflow_datasets', 'With --dataset: '
                               'the TFDS data directory.')
  manual_dir: str = entry.option('', "With --dataset: the builder's raw "
                                 'files (default: where fetch writes).')
  step: str = entry.option('', "Checkpoint: a step, 'best', or empty for the "
                           'latest.')
  n_bootstrap: int = entry.option(1000, 'Bootstrap resamples (>= 0; 0: no '
                                  'intervals).')
  seed: int = entry.option(0, 'Bootstrap seed.')
  min_group_size: int = entry.option(30, 'The data audit flags smaller '
                                     'groups.')

  def __post_init__(self):
    entry.at_least(self, 'n_bootstrap', 0)
    given = [f'--{k}' for k in ('workdir', 'dataset', 'predictions')
             if getattr(self, k)]
    if len(given) != 1:
      raise ConfigError('workdir', 'give exactly one of --workdir (a trained '
                        'run), --dataset or --predictions (existing scores); '
                        f'got {", ".join(given) or "none"}')
    if not math.isfinite(self.threshold):
      raise ConfigError('threshold', f'must be a number (got {self.threshold})')
    if self.workdir:
      for name, default in (('label_column', 'label'), ('score_column', ''),
                            ('threshold', 0.5),
                            ('data_dir', '~/tensorflow_datasets'),
                            ('manual_dir', '')):
        if getattr(self, name) != default:
          raise ConfigError(name, 'only with --dataset or --predictions')
    elif self.step:
      raise ConfigError('step', 'only with --workdir (a trained run)')
    elif not self.out:
      raise ConfigError('out', f'name the output directory (with {given[0]})')
    elif self.dataset and not self.score_column:
      raise ConfigError('score_column', "name the dataset's score column "
                        '(e.g. decile_score)')


def main(options: Options) -> None:
  """Audits a run or a system's scores, prints a summary and the files."""
  keys = [k.strip() for k in options.group_key.split(',') if k.strip()]
  if not options.workdir:
    report, paths = audit_scores(options, keys)
    print(audit_summary(report))
    print(f'wrote {len(paths)} files to {options.out}')
    return
  run = dlresearch.restore(options.workdir, run_data.step_arg(options.step))
  out = options.out or f'{run.workdir}/audit'
  report, paths = audit_run(
      run, keys, out, split=options.split, n_bootstrap=options.n_bootstrap,
      seed=options.seed, min_group_size=options.min_group_size)
  print(audit_summary(report))
  print(f'wrote {len(paths)} files to {out}')


def audit_run(run, group_keys: Sequence[str], out_dir: str, *,
              split: str = '', n_bootstrap: int = 1000, seed: int = 0,
              min_group_size: int = 30) -> tuple[dict, list[pathlib.Path]]:
  """Audits the run's predictions on ``split`` by ``group_keys``.

  ``predictions.csv``'s ``group`` column is the group of the first key
  (``Female``), or ``key=name`` pairs joined by ';' for several keys.

  Returns:
    (report, paths written).
  """
  if not group_keys:
    raise ConfigError('group_key', 'name at least one group column')
  data = run_data.split_data(run, split, group_keys)
  got = run_data.predict(run, data.dataset, data.task)
  probs = run_data.softmax(got['logits'])
  labels = got[data.task.label_key]
  prediction = probs.argmax(-1)
  score = probs[:, run_data.POS_LABEL]
  groups = {key: run_data.named(got[key], names) for key, names in data.groups}
  report = audit.model_audit(labels, prediction, score, groups,
                             n_bootstrap=n_bootstrap, seed=seed,
                             pos_label=run_data.POS_LABEL, progress='auto')
  cfg = run.config
  train_split = cfg.train_split or 'train'
  train = datasets.load_in_memory(cfg.dataset, train_split,
                                  os.path.expanduser(cfg.data_dir),
                                  cfg.manual_dir or None)
  report['data'] = audit.data_audit(
      train[data.task.label_key],
      {key: run_data.named(train[key], names) for key, names in data.groups},
      min_group_size=min_group_size, pos_label=run_data.POS_LABEL)
  report['data']['split'] = train_split
  report.update(workdir=run.workdir, step=run.step,
                split=split or cfg.eval_split or 'default eval split',
                dataset=cfg.dataset, positive_class=run_data.POS_LABEL)
  if len(groups) == 1:
    group_col = next(iter(groups.values()))
  else:
    group_col = np.array([';'.join(f'{k}={v[i]}' for k, v in groups.items())
                          for i in range(len(labels))], dtype=object)
  paths = audit.write_report(out_dir, report, {
      'label': labels, 'prediction': prediction, 'score': score,
      'group': group_col})
  return report, paths


def audit_scores(options: Options, group_keys: Sequence[str]
                 ) -> tuple[dict, list[pathlib.Path]]:
  """Audits existing scores (``--dataset`` or ``--predictions``).

  Everything is read and checked before ``options.out`` is created.

  Returns:
    (report, paths written).
  """
  if not group_keys:
    raise ConfigError('group_key', 'name at least one group column')
  if options.dataset:
    columns, split = _dataset_columns(options, group_keys)
    source = {'dataset': options.dataset, 'split': split}
  else:
    columns = _csv_columns(options.predictions, options.label_column,
                           options.score_column or 'score', group_keys)
    source = {'predictions': os.path.abspath(options.predictions)}
  labels, score = columns['label'], columns['score']
  others = sorted(set(np.unique(labels).tolist()) - {0, 1})
  if others:
    raise ConfigError('label_column', f'{options.label_column!r} holds '
                      f'{others[:5]}; a score audit needs classes 0 and 1 '
                      '(1: positive)')
  groups = {k: columns[k] for k in group_keys}
  prediction = (score >= options.threshold).astype(np.int64)
  report = audit.model_audit(labels, prediction, score, groups,
                             n_bootstrap=options.n_bootstrap,
                             seed=options.seed, pos_label=run_data.POS_LABEL)
  if not ((score >= 0) & (score <= 1)).all():  # not a probability: no ECE
    for entry_ in [report['overall'], *(g for by in report['groups'].values()
                                        for g in by.values())]:
      entry_['ece'] = {'value': None, 'ci': None}
  report['data'] = audit.data_audit(labels, groups,
                                    min_group_size=options.min_group_size,
                                    pos_label=run_data.POS_LABEL)
  report['data']['split'] = 'the audited rows'
  report.update(source, label_column=options.label_column,
                score_column=options.score_column or 'score',
                threshold=options.threshold, positive_class=run_data.POS_LABEL)
  group_col = _group_column(groups, len(labels))
  paths = audit.write_report(options.out, report, {
      'label': labels, 'prediction': prediction, 'score': score,
      'group': group_col})
  return report, paths


def _group_column(groups: dict, n: int) -> np.ndarray:
  """``predictions.csv``'s group: the value, or ``k=v`` pairs joined by ';'."""
  if len(groups) == 1:
    return np.asarray(next(iter(groups.values())))
  return np.array([';'.join(f'{k}={v[i]}' for k, v in groups.items())
                   for i in range(n)], dtype=object)


def _dataset_columns(options: Options, group_keys: Sequence[str]
                     ) -> tuple[dict[str, np.ndarray], str]:
  """``{'label', 'score', group: names}`` of a dataset split, and the split."""
  data_dir = os.path.expanduser(options.data_dir)
  manual_dir = options.manual_dir or None
  info = datasets.dataset_info(options.dataset, data_dir, manual_dir)
  split = options.split or ('full' if 'full' in info.splits
                            else info.eval_split)
  if info.splits and split not in info.splits:
    raise ConfigError('split', f'{options.dataset} has no split {split!r}; '
                      f'its splits: {", ".join(info.splits)}')
  source = datasets.get_source(options.dataset, split, data_dir, manual_dir)
  features = source.dataset_info.features
  arrays = datasets.load_in_memory(options.dataset, split, data_dir,
                                   manual_dir)
  out = {}
  for flag, name in (('label_column', options.label_column),
                     ('score_column', options.score_column), *(
                         ('group_key', k) for k in group_keys)):
    if name not in arrays:
      raise ConfigError(flag, f'{options.dataset} has no column {name!r}; '
                        f'its columns: {", ".join(arrays)}')
    values = np.asarray(arrays[name])
    if values.ndim != 1:
      raise ConfigError(flag, f'column {name!r} holds {values.shape[1:]} '
                        'vectors, not one value per row')
    if flag == 'group_key' and isinstance(features[name],
                                          tfds.features.ClassLabel):
      values = run_data.named(values, tuple(features[name].names))
    out[name] = values
  labels = out[options.label_column]
  if not np.issubdtype(labels.dtype, np.integer):
    raise ConfigError('label_column', f'column {options.label_column!r} is '
                      f'{labels.dtype}, not integer classes')
  score = out[options.score_column]
  if not np.issubdtype(score.dtype, np.number):
    raise ConfigError('score_column', f'column {options.score_column!r} is '
                      f'{score.dtype}, not numbers')
  out['label'] = labels
  out['score'] = score.astype(np.float64)
  return out, split


def _csv_columns(path: str, label_column: str, score_column: str,
                 group_keys: Sequence[str]) -> dict[str, np.ndarray]:
  """``{'label' int, 'score' float, group: str}`` of a predictions CSV."""
  try:
    with open(path, encoding='utf-8-sig', newline='') as f:  # BOM or not
      reader = csv.reader(f)
      header = next(reader, None)
      rows = list(reader)
  except UnicodeDecodeError as e:
    raise ConfigError('predictions', f'{path} is not UTF-8 text ({e.reason} '
                      f'at byte {e.start})') from e
  except csv.Error as e:
    raise ConfigError('predictions', f'{path} is not a CSV file: {e}') from e
  if not header:
    raise ConfigError('predictions', f'{path} is empty; it needs a header '
                      'row and one row per example')
  header = [h.strip() for h in header]
  wanted = (('label_column', label_column), ('score_column', score_column),
            *(('group_key', k) for k in group_keys))
  for flag, name in wanted:
    if name not in header:
      raise ConfigError(flag, f'{path} has no column {name!r}; its '
                        f'columns: {", ".join(header)}')
  if not rows:
    raise ConfigError('predictions', f'{path} has a header but no rows')
  index = {name: header.index(name) for _, name in wanted}
  out = {name: [] for _, name in wanted}
  for line_no, row in enumerate(rows, 2):
    if len(row) != len(header):
      raise ConfigError('predictions', f'{path}:{line_no}: {len(row)} '
                        f'fields, the header has {len(header)}')
    for name, i in index.items():
      out[name].append(row[i].strip())
  labels = _parse(out[label_column], int, path, 'label_column', label_column,
                  'an integer class')
  score = _parse(out[score_column], float, path, 'score_column',
                 score_column, 'a finite number')
  bad = ~np.isfinite(score)
  if bad.any():
    raise ConfigError('score_column', f'{path}:{int(bad.argmax()) + 2}: '
                      f'{score_column!r} is {out[score_column][bad.argmax()]!r},'
                      ' not a finite number')
  result = {k: np.array(out[k], dtype=object) for k in group_keys}
  result.update(label=labels, score=score)
  return result


def _parse(values: list[str], kind, path: str, flag: str, column: str,
           what: str) -> np.ndarray:
  """The column as ``kind`` values; ConfigError naming the first bad row."""
  parsed = []
  for line_no, value in enumerate(values, 2):
    try:
      parsed.append(kind(value))
    except ValueError:
      raise ConfigError(flag, f'{path}:{line_no}: {column!r} is {value!r}, '
                        f'not {what}') from None
  return np.array(parsed, np.int64 if kind is int else np.float64)


def audit_summary(report: dict) -> str:
  """A few lines: per group accuracy/selection rate/TPR/FPR/FNR (%), gaps."""
  where = (f'step {report["step"]}' if 'step' in report else
           f'{report.get("score_column")} >= {report.get("threshold")}')
  lines = [f'{report["n"]} examples, {where}; accuracy '
           f'{_fmt(report["overall"]["accuracy"])}% (95% bootstrap CI)']
  for attr, groups in report['groups'].items():
    for name, g in groups.items():
      lines.append(f'  {attr}={name} (n={g["count"]}): accuracy '
                   f'{_fmt(g["accuracy"])}, selection '
                   f'{_fmt(g["selection_rate"])}, TPR {_fmt(g["tpr"])}, '
                   f'FPR {_fmt(g["fpr"])}, FNR {_fmt(g["fnr"])}')
    gaps = report['gaps'][attr]
    lines.append(f'  {attr} gaps: ' + ', '.join(
        f'{k} {_fmt(v, pct=False)}' for k, v in gaps.items()))
  return '\n'.join(lines)


def _fmt(stat: dict, pct: bool = True) -> str:
  """``{'value', 'ci'}`` as ``V [LO, HI]`` (percent unless ``pct=False``)."""
  value, ci = stat['value'], stat.get('ci')
  if value is None:
    return 'n/a'
  scale = 100 if pct else 1
  text = f'{scale * value:.1f}' if pct else f'{value:.3f}'
  if ci and ci[0] is not None:
    text += (f' [{scale * ci[0]:.1f}, {scale * ci[1]:.1f}]' if pct else
             f' [{ci[0]:.3f}, {ci[1]:.3f}]')
  return text
