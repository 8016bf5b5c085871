r"""Fairness audit of a trained run's predictions, by group.

    python -m experiments.audit --workdir=runs/adult --group_key=sex
    python -m experiments.audit --workdir=runs/adult --group_key=sex,race \
        --out=runs/adult/audit_sex_race

Restores the run (``dlresearch.restore``), predicts its eval split (or
``--split``) and writes to ``--out`` (default ``RUN/audit``):

- ``report.json``: per group of each ``--group_key`` column: count,
  accuracy, selection rate, TPR, FPR, precision, ECE; the gaps
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

import dataclasses
import os
import pathlib
from typing import Sequence

import numpy as np

import dlresearch
from dlresearch.config import ConfigError
from dlresearch.data import datasets
from dlresearch.rai import audit
from dlresearch.tools import entry, run_data

PROG = 'python -m experiments.audit'
POS_LABEL = run_data.POS_LABEL
_named = run_data.named


@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m experiments.audit``'s flags."""

  workdir: str = entry.option(help='The trained run to audit.', required=True)
  group_key: str = entry.option(help="Group column(s), comma-separated (e.g. "
                                "'sex' or 'sex,race').", required=True)
  split: str = entry.option('', "Split to audit (default: the run's eval "
                            'split).')
  out: str = entry.option('', 'Output directory (default: RUN/audit).')
  step: str = entry.option('', "Checkpoint: a step, 'best', or empty for the "
                           'latest.')
  n_bootstrap: int = entry.option(1000, 'Bootstrap resamples (>= 0; 0: no '
                                  'intervals).')
  seed: int = entry.option(0, 'Bootstrap seed.')
  min_group_size: int = entry.option(30, 'The data audit flags smaller '
                                     'groups.')

  def __post_init__(self):
    entry.at_least(self, 'n_bootstrap', 0)


def main(options: Options) -> None:
  """Restores the run, audits it, prints a summary and the files written."""
  keys = [k.strip() for k in options.group_key.split(',') if k.strip()]
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
  score = probs[:, POS_LABEL]
  groups = {key: _named(got[key], names) for key, names in data.groups}
  report = audit.model_audit(labels, prediction, score, groups,
                             n_bootstrap=n_bootstrap, seed=seed,
                             pos_label=POS_LABEL, progress='auto')
  cfg = run.config
  train_split = cfg.train_split or 'train'
  train = datasets.load_in_memory(cfg.dataset, train_split,
                                  os.path.expanduser(cfg.data_dir),
                                  cfg.manual_dir or None)
  report['data'] = audit.data_audit(
      train[data.task.label_key],
      {key: _named(train[key], names) for key, names in data.groups},
      min_group_size=min_group_size, pos_label=POS_LABEL)
  report['data']['split'] = train_split
  report.update(workdir=run.workdir, step=run.step,
                split=split or cfg.eval_split or 'default eval split',
                dataset=cfg.dataset, positive_class=POS_LABEL)
  if len(groups) == 1:
    group_col = next(iter(groups.values()))
  else:
    group_col = np.array([';'.join(f'{k}={v[i]}' for k, v in groups.items())
                          for i in range(len(labels))], dtype=object)
  paths = audit.write_report(out_dir, report, {
      'label': labels, 'prediction': prediction, 'score': score,
      'group': group_col})
  return report, paths


def audit_summary(report: dict) -> str:
  """A few lines: per group accuracy/selection rate/TPR/FPR (%), gaps."""
  lines = [f'{report["n"]} examples, step {report["step"]}; accuracy '
           f'{_fmt(report["overall"]["accuracy"])}% (95% bootstrap CI)']
  for attr, groups in report['groups'].items():
    for name, g in groups.items():
      lines.append(f'  {attr}={name} (n={g["count"]}): accuracy '
                   f'{_fmt(g["accuracy"])}, selection '
                   f'{_fmt(g["selection_rate"])}, TPR {_fmt(g["tpr"])}, '
                   f'FPR {_fmt(g["fpr"])}')
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
