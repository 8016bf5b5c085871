"""The pictures of the audit, explain and monitor tools (matplotlib, Agg).

Each function returns the figure unsaved, so a test can read its panels
(``[ax.get_title() for ax in fig.axes]``) before ``dlresearch.plot.save``
writes it at its fixed size in pixels:

- ``explanation_figure``: the input and its attribution (saliency,
  SmoothGrad, integrated gradients, Grad-CAM) side by side, upscaled, under
  a title naming the true label, the prediction and its probability, with a
  colour bar;
- ``group_metric_figure``: one metric per group with its interval, ``n``
  per group and the overall value as a reference line;
- ``fairness_gaps_figure``: the demographic-parity ratio (fair = 1) and the
  differences (fair = 0) on separate axes, each with its reference line;
- ``drift_figure``: feature PSI bars against the alert threshold, and the
  score distributions of the live window over the reference.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dlresearch import plot

EXPLANATION_SIZE = (900, 440)  # (width, height) in pixels
GROUP_SIZE = (700, 420)
GAPS_SIZE = (900, 400)
DRIFT_SIZE = (1100, 450)


def _grey_or_rgb(image: np.ndarray) -> np.ndarray:
  """[H, W] grey or [H, W, 3] RGB in [0, 1] (min-max scaled)."""
  image = np.asarray(image, np.float64)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 3:
    image = image[..., :3]
  lo, hi = image.min(), image.max()
  return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _resized(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """``heat`` [h, w] bilinearly resized to ``shape`` [H, W]."""
  heat = np.asarray(heat, np.float64)
  if heat.shape == tuple(shape):
    return heat
  from PIL import Image  # pylint: disable=import-outside-toplevel
  img = Image.fromarray(np.float32(heat)).resize((shape[1], shape[0]),
                                                 Image.BILINEAR)
  return np.asarray(img, np.float64)


def explanation_title(label: str, prediction: str, probability: float) -> str:
  """'true: boot, predicted: boot (97.1%)'."""
  return f'true: {label}, predicted: {prediction} ({probability:.1%})'


def explanation_figure(image: Any, heat: Any, *, method: str, label: str,
                       prediction: str, probability: float, target: str,
                       heat_name: str = '') -> plot.Figure:
  """The input beside its attribution map, upscaled (nearest neighbour: a
  pixel stays a square), titled with the label, the prediction and its
  probability; the map is over the input in grey, with a colour bar.

  Args:
    image: [H, W], [H, W, 1] or [H, W, 3] (any range; min-max scaled).
    heat: [h, w] non-negative attribution (resized to the image).
    method: the attribution's name (the right panel's title).
    label, prediction: class names; ``probability`` that of ``prediction``.
    target: the class the attribution is for.
    heat_name: the colour bar's label.

  Axes titles: 'input', '<method> for <target>' (and the colour bar's).
  """
  shown = _grey_or_rgb(image)
  heat = _resized(heat, shown.shape[:2])
  fig = plot.new_figure(EXPLANATION_SIZE)
  left, right = fig.subplots(1, 2)
  cmap = 'gray' if shown.ndim == 2 else None
  left.imshow(shown, cmap=cmap, interpolation='nearest')
  left.set_title('input')
  grey = shown if shown.ndim == 2 else shown.mean(-1)
  right.imshow(grey, cmap='gray', interpolation='nearest')
  mapped = right.imshow(heat, cmap='inferno', alpha=0.6,  # at the image's
                        interpolation='nearest')         # resolution already
  flat = not np.ptp(heat) > 0
  right.set_title(f'{method} for {target}' + (' (flat: all zero)' if flat and
                                               not heat.any() else
                                               ' (flat)' if flat else ''))
  for ax in (left, right):
    ax.set_xticks([])
    ax.set_yticks([])
  bar = fig.colorbar(mapped, ax=right, shrink=0.85)
  bar.set_label(heat_name or f'{method} (per pixel)')
  bar.solids.set_alpha(1.0)  # the scale's colours, not the blend's
  fig.suptitle(explanation_title(label, prediction, probability))
  return fig


def _values(entries: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
  """(values, [2, n] error bars) of ``{'value', 'ci'}`` entries; NaN for
  a missing value, no bar for a missing interval."""
  values = np.array([np.nan if e['value'] is None else e['value']
                     for e in entries], np.float64)
  lo = np.array([np.nan if not e.get('ci') or e['ci'][0] is None
                 else e['ci'][0] for e in entries], np.float64)
  hi = np.array([np.nan if not e.get('ci') or e['ci'][1] is None
                 else e['ci'][1] for e in entries], np.float64)
  err = np.stack([np.clip(values - lo, 0, None), np.clip(hi - values, 0, None)])
  return values, np.nan_to_num(err)


def group_metric_figure(attr: str, metric: str, names: Sequence[str],
                        entries: Sequence[Mapping[str, Any]],
                        counts: Sequence[int],
                        overall: Mapping[str, Any] | None = None
                        ) -> plot.Figure:
  """Bars of ``metric`` per group of ``attr`` with their intervals, each
  tick naming the group and its ``n``; the overall value (when given) as a
  dashed reference line. Axes title: '<attr>: <metric>'."""
  values, err = _values(entries)
  fig = plot.new_figure(GROUP_SIZE)
  ax = fig.subplots()
  x = np.arange(len(names))
  ax.bar(x, np.nan_to_num(values), yerr=err, capsize=4, color='tab:blue')
  ax.set_xticks(x, [f'{n}\nn={c:,}' for n, c in zip(names, counts)],
                rotation=30 if len(names) > 4 else 0,
                ha='right' if len(names) > 4 else 'center')
  if overall is not None and overall.get('value') is not None:
    ax.axhline(overall['value'], color='grey', linestyle='--',
               label=f'overall {overall["value"]:.3f}')
    ax.legend(fontsize='small')
  ax.set_title(f'{attr}: {metric}')
  ax.set_ylabel(metric)
  ax.grid(True, axis='y', alpha=0.3)
  return fig


def fairness_gaps_figure(attr: str, gaps: Mapping[str, Mapping[str, Any]],
                         counts: Mapping[str, int]) -> plot.Figure:
  """The fairness gaps of ``attr`` on two axes: ratios (fair = 1, a line at
  1 and at the four-fifths rule's 0.8) and differences (fair = 0, a line at
  0), each bar with its interval. ``counts``: n per group, named in the
  title. Axes titles: 'ratio (fair = 1)', 'difference (fair = 0)'."""
  ratios = [k for k in gaps if k.endswith('_ratio')]
  diffs = [k for k in gaps if not k.endswith('_ratio')]
  fig = plot.new_figure(GAPS_SIZE)
  left, right = fig.subplots(1, 2, width_ratios=[max(len(ratios), 1),
                                                 max(len(diffs), 1)])
  for ax, keys, ref, title in ((left, ratios, 1.0, 'ratio (fair = 1)'),
                               (right, diffs, 0.0, 'difference (fair = 0)')):
    values, err = _values([gaps[k] for k in keys])
    x = np.arange(len(keys))
    ax.bar(x, np.nan_to_num(values), yerr=err, capsize=4,
           color='tab:orange' if ref else 'tab:purple', width=0.6)
    ax.axhline(ref, color='black', linewidth=1.2, label=f'fair = {ref:g}')
    if ref == 1.0:
      ax.axhline(0.8, color='grey', linestyle='--', label='four-fifths rule 0.8')
      ax.set_ylim(0, 1.05)
    else:
      finite = values[np.isfinite(values)]  # undefined gaps (NaN) draw no bar
      top = float((finite + err[1][np.isfinite(values)]).max()) if finite.size else 0.0
      ax.set_ylim(min(0.0, float(finite.min()) if finite.size else 0.0),
                  max(0.1, 1.15 * top))
    for i, v in enumerate(values):
      if np.isfinite(v):
        ax.annotate(f'{v:.3f}', (i, v), textcoords='offset points',
                    xytext=(8, 3), fontsize='small')
    ax.set_xticks(x, [k.replace('_', ' ') for k in keys])
    ax.set_title(title)
    ax.legend(fontsize='small', loc='best')
    ax.grid(True, axis='y', alpha=0.3)
  fig.suptitle(f'{attr}: fairness gaps across '
               + ', '.join(f'{n} (n={c:,})' for n, c in counts.items()))
  return fig


def drift_figure(feature_psi: Mapping[str, float | None],
                 reference_scores: Any, live_scores: Any, *,
                 psi_threshold: float, score_name: str = 'score',
                 top: int = 20, title: str = '') -> plot.Figure:
  """Feature drift and score drift of a live window.

  Left: the ``top`` largest feature PSIs as bars (red above
  ``psi_threshold``, drawn as a dashed line); no features (images with
  embeddings off, or too many): a note instead. Right: histograms of the
  reference and live scores (``[N]`` probabilities of the positive class,
  or ``[N, C]``: the top-class probability). Axes titles: 'feature PSI',
  '<score_name> distribution'.
  """
  fig = plot.new_figure(DRIFT_SIZE)
  left, right = fig.subplots(1, 2)
  shown = sorted(((k, v) for k, v in feature_psi.items() if v is not None),
                 key=lambda kv: -kv[1])[:top]
  if shown:
    names, values = zip(*shown)
    y = np.arange(len(names))[::-1]
    left.barh(y, values, color=['tab:red' if v > psi_threshold else 'tab:blue'
                                for v in values])
    left.set_yticks(y, names, fontsize='small')
    left.axvline(psi_threshold, color='black', linestyle='--',
                 label=f'alert above {psi_threshold:g}')
    left.legend(fontsize='small', loc='lower right')
    left.set_xlabel('population stability index')
  else:
    left.text(0.5, 0.5, 'no per-feature tests\n(inputs too wide: see MMD '
              'in report.json)', ha='center', va='center',
              transform=left.transAxes)
    left.set_xticks([])
    left.set_yticks([])
  left.set_title('feature PSI')

  def top_score(s):
    s = np.asarray(s, np.float64)
    return s.max(-1) if s.ndim == 2 else s.reshape(-1)

  ref, live = top_score(reference_scores), top_score(live_scores)
  bins = np.linspace(min(ref.min(), live.min()), max(ref.max(), live.max()), 31)
  right.hist(ref, bins=bins, density=True, alpha=0.5, color='tab:blue',
             label=f'reference (n={len(ref):,})')
  right.hist(live, bins=bins, density=True, alpha=0.5, color='tab:red',
             label=f'live (n={len(live):,})')
  right.set_title(f'{score_name} distribution')
  right.set_xlabel(score_name)
  right.set_ylabel('density')
  right.legend(fontsize='small')
  right.grid(True, alpha=0.3)
  if title:
    fig.suptitle(title)
  return fig
