"""Compare runs: the config fields that differ and each run's final eval.

    python -m dlresearch.runs WORKDIR [WORKDIR...] [--all] [--sort=-eval/accuracy]

prints one row per run (bad input: one line ``error: ...``, exit status
2)::

    run    learning_rate  eval/step  eval/loss  eval/accuracy
    lr0.1  0.1            1000       0.3123     0.9012
    lr0.01 0.01           1000       0.4410     0.8755

Config columns come from ``WORKDIR/config.json`` (``{"config": {...}}``):
the fields whose values are not the same in every run (a field missing from
a run counts as different), plus ``git_commit`` when the commits differ;
``--all`` shows every field. Metric columns are the numbers of the last eval
line of ``metrics.jsonl`` (``logging.read_metrics``, so a restart's repeated
steps count once). Missing values print as ``-``.

    python -m dlresearch.runs --sync_to=mlflow:URI WORKDIR [WORKDIR...]

sends each run to an MLflow server instead (a run whose ``--tracker`` was
down, or that had none): the metrics of ``metrics.jsonl`` and the artifacts
the server lacks, into the run recorded in ``WORKDIR/trackers/mlflow.json``
when it is on that server, else a new one
(``dlresearch/callbacks/trackers.py``). Run it on a finished run.
"""

import dataclasses
import json
import os
from typing import Any, Sequence

from dlresearch import config as config_lib, logging as log_lib
from dlresearch.plot import run_names
from dlresearch.tools import entry

PROG = 'python -m dlresearch.runs'

_MISSING = object()
_FIRST_METRICS = ('loss', 'accuracy')
_NOT_METRICS = ('step', 'split', 'time')


def _read_config(workdir: str) -> dict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    record = json.load(f)
  out = config_lib.flatten(record.get('config', {}))  # sectioned or flat
  if record.get('num_steps'):  # the steps the run trains (also from epochs)
    out['num_steps'] = record['num_steps']
  if record.get('git_commit'):
    out['git_commit'] = record['git_commit']
  return out


def _final_eval(workdir: str) -> dict:
  if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    return {}
  evals = log_lib.read_metrics(workdir, 'eval')
  return evals[-1] if evals else {}


def _is_number(v: Any) -> bool:
  if isinstance(v, bool):
    return False
  if isinstance(v, (int, float)):
    return True
  return isinstance(v, str) and v.lower() in ('nan', 'inf', '-inf', 'infinity', '-infinity')


def compare(workdirs: Sequence[str], *, all_fields: bool = False
            ) -> tuple[list[str], list[list[Any]]]:
  """``(columns, rows)``: one row per run, values as stored (``None`` if missing).

  Columns: ``run``, the differing config fields in name order (all of them
  with ``all_fields``), ``eval/step`` and ``eval/<metric>`` for the numeric
  metrics of the final eval lines (``loss`` and ``accuracy`` first).
  FileNotFoundError for a directory with neither config.json nor
  metrics.jsonl.
  """
  if isinstance(workdirs, str):
    workdirs = [workdirs]
  for w in workdirs:
    if not any(os.path.isfile(os.path.join(w, f)) for f in ('config.json', 'metrics.jsonl')):
      raise FileNotFoundError(f'{w}: no config.json or metrics.jsonl (not a run directory?)')
  configs = [_read_config(w) for w in workdirs]
  finals = [_final_eval(w) for w in workdirs]

  fields = sorted({k for c in configs for k in c})
  if not all_fields:
    fields = [k for k in fields
              if any(json.dumps(c.get(k, _MISSING), sort_keys=True, default=repr)
                     != json.dumps(configs[0].get(k, _MISSING), sort_keys=True, default=repr)
                     for c in configs)]
  names = {k for f in finals for k, v in f.items() if k not in _NOT_METRICS and _is_number(v)}
  metrics = [m for m in _FIRST_METRICS if m in names] + sorted(names - set(_FIRST_METRICS))

  columns = ['run', *fields, 'eval/step', *(f'eval/{m}' for m in metrics)]
  rows = []
  for name, config, final in zip(run_names(workdirs), configs, finals):
    rows.append([name, *(config.get(k) for k in fields), final.get('step'),
                 *(final.get(m) for m in metrics)])
  return columns, rows


def _format(v: Any) -> str:
  if v is None:
    return '-'
  if isinstance(v, float):
    return f'{v:.4g}'
  if isinstance(v, str):
    return v[:12] if len(v) == 40 and all(c in '0123456789abcdef' for c in v) else v
  if isinstance(v, (dict, list)):
    return json.dumps(v, separators=(',', ':'), sort_keys=True)
  return str(v)


def _sort_key(v: Any):
  try:
    return (0, float(v), '')
  except (TypeError, ValueError):
    return (1, 0.0, str(v))  # numbers first


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  cells = [list(columns)] + [[_format(v) for v in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m dlresearch.runs``'s flags."""

  workdirs: tuple[str, ...] = entry.option((), 'run directories',
                                           positional='+')
  all: bool = entry.option(False, 'show every config field')
  sort: str = entry.option('', 'column to sort by (prefix with - for '
                           'descending)')
  sync_to: str = entry.option('', 'mlflow:URI: send the runs to this MLflow '
                              'server (what it lacks) instead of printing '
                              'the table')

  def __post_init__(self):
    if self.sync_to and not self.sync_to.startswith('mlflow:'):
      raise ValueError(f'--sync_to: expected mlflow:URI (got '
                       f'{self.sync_to!r})')


def main(options: Options) -> None:
  """Prints the table of ``compare``, sorted by ``--sort``; or sends the
  runs to ``--sync_to``."""
  if options.sync_to:
    from dlresearch.callbacks import trackers  # pylint: disable=import-outside-toplevel
    for workdir in options.workdirs:
      if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
        raise FileNotFoundError(f'{workdir}: no metrics.jsonl to send')
    for workdir in options.workdirs:
      run_id, sent = trackers.sync(workdir, options.sync_to)
      print(f'{workdir}: sent {sent} metric values to run {run_id} at '
            f'{options.sync_to.partition(":")[2]}', flush=True)
    return
  columns, rows = compare(options.workdirs, all_fields=options.all)
  if options.sort:
    column = options.sort.lstrip('-')
    if column not in columns:
      raise ValueError(f'--sort: no column {column!r}; columns: '
                       f'{", ".join(columns)}')
    i = columns.index(column)
    present = [r for r in rows if r[i] is not None]
    present.sort(key=lambda r: _sort_key(r[i]),
                 reverse=options.sort.startswith('-'))
    rows = present + [r for r in rows if r[i] is None]
  print(format_table(columns, rows))
