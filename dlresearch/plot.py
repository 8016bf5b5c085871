"""Training curves and confusion matrices as PNG files (matplotlib, Agg).

    python -m dlresearch.plot WORKDIR [WORKDIR...] --out=curves.png \\
        [--smoothing=0.6] [--x=wall_time] [--metrics=loss,auroc]

One panel per metric of the run's own kind (``loss`` and: ``accuracy`` for
classifiers, ``auroc``/``average_precision`` for anomaly runs, ``rmse``/``mae``
for ratings, ``recall@K``/``ndcg@K`` for retrieval, ``perplexity`` and bits
for LMs; ``--metrics`` picks them instead), train and eval of every run
overlaid: one colour per run, train as a line, eval dashed with markers, the
final test line as a star, a baseline the run logged (IsolationForest, the
bias baseline, most popular) dotted. ``--smoothing=w`` smooths the train
lines with TensorBoard's debiased exponential moving average of weight ``w``
and draws the raw train values faintly behind them. ``--x=wall_time`` needs
a ``time`` key (seconds since the start) in the metric lines; runs without
it fall back to steps with a warning.

The loop draws ``WORKDIR/plots/`` with these functions; the command's flags
are ``dlresearch/tools/plot.py``'s (bad input: one line, exit status 2).
Figures have a fixed size in pixels (``CURVES_SIZE``, ``CONFUSION_SIZE``),
so they compare side by side and can be checked by tests.
"""

import math
import os
from typing import Sequence
import warnings

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from dlresearch import logging as log_lib

CURVES_SIZE = (1200, 500)  # (width, height) in pixels
CONFUSION_SIZE = (800, 800)
ROC_PR_SIZE = (1000, 450)
_DPI = 100


def new_figure(size: tuple[int, int]) -> Figure:
  """An empty figure of ``size`` (width, height) pixels, drawn without
  pyplot (no global state); ``save`` writes it at that size."""
  fig = Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


_figure = new_figure


def _save(fig: Figure, out: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=_DPI, format='png')  # no bbox_inches: keep the size
  return out


def load_metrics(workdir: str) -> list[dict]:
  """``read_metrics(workdir)``; FileNotFoundError naming the workdir if absent."""
  if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    raise FileNotFoundError(f'{workdir}: no metrics.jsonl (not a run directory?)')
  return log_lib.read_metrics(workdir)


def _number(value) -> float | None:
  """A logged value as a float ("nan"/"inf" strings included), else None."""
  if isinstance(value, bool):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def smooth(values: Sequence[float], weight: float) -> np.ndarray:
  """TensorBoard's smoothing: an EMA of ``weight``, debiased at the start."""
  if not 0.0 <= weight < 1.0:
    raise ValueError(f'smoothing must be in [0, 1); got {weight}')
  out, last, count = [], 0.0, 0
  for v in values:
    if not math.isfinite(v):
      out.append(v)
      continue
    count += 1
    last = weight * last + (1.0 - weight) * v
    out.append(last / (1.0 - weight ** count))
  return np.asarray(out, np.float64)


def _series(lines: list[dict], split: str, metric: str, x: str) -> tuple[np.ndarray, np.ndarray]:
  xs, ys = [], []
  for line in lines:
    if line['split'] == split and metric in line:
      y = _number(line[metric])
      if y is not None:
        xs.append(line['time'] if x == 'wall_time' else line['step'])
        ys.append(y)
  return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Directory basenames, or the paths when two basenames clash."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(w) for w in workdirs]


def _labels(workdirs: Sequence[str], labels: Sequence[str] | None) -> list[str]:
  if labels is not None:
    if len(labels) != len(workdirs):
      raise ValueError(f'{len(labels)} labels for {len(workdirs)} workdirs')
    return list(labels)
  return run_names(workdirs)


# What kind of run logged a key, and the panels that show it (after
# ``loss``): the first key of each entry found in any line adds its panels.
# A key ending in '@' matches any K (``recall@10``).
KIND_PANELS = (
    ('perplexity', ('perplexity', 'bits_per_char', 'bits_per_token')),
    ('auroc', ('auroc', 'average_precision')),
    ('rmse', ('rmse', 'mae')),
    ('recall@', ('recall@', 'ndcg@')),
    ('bleu', ('bleu', 'chrf')),
    ('accuracy', ('accuracy',)),
)
# Baselines an application logs next to a metric (``iforest_auroc`` beside
# ``auroc``): drawn in the run's colour, dotted, on the metric's panel.
BASELINES = (('iforest_', 'IsolationForest'), ('bias_', 'bias baseline'),
             ('most_popular_', 'most popular'))
_LOG_SCALE = ('perplexity',)


def _keys(runs: Sequence[list[dict]]) -> list[str]:
  """Every numeric key the runs logged, first-seen order."""
  seen = {}
  for lines in runs:
    for line in lines:
      for k, v in line.items():
        if k not in seen and _number(v) is not None and k not in ('step', 'time'):
          seen[k] = True
  return list(seen)


def run_panels(runs: Sequence[list[dict]]) -> list[str]:
  """The panels of the runs' own metrics: ``loss``, then, per run, those of
  the first kind in ``KIND_PANELS`` it logged (an LM's token accuracy or a
  two-tower model's in-batch accuracy stay out). Never a panel without
  data."""
  baseline = tuple(p for p, _ in BASELINES)
  panels = []
  for lines in runs:
    own = [k for k in _keys([lines]) if not k.startswith(baseline)]

    def found(key, own=own):  # 'recall@' -> ['recall@10'], 'auroc' -> ['auroc']
      if key.endswith('@'):
        return [k for k in own if k.startswith(key)]
      return [key] if key in own else []

    mine = ['loss'] if 'loss' in own else []
    for trigger, shown in KIND_PANELS:
      if found(trigger):
        mine += [k for key in shown for k in found(key)]
        break
    panels += [k for k in (mine or own[:1]) if k not in panels]
  if 'loss' in panels:
    panels.insert(0, panels.pop(panels.index('loss')))
  return panels or ['loss']


def plot_curves(workdirs: Sequence[str], out: str, *,
                metrics: Sequence[str] | None = None, smoothing: float = 0.0,
                x: str = 'step', labels: Sequence[str] | None = None) -> str:
  """Train/eval curves of ``workdirs`` overlaid, one panel per metric; returns ``out``.

  ``metrics``: the panels; None: the runs' own (``run_panels``: AUROC/AP
  for anomaly runs, RMSE/MAE for ratings, recall@K/NDCG@K for retrieval,
  perplexity and bits for LMs, accuracy for classifiers), each with the
  baseline the run logged beside it. With explicit ``metrics``,
  ``perplexity`` gets a panel (log scale) when any run logged it, and a
  metric no run logged says "no data". Raises FileNotFoundError for a
  workdir without ``metrics.jsonl``.
  """
  return _save(curves_figure(workdirs, metrics=metrics, smoothing=smoothing, x=x,
                             labels=labels), out)


def curves_figure(workdirs: Sequence[str], *,
                  metrics: Sequence[str] | None = None, smoothing: float = 0.0,
                  x: str = 'step', labels: Sequence[str] | None = None) -> Figure:
  """The figure of ``plot_curves``, unsaved (its axes' titles name the panels)."""
  if x not in ('step', 'wall_time'):
    raise ValueError(f"x must be 'step' or 'wall_time'; got {x!r}")
  smooth([], smoothing)  # validates
  if isinstance(workdirs, str):
    workdirs = [workdirs]
  if not workdirs:
    raise ValueError('no workdirs to plot')
  names = _labels(workdirs, labels)
  runs = [load_metrics(w) for w in workdirs]
  if x == 'wall_time':
    missing = [w for w, lines in zip(workdirs, runs) if any('time' not in l for l in lines)]
    if missing:
      warnings.warn(f'metric lines without "time" in {", ".join(missing)}; '
                    'plotting against step instead', stacklevel=3)
      x = 'step'
  if metrics is None:
    panels = run_panels(runs)
  else:
    panels = list(metrics)
    if 'perplexity' not in panels and any('perplexity' in l for lines in runs for l in lines):
      panels.append('perplexity')

  fig = _figure(CURVES_SIZE)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  colors = [f'C{i % 10}' for i in range(len(runs))]
  for ax, metric in zip(axes, panels):
    drawn = False
    for lines, name, color in zip(runs, names, colors):
      xs, ys = _series(lines, 'train', metric, x)
      if len(xs):
        drawn = True
        if smoothing > 0:
          ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1)
          ax.plot(xs, smooth(ys, smoothing), color=color, label=f'{name} train')
        else:
          ax.plot(xs, ys, color=color, label=f'{name} train')
      xs, ys = _series(lines, 'eval', metric, x)
      if len(xs):
        drawn = True
        ax.plot(xs, ys, color=color, linestyle='--', marker='o', markersize=3,
                label=f'{name} eval')
      xs, ys = _series(lines, 'test', metric, x)
      if len(xs):
        drawn = True
        ax.plot(xs, ys, color=color, linestyle='none', marker='*', markersize=10,
                label=f'{name} test')
      for prefix, what in BASELINES:  # fitted once: a level, its value named
        xs, ys = _series(lines, 'eval', prefix + metric, x)
        if len(xs):
          ax.axhline(ys[-1], color=color, linestyle=':', linewidth=1.5,
                     label=f'{name} {what} {ys[-1]:.4g}')
    ax.set_title(metric)
    ax.set_xlabel('wall time (s)' if x == 'wall_time' else 'step')
    ax.grid(True, alpha=0.3)
    if not drawn:
      ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
    elif metric in _LOG_SCALE:
      ax.set_yscale('log')
  handles, legend_labels = [], []
  for ax in axes:  # one legend for the runs, each label once; baselines
    own = [(h, l) for h, l in zip(*ax.get_legend_handles_labels())  # in their panel
           if any(l.endswith(f' {what} {l.rsplit(" ", 1)[-1]}') for _, what in BASELINES)]
    if own:
      ax.legend(*zip(*own), fontsize='small', loc='best')
    for h, l in zip(*ax.get_legend_handles_labels()):
      if l not in legend_labels and (h, l) not in own:
        handles.append(h)
        legend_labels.append(l)
  if handles:
    if axes[0].get_legend() is not None:
      axes[0].add_artist(axes[0].get_legend())
    axes[0].legend(handles, legend_labels, fontsize='small')
  return fig


def roc_pr_figure(labels, scores: dict, *, title: str = '') -> Figure:
  """ROC and precision-recall curves of anomaly ``scores`` (higher = more
  anomalous) against ``labels`` (1 = anomaly), one curve per entry of
  ``scores`` (``{'model': s, 'IsolationForest': s2}``), each labelled with
  its AUROC / average precision; the ROC panel has the chance diagonal,
  the PR panel the prevalence (a random ranking's precision).
  Axes titles: 'ROC', 'precision-recall'."""
  from sklearn import metrics as sk  # pylint: disable=import-outside-toplevel
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  fig = _figure(ROC_PR_SIZE)
  roc, pr = fig.subplots(1, 2)
  for i, (name, s) in enumerate(scores.items()):
    s = np.asarray(s, np.float64).reshape(-1)
    fpr, tpr, _ = sk.roc_curve(labels, s)
    precision, recall, _ = sk.precision_recall_curve(labels, s)
    color = f'C{i % 10}'
    roc.plot(fpr, tpr, color=color,
             label=f'{name} (AUROC {sk.roc_auc_score(labels, s):.3f})')
    pr.step(recall, precision, where='post', color=color,
            label=f'{name} (AP {sk.average_precision_score(labels, s):.3f})')
  roc.plot([0, 1], [0, 1], color='grey', linestyle=':', label='chance')
  prevalence = labels.mean() if labels.size else 0.0
  pr.axhline(prevalence, color='grey', linestyle=':',
             label=f'prevalence {prevalence:.4f}')
  roc.set(title='ROC', xlabel='false positive rate', ylabel='true positive rate',
          xlim=(0, 1), ylim=(0, 1.01))
  pr.set(title='precision-recall', xlabel='recall', ylabel='precision',
         xlim=(0, 1), ylim=(0, 1.01))
  for ax in (roc, pr):
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize='small', loc='lower right' if ax is roc else 'upper right')
  if title:
    fig.suptitle(f'{title}: {int(labels.sum())} anomalies in {labels.size} examples')
  return fig


def save(fig: Figure, out: str) -> str:
  """Writes ``fig`` as a PNG of its fixed size; returns ``out``."""
  return _save(fig, out)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """``[true, predicted]`` counts of integer ``labels`` and ``predictions``."""
  labels = np.asarray(labels).reshape(-1)
  predictions = np.asarray(predictions).reshape(-1)
  if labels.shape != predictions.shape:
    raise ValueError(f'{labels.size} labels but {predictions.size} predictions')
  for name, a in (('labels', labels), ('predictions', predictions)):
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0
                   or a.max() >= num_classes):
      raise ValueError(f'{name} must be integers in [0, {num_classes})')
  flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
  return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def confusion_matrix_png(labels, predictions, class_names: Sequence[str], out: str, *,
                         normalize: bool = False) -> np.ndarray:
  """Writes the confusion matrix (rows: true class) to ``out``; returns the counts.

  ``normalize``: colour and annotate each row as fractions of its true class.
  Cells are annotated when there are at most 30 classes.
  """
  counts = confusion_matrix(labels, predictions, len(class_names))
  confusion_counts_png(counts, class_names, out, normalize=normalize)
  return counts


def confusion_counts_png(counts, class_names: Sequence[str], out: str, *,
                         normalize: bool = False, title_split: str = '') -> str:
  """``confusion_matrix_png`` from a ``[true, predicted]`` count matrix."""
  counts = np.asarray(counts)
  if counts.shape != (len(class_names), len(class_names)):
    raise ValueError(f'counts of shape {counts.shape} for {len(class_names)} classes')
  shown = counts.astype(np.float64)
  if normalize:
    shown /= np.maximum(counts.sum(axis=1, keepdims=True), 1)
  fig = _figure(CONFUSION_SIZE)
  ax = fig.subplots()
  image = ax.imshow(shown, cmap='Blues', interpolation='nearest')
  fig.colorbar(image, ax=ax, shrink=0.8)
  ticks = np.arange(len(class_names))
  ax.set_xticks(ticks, labels=class_names, rotation=45, ha='right')
  ax.set_yticks(ticks, labels=class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  accuracy = np.trace(counts) / max(counts.sum(), 1)
  where = f'{title_split}: ' if title_split else ''
  ax.set_title(f'confusion matrix ({where}{counts.sum()} examples, accuracy '
               f'{accuracy:.4f})')
  if len(class_names) <= 30:
    top = shown.max() if shown.size else 0
    for (i, j), v in np.ndenumerate(shown):
      ax.text(j, i, f'{v:.2f}' if normalize else str(int(v)), ha='center', va='center',
              fontsize='small', color='white' if v > 0.5 * top else 'black')
  return _save(fig, out)


if __name__ == '__main__':  # the command's flags: dlresearch/tools/plot.py
  from dlresearch.tools import entry, plot as plot_tool  # pylint: disable=g-import-not-at-top
  entry.main(plot_tool)
