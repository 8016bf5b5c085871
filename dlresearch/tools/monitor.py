r"""Drift monitoring of a trained run: live data against its training data.

    python -m experiments.monitor --workdir=runs/adult --live=test
    python -m experiments.monitor --workdir=runs/adult --live=test \
        --live_filter=sex=Female
    python -m experiments.monitor --workdir=runs/quickstart --live=test \
        --live_transform=rotate:30
    python -m experiments.monitor --workdir=runs/adult --live=batch.npz

Compares a live window with the run's training split (each subsampled to
``--max_rows``): PSI and KS per feature, MMD with a permutation p-value,
the shift of the predicted-class and score distributions, and calibration
drift when the live window has labels. ``--live`` is a split of the run's
dataset or a ``.npz`` with model inputs (under the input key, e.g.
``features``/``image``, or ``x``; finite numbers shaped as the model input)
and optionally ``label``; ``--live_filter=COLUMN=GROUP`` keeps one group's
rows; ``--live_transform=noise:SIGMA|rotate:DEGREES`` shifts the inputs.
``--features``: per-feature tests on the model inputs (``inputs``) or on
its ``pre_logits`` embedding (``embeddings``; ``auto``: inputs up to 256
values). Writes ``report.json`` to ``--out`` (default ``RUN/monitor``) and
appends each alert to ``OUT/alerts.jsonl`` as ``{"step", "split":
"monitor", "alert", "live", ...}`` (the run's own ``metrics.jsonl`` stays
the training's); a bad ``--live`` (a missing file, one
holding strings, NaN or the wrong shape) ends in one line, nothing
written. The statistics are ``dlresearch.rai.monitor``. ``drift.png``
beside the report shows the largest feature PSIs against the alert
threshold and the live scores' distribution over the reference's.
"""

import dataclasses
import os
import pathlib
import zipfile

import numpy as np

import dlresearch
from dlresearch import logging as log_lib
from dlresearch.config import ConfigError
from dlresearch.tools import entry

# Loaded when first used, after the flags are checked (jax takes seconds).
pipeline = entry.lazy('dlresearch.data.pipeline')
audit = entry.lazy('dlresearch.rai.audit')
monitor = entry.lazy('dlresearch.rai.monitor')
pictures = entry.lazy('dlresearch.rai.pictures')
run_data = entry.lazy('dlresearch.tools.run_data')

PROG = 'python -m experiments.monitor'


@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m experiments.monitor``'s flags."""

  workdir: str = entry.option(help='The trained run to monitor.',
                              required=True)
  live: str = entry.option(help="A split of the run's dataset (test, "
                           'test[:50%]) or a .npz file.', required=True)
  live_filter: str = entry.option('', "COLUMN=GROUP: only that group's rows "
                                  'of the live split (e.g. sex=Female).')
  live_transform: str = entry.option('', 'noise:SIGMA or rotate:DEGREES '
                                     'applied to the live inputs.')
  features: str = entry.option('auto', 'auto, inputs or embeddings.')
  max_rows: int = entry.option(5000, 'Rows per window (> 0).')
  out: str = entry.option('', 'Output directory (default: RUN/monitor).')
  step: str = entry.option('', "Checkpoint: a step, 'best', or empty for the "
                           'latest.')
  seed: int = entry.option(0, 'Subsampling, noise and permutation seed.')

  def __post_init__(self):
    entry.above(self, 'max_rows', 0)


def main(options: Options) -> None:
  """Restores the run, monitors it, prints a summary and what was written."""
  run = dlresearch.restore(options.workdir, run_data.step_arg(options.step))
  out = options.out or f'{run.workdir}/monitor'
  report = monitor_run(
      run, options.live, out, live_filter=options.live_filter,
      live_transform=options.live_transform, features=options.features,
      max_rows=options.max_rows, seed=options.seed, progress='auto')
  print(monitor_summary(report))
  print(f'wrote {out}/report.json; {len(report["alerts"])} alert line(s) '
        f'appended to {out}/alerts.jsonl')


def parse_filter(text: str) -> tuple[str, str] | None:
  """``'sex=Female'`` -> ``('sex', 'Female')``; '' -> None."""
  if not text:
    return None
  key, sep, value = text.partition('=')
  if not sep or not key or not value:
    raise ConfigError('live_filter', f"expected COLUMN=GROUP (e.g. "
                      f"'sex=Female'), got {text!r}")
  return key.strip(), value.strip()


def transform_inputs(x: np.ndarray, spec: str,
                     rng: np.random.Generator | None = None) -> np.ndarray:
  """``'noise:SIGMA'`` (Gaussian, input units) or ``'rotate:DEGREES'``
  (images [N, H, W, C], bilinear, zero fill); '' leaves ``x`` as it is."""
  if not spec:
    return x
  name, _, value = spec.partition(':')
  try:
    amount = float(value)
  except ValueError:
    raise ConfigError('live_transform', f"expected noise:SIGMA or "
                      f"rotate:DEGREES, got {spec!r}") from None
  if name == 'noise':
    rng = rng or np.random.default_rng(0)
    return (x + amount * rng.normal(size=x.shape)).astype(x.dtype)
  if name == 'rotate':
    if x.ndim != 4:
      raise ConfigError('live_transform', 'rotate needs images [N, H, W, C]')
    from scipy import ndimage  # pylint: disable=g-import-not-at-top
    return ndimage.rotate(x, amount, axes=(1, 2), reshape=False, order=1,
                          mode='constant').astype(x.dtype)
  raise ConfigError('live_transform', f"expected noise:SIGMA or "
                    f"rotate:DEGREES, got {spec!r}")


def _sample(n: int, max_rows: int, seed: int) -> np.ndarray:
  if n <= max_rows:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, max_rows,
                                                    replace=False))


def _drift_view(run, got: dict, features: str) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D], scores) for the monitor from ``predict`` output."""
  probs = run_data.softmax(got['logits'])
  scores = probs[:, run_data.POS_LABEL] if probs.shape[1] == 2 else probs
  feats = got['embedding'] if features == 'embeddings' else got['inputs']
  return np.asarray(feats, np.float64).reshape(len(probs), -1), scores


def _live_error(path: str, message: str) -> ConfigError:
  return ConfigError('live', f'{path}: {message}; give a .npz of finite '
                     'numbers shaped as the model input')


def read_live_npz(path: str, input_key: str, reference: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None]:
  """(inputs, labels or None) of a live ``.npz``, checked against one batch
  of the reference inputs (``reference`` [B, ...]): numbers (no strings or
  objects), the reference's per-example shape, at least one row, all
  finite; ``label`` (optional) one non-negative integer per row.

  Raises:
    ConfigError (``--live``) naming the file and what is wrong with it.
  """
  try:
    with np.load(path) as f:
      key = input_key if input_key in f else 'x'
      if key not in f:
        raise _live_error(path, f'no array {input_key!r} or x (it has '
                          f'{", ".join(f.files) or "none"})')
      x = f[key]
      labels = f['label'] if 'label' in f else None
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, ConfigError):
      raise
    raise _live_error(path, f'not a readable .npz of plain arrays '
                      f'({entry.one_line(e)})') from None
  for name, a in ((key, x), ('label', labels)):
    if a is not None and a.dtype.kind not in 'biuf':
      raise _live_error(path, f'{name!r} holds {a.dtype} values, not numbers')
  want = tuple(reference.shape[1:])
  if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
    raise _live_error(path, f'{key!r} has shape {tuple(x.shape)}; the model '
                      f'takes [N, {", ".join(map(str, want))}]')
  if not len(x):
    raise _live_error(path, f'{key!r} has no rows')
  if not np.isfinite(x).all():
    raise _live_error(path, f'{key!r} holds {int((~np.isfinite(x)).sum())} '
                      'NaN or infinite values')
  if labels is not None:
    if labels.shape != (len(x),):
      raise _live_error(path, f"'label' has shape {tuple(labels.shape)}; "
                        f'expected ({len(x)},), one per row')
    if not (np.isfinite(labels).all() and (labels >= 0).all()
            and (labels == np.round(labels)).all()):
      raise _live_error(path, "'label' must hold non-negative integers")
    labels = labels.astype(np.int64)
  return x.astype(reference.dtype), labels


def monitor_run(run, live: str, out_dir: str, *, live_filter: str = '',
                live_transform: str = '', features: str = 'auto',
                max_rows: int = 5000, seed: int = 0,
                thresholds: dict | None = None,
                metrics_file: str | None = None,
                progress: str = 'none') -> dict:
  """Drift of a live window against the run's training split.

  Args:
    run: a restored run.
    live: a split of the run's dataset ('test', 'test[:50%]') or a ``.npz``
      file holding model inputs (preprocessed as the model takes them) under
      the task's input key (or ``x``), and optionally ``label``.
    out_dir: where ``report.json`` goes.
    live_filter: ``COLUMN=GROUP``: keep the live split's rows of one group.
    live_transform: ``noise:SIGMA`` or ``rotate:DEGREES`` applied to the
      live inputs before the model sees them.
    features: what drifts are measured on: 'inputs' (flattened model
      inputs), 'embeddings' (the model's ``pre_logits``), or 'auto'
      (inputs up to 256 values, else embeddings).
    max_rows: each window is subsampled (seeded) to at most this many rows.
    seed: subsampling, noise, MMD permutations.
    thresholds: ``monitor.Thresholds`` fields to override.
    progress: each long step announced with its size, then a done line
      (``logging.Phase``; 'none', the default, prints nothing).
    metrics_file: where alert lines go (default ``out_dir/alerts.jsonl``;
      never the run's ``metrics.jsonl`` unless named here).

  Returns:
    The report (``monitor.DriftMonitor.check`` plus what was compared).
  """
  if features not in ('auto', 'inputs', 'embeddings'):
    raise ConfigError('features', f"must be auto, inputs or embeddings (got "
                      f'{features!r})')
  flt = parse_filter(live_filter)
  is_file = live.endswith('.npz')
  if is_file and flt:
    raise ConfigError('live_filter', 'filters apply to splits, not to .npz '
                      'files')
  if is_file and not os.path.isfile(live):
    raise ConfigError('live', f'{live} does not exist')
  data = run_data.split_data(run, '' if is_file else live,
                             (flt[0],) if flt else ())
  task = data.task
  args, _ = run_data.inputs(task, data.train.get(np.arange(1), None))
  sample = np.asarray(args[0])  # one example's model input [1, ...]
  if is_file:  # checked before anything is computed or written
    live_ds, has_labels = _npz_dataset(task, read_live_npz(
        live, task.input_key, sample))
  else:
    live_ds, has_labels = data.dataset, True
  if features == 'auto':
    features = 'inputs' if sample[0].size <= 256 else 'embeddings'
  rows = _live_rows(live_ds, data.groups, flt, max_rows, seed)
  live_ds = _transformed(live_ds, task.input_key, live_transform, seed)
  embed = features == 'embeddings'
  ref_rows = _sample(data.train.num_examples, max_rows, seed)
  ref, cur = _predict_windows(run, data, (ref_rows, live_ds, rows), embed,
                              live, progress)
  with log_lib.Phase('monitor: drift statistics (PSI and KS per feature, MMD '
                     'with a permutation test)',
                     detail=f'{len(ref_rows):,} reference vs {len(rows):,} '
                     'live rows', progress=progress):
    report, mon = _drift_report(run, task, ref, cur, has_labels, features,
                                thresholds, seed)
  report.update(workdir=run.workdir, step=run.step, live=live,
                live_filter=live_filter, live_transform=live_transform,
                features=features, reference_rows=len(ref_rows),
                thresholds=dataclasses.asdict(mon.thresholds))
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  run_data.write_json(out / 'report.json', report)
  draw_drift(out / 'drift.png', run, ref, cur, features, report)
  path = metrics_file or os.path.join(out_dir, 'alerts.jsonl')
  monitor.append_alerts(path, report['alerts'], step=run.step, live=live,
                        live_filter=live_filter,
                        live_transform=live_transform)
  return audit.jsonable(report)


def _predict_windows(run, data, windows, embed: bool, live: str,
                     progress: str) -> tuple[dict, dict]:
  """The model's scores (and embeddings) of the reference rows of the
  training split and of the live window's rows, each announced."""
  ref_rows, live_ds, rows = windows
  what = 'embeddings and scores' if embed else 'scores'
  with log_lib.Phase(f'monitor: model {what} of the reference (train) window',
                     len(ref_rows), 'row', progress=progress):
    ref = run_data.predict(run, data.train, data.task, rows=ref_rows,
                           embeddings=embed)
  with log_lib.Phase(f'monitor: model {what} of the live window ({live})',
                     len(rows), 'row', progress=progress):
    cur = run_data.predict(run, live_ds, data.task, rows=rows,
                           embeddings=embed)
  return ref, cur


def _npz_dataset(task, read: tuple[np.ndarray, np.ndarray | None]):
  """(dataset, has_labels) of a live ``.npz``'s (inputs, labels or None)."""
  x, labels = read
  has_labels = labels is not None
  return pipeline.ArrayDataset({
      task.input_key: x,
      task.label_key: labels if has_labels else np.zeros(len(x), np.int64),
  }), has_labels


def _live_rows(live_ds, groups, flt, max_rows: int, seed: int) -> np.ndarray:
  """The live window's rows: one group's (``flt``), subsampled (seeded)."""
  rows = np.arange(live_ds.num_examples)
  if flt:
    names = dict(groups)[flt[0]]
    if flt[1] not in names:
      raise ConfigError('live_filter', f'{flt[0]} has no group {flt[1]!r}; '
                        f'its groups: {", ".join(names)}')
    column = live_ds.get(rows, None)[flt[0]]
    rows = rows[np.asarray(column) == names.index(flt[1])]
  rows = rows[_sample(len(rows), max_rows, seed + 1)]
  if not len(rows):
    raise ConfigError('live', 'the live window has no rows')
  return rows


def _transformed(live_ds, input_key: str, spec: str, seed: int):
  """``live_ds`` whose batches' inputs go through ``transform_inputs``
  (``spec`` checked first, on a dummy image)."""
  if not spec:
    return live_ds
  transform_inputs(np.zeros((1, 2, 2, 1), np.float32), spec)
  inner = live_ds.batch_fn
  rng = np.random.default_rng(seed)

  def batch_fn(batch):
    batch = inner(batch) if inner else batch
    x = np.asarray(batch[input_key])
    return {**batch, input_key: transform_inputs(x, spec, rng)}

  return dataclasses.replace(live_ds, batch_fn=batch_fn)


def _drift_report(run, task, ref: dict, cur: dict, has_labels: bool,
                  features: str, thresholds: dict | None, seed: int):
  """(``DriftMonitor.check``'s report with the top PSIs and the accuracies,
  the monitor) of the reference and live predictions."""
  ref_x, ref_s = _drift_view(run, ref, features)
  live_x, live_s = _drift_view(run, cur, features)
  names = (run_data.feature_names(run.config, ref_x.shape[1])
           if features == 'inputs' else
           [f'embedding_{i}' for i in range(ref_x.shape[1])])
  mon = monitor.DriftMonitor(ref_x, ref_s, thresholds,
                             reference_labels=ref[task.label_key],
                             feature_names=names, seed=seed)
  report = mon.check(live_x, live_s,
                     cur[task.label_key] if has_labels else None)
  psis = report['feature_psi']
  report['top_feature_psi'] = dict(sorted(
      psis.items(), key=lambda kv: -(kv[1] or 0))[:10])
  report['accuracy'] = {
      'reference': float(np.mean(ref['logits'].argmax(-1)
                                 == ref[task.label_key])),
      'live': (float(np.mean(cur['logits'].argmax(-1) == cur[task.label_key]))
               if has_labels else None)}
  return report, mon


def draw_drift(path: pathlib.Path, run, ref: dict, cur: dict, features: str,
               report: dict) -> None:
  """``drift.png``: the report's feature PSIs (top 20) and the reference's
  and live window's scores (``pictures.drift_figure``)."""
  from dlresearch import plot  # pylint: disable=g-import-not-at-top
  from dlresearch.tools import explain  # pylint: disable=g-import-not-at-top
  _, ref_s = _drift_view(run, ref, features)
  _, live_s = _drift_view(run, cur, features)
  num_classes = np.asarray(ref['logits']).shape[-1]
  names = explain.class_names(run, num_classes)
  score = (f'P({names[run_data.POS_LABEL]})' if num_classes == 2
           else 'top-class probability')
  mmd = report['mmd']
  plot.save(pictures.drift_figure(
      report['feature_psi'], ref_s, live_s,
      psi_threshold=report['thresholds']['feature_psi'], score_name=score,
      title=(f'live {report["live"]} {report["live_filter"]} '
             f'{report["live_transform"]} vs train: MMD^2 {mmd["mmd2"]:.4f} '
             f'(p {mmd["p_value"]:.3g}), {len(report["alerts"])} alert(s)')),
      str(path))


def monitor_summary(report: dict) -> str:
  acc = report['accuracy']
  lines = [f'live {report["live"]} {report["live_filter"]} '
           f'{report["live_transform"]} ({report["rows"]} rows) vs train '
           f'({report["reference_rows"]} rows), {report["features"]}: '
           f'MMD^2 {report["mmd"]["mmd2"]:.4f} p {report["mmd"]["p_value"]:.3g}; '
           f'prediction PSI {report["prediction"]["predicted_class_psi"]:.3f}, '
           f'score PSI {report["prediction"]["score_psi"]:.3f}; accuracy '
           f'{acc["reference"]:.3f} -> {acc["live"] if acc["live"] is None else round(acc["live"], 3)}']
  lines += [f'  ALERT {a}' for a in report['alerts']] or ['  no alerts']
  return '\n'.join(lines)
