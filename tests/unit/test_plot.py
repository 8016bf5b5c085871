"""Tests for plot.py: curves of run directories and confusion matrices."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from dlresearch import logging as log_lib
from dlresearch import plot
from dlresearch.tools import entry, plot as plot_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(tmp_path, name, lines, extra=None):
  """A workdir whose metrics.jsonl is written by the real JSONL writer."""
  workdir = tmp_path / name
  workdir.mkdir()
  writer = log_lib.JsonlWriter(str(workdir / 'metrics.jsonl'))
  for step, split, metrics in lines:
    writer.write(step, split, metrics)
  writer.close()
  return str(workdir)


def _classifier(tmp_path, name, timed=False, offset=0.0):
  lines = []
  for step in range(10, 101, 10):
    m = {'loss': 2.0 / step + offset, 'accuracy': 1 - 1.0 / step}
    lines.append((step, 'train', {**m, **({'time': step * 0.5} if timed else {})}))
    if step % 50 == 0:
      lines.append((step, 'eval', {**m, **({'time': step * 0.5 + 0.1} if timed else {})}))
  return _run(tmp_path, name, lines)


def _png_size(path):
  assert os.path.getsize(path) > 1000
  with Image.open(path) as im:
    assert im.format == 'PNG'
    return im.size


def _lines(ax):
  return {l.get_label(): (l.get_xdata(), l.get_ydata()) for l in ax.get_lines()}


def test_plot_curves_writes_a_fixed_size_png(tmp_path):
  a = _classifier(tmp_path, 'a')
  lm = _run(tmp_path, 'lm', [(s, split, {'loss': 3.0 / s, 'perplexity': np.exp(3.0 / s),
                                         'accuracy': 0.1 * s})
                             for s in (1, 2, 3) for split in ('train', 'eval')])
  out = plot.plot_curves([a, lm], str(tmp_path / 'figs' / 'curves.png'), smoothing=0.6)
  assert _png_size(out) == plot.CURVES_SIZE == (1200, 500)
  one = plot.plot_curves(a, str(tmp_path / 'one.png'))  # one run, no perplexity: same size
  assert _png_size(one) == (1200, 500)


def test_curves_overlay_runs_keep_the_last_line_of_a_repeated_step_and_smooth(tmp_path):
  # A restart logged steps 2 and 3 again; the later lines win.
  restarted = _run(tmp_path, 'r', [
      (1, 'train', {'loss': 4.0}), (2, 'train', {'loss': 9.0}), (3, 'train', {'loss': 9.0}),
      (2, 'train', {'loss': 2.0}), (3, 'train', {'loss': 1.0}), (3, 'eval', {'loss': 1.5}),
      (4, 'train', {'loss': 'nan'}),
  ])
  lm = _run(tmp_path, 'lm', [(1, 'eval', {'loss': 1.0, 'perplexity': 2.7})])
  fig = plot.curves_figure([restarted, lm], smoothing=0.5, labels=['base', 'lm'],
                           metrics=('loss', 'accuracy'))
  loss, accuracy, ppl = fig.axes[:3]
  assert [ax.get_title() for ax in (loss, accuracy, ppl)] == ['loss', 'accuracy', 'perplexity']
  assert ppl.get_yscale() == 'log'
  lines = _lines(loss)
  x, y = lines['base train']
  np.testing.assert_array_equal(x, [1, 2, 3, 4])
  # EMA of weight 0.5 over 4, 2, 1 is 2, 2, 1.5; debiased by 1 - 0.5 ** n.
  np.testing.assert_allclose(y[:3], [4.0, 2.0 / 0.75, 1.5 / 0.875])
  assert np.isnan(y[3])
  np.testing.assert_array_equal(lines['base eval'][1], [1.5])
  np.testing.assert_array_equal(lines['lm eval'][1], [1.0])
  # The raw train values are drawn faintly behind the smoothed line.
  raw = [l for l in loss.get_lines() if l.get_alpha() == 0.25]
  np.testing.assert_array_equal(raw[0].get_ydata()[:3], [4.0, 2.0, 1.0])
  assert any(t.get_text() == 'no data' for t in accuracy.texts)


def test_curves_show_the_runs_own_metrics_and_baselines(tmp_path):
  def run(name, train, evals):
    return _run(tmp_path, name, [(s, 'train', {'loss': 1.0 / s, **train})
                                 for s in (1, 2)] +
                [(s, 'eval', {'loss': 1.0 / s, **evals}) for s in (2, 4)] +
                [(4, 'test', {'loss': 0.3, **evals})])
  kinds = {
      'anomaly': run('anomaly', {}, {'auroc': 0.9, 'average_precision': 0.5,
                                     'iforest_auroc': 0.8,
                                     'iforest_average_precision': 0.3}),
      'ratings': run('ratings', {'mae': 0.7}, {'rmse': 0.9, 'mae': 0.7,
                                               'bias_rmse': 0.95}),
      'retrieval': run('retrieval', {'accuracy': 0.1},
                       {'accuracy': 0.1, 'recall@10': 0.4, 'ndcg@10': 0.2,
                        'most_popular_recall@10': 0.3}),
      'lm': run('lm', {'accuracy': 0.3, 'perplexity': 9.0},
                {'accuracy': 0.3, 'perplexity': 8.0, 'bits_per_char': 3.0}),
      'classifier': run('classifier', {'accuracy': 0.5}, {'accuracy': 0.6}),
  }
  want = {'anomaly': ['loss', 'auroc', 'average_precision'],
          'ratings': ['loss', 'rmse', 'mae'],
          'retrieval': ['loss', 'recall@10', 'ndcg@10'],
          'lm': ['loss', 'perplexity', 'bits_per_char'],
          'classifier': ['loss', 'accuracy']}
  for kind, workdir in kinds.items():
    fig = plot.curves_figure(workdir)
    assert [ax.get_title() for ax in fig.axes] == want[kind], kind
    assert not any(t.get_text() == 'no data' for ax in fig.axes for t in ax.texts)
    assert _png_size(plot.plot_curves(workdir, str(tmp_path / f'{kind}.png'))) == (1200, 500)
  auroc = plot.curves_figure(kinds['anomaly']).axes[1]
  lines = _lines(auroc)
  np.testing.assert_array_equal(lines['anomaly eval'][1], [0.9, 0.9])
  np.testing.assert_array_equal(lines['anomaly test'][1], [0.9])
  np.testing.assert_array_equal(lines['anomaly IsolationForest 0.8'][1], [0.8, 0.8])
  assert plot.curves_figure(kinds['lm']).axes[1].get_yscale() == 'log'
  # Two kinds at once: each run's own panels, loss first.
  both = plot.curves_figure([kinds['ratings'], kinds['classifier']])
  assert [ax.get_title() for ax in both.axes] == ['loss', 'rmse', 'mae', 'accuracy']


def test_roc_pr_figure():
  labels = np.array([0, 0, 0, 1, 0, 1])
  fig = plot.roc_pr_figure(labels, {'model': [0.1, 0.2, 0.3, 0.9, 0.4, 0.8],
                                    'random': [0.5, 0.1, 0.9, 0.2, 0.3, 0.4]},
                           title='eval')
  roc, pr = fig.axes
  assert (roc.get_title(), pr.get_title()) == ('ROC', 'precision-recall')
  labels_drawn = [l.get_label() for l in roc.get_lines()]
  assert labels_drawn[0] == 'model (AUROC 1.000)' and 'chance' in labels_drawn
  assert [l.get_label() for l in pr.get_lines()][0] == 'model (AP 1.000)'
  assert fig.get_suptitle() == 'eval: 2 anomalies in 6 examples'


def test_wall_time_axis_and_fallback_to_steps(tmp_path):
  timed = _classifier(tmp_path, 'timed', timed=True)
  fig = plot.curves_figure([timed], x='wall_time')
  x, _ = _lines(fig.axes[0])['timed train']
  np.testing.assert_allclose(x, np.arange(10, 101, 10) * 0.5)
  assert fig.axes[0].get_xlabel() == 'wall time (s)'
  untimed = _classifier(tmp_path, 'untimed')
  with pytest.warns(UserWarning, match='without "time" in .*untimed; plotting against step'):
    fig = plot.curves_figure([timed, untimed], x='wall_time')
  assert fig.axes[0].get_xlabel() == 'step'
  np.testing.assert_array_equal(_lines(fig.axes[0])['timed train'][0], np.arange(10, 101, 10))


def test_cli_writes_the_png(tmp_path, capsys):
  a, b = _classifier(tmp_path, 'a'), _classifier(tmp_path, 'b', offset=0.1)
  out = str(tmp_path / 'c.png')
  with pytest.warns(UserWarning, match='plotting against step'):
    assert entry.run(plot_tool, [a, b, f'--out={out}', '--smoothing=0.6', '--x=wall_time']) == 0
  assert _png_size(out) == (1200, 500)
  assert entry.run(plot_tool, [a]) == 2  # --out is required
  assert capsys.readouterr().err == 'error: the following arguments are required: --out\n'


def test_cli_fails_in_one_line_on_a_workdir_without_metrics(tmp_path):
  a = _classifier(tmp_path, 'a')
  empty = tmp_path / 'empty'
  empty.mkdir()
  proc = subprocess.run(
      [sys.executable, '-m', 'dlresearch.plot', a, str(empty), f'--out={tmp_path}/x.png'],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f'error: {empty}: no metrics.jsonl (not a run directory?)']
  assert not (tmp_path / 'x.png').exists()


def test_confusion_matrix_png(tmp_path):
  labels = [0, 0, 1, 1, 1, 2, 2, 2, 2]
  predictions = [0, 1, 1, 1, 2, 2, 2, 2, 0]
  counts = plot.confusion_matrix_png(labels, predictions, ['cat', 'dog', 'bird'],
                                     str(tmp_path / 'cm.png'))
  np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 2, 1], [1, 0, 3]])
  assert _png_size(tmp_path / 'cm.png') == plot.CONFUSION_SIZE
  plot.confusion_matrix_png(np.array(labels), np.array(predictions), ['a', 'b', 'c'],
                            str(tmp_path / 'norm.png'), normalize=True)
  assert _png_size(tmp_path / 'norm.png') == plot.CONFUSION_SIZE
  with pytest.raises(ValueError, match=r'labels must be integers in \[0, 2\)'):
    plot.confusion_matrix([0, 2], [0, 1], 2)
  with pytest.raises(ValueError, match='2 labels but 1 predictions'):
    plot.confusion_matrix([0, 1], [0], 2)
