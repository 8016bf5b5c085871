"""dlresearch/rai/pictures.py: each figure has the panels, titles and
reference lines it promises, and saves to a non-blank PNG of its size."""

import numpy as np
from PIL import Image

from dlresearch import plot
from dlresearch.rai import pictures


def _saved(fig, path, size):
  plot.save(fig, str(path))
  with Image.open(path) as im:
    assert im.size == size
    pixels = np.asarray(im.convert('L'))
  assert pixels.std() > 10  # not blank
  return pixels


def _titles(fig):
  return [ax.get_title() for ax in fig.axes]


def test_explanation_figure_side_by_side_upscaled_with_names(tmp_path):
  image = np.zeros((8, 8, 1), np.float32)
  image[2:6, 3:5] = 1.0
  heat = np.zeros((2, 2))  # a Grad-CAM map, coarser than the image
  heat[0, 1] = 1.0
  fig = pictures.explanation_figure(
      image, heat, method='grad_cam', label='seven', prediction='one',
      probability=0.873, target='one', heat_name='Grad-CAM')
  input_ax, map_ax, bar_ax = fig.axes  # the colour bar is an axes
  assert (input_ax.get_title(), map_ax.get_title()) == ('input',
                                                         'grad_cam for one')
  assert fig.get_suptitle() == 'true: seven, predicted: one (87.3%)'
  assert bar_ax.get_ylabel() == 'Grad-CAM'
  # The map is resized to the image, over it; the image drawn pixel for
  # pixel (nearest), upscaled to the panel.
  over = map_ax.get_images()[1].get_array()
  assert over.shape == (8, 8) and over[0, 7] > over[7, 0]
  assert input_ax.get_images()[0].get_interpolation() == 'nearest'
  pixels = _saved(fig, tmp_path / 'e.png', pictures.EXPLANATION_SIZE)
  assert pixels.shape == (440, 900)


def test_group_metric_figure_names_n_and_the_overall_line(tmp_path):
  entries = [{'value': 0.8, 'ci': [0.7, 0.9]}, {'value': 0.6, 'ci': None}]
  fig = pictures.group_metric_figure('sex', 'accuracy', ['Female', 'Male'],
                                     entries, [1200, 3400],
                                     {'value': 0.65, 'ci': [0.6, 0.7]})
  ax = fig.axes[0]
  assert ax.get_title() == 'sex: accuracy'
  assert [t.get_text() for t in ax.get_xticklabels()] == ['Female\nn=1,200',
                                                          'Male\nn=3,400']
  assert [l.get_label() for l in ax.get_lines()][-1] == 'overall 0.650'
  _saved(fig, tmp_path / 'g.png', pictures.GROUP_SIZE)


def test_fairness_gaps_ratio_and_differences_on_separate_axes(tmp_path):
  gaps = {'demographic_parity_difference': {'value': 0.2, 'ci': [0.1, 0.3]},
          'demographic_parity_ratio': {'value': 0.35, 'ci': [0.3, 0.4]},
          'equalized_odds_difference': {'value': 0.1, 'ci': None}}
  fig = pictures.fairness_gaps_figure('sex', gaps, {'Female': 10, 'Male': 30})
  ratio, diff = fig.axes
  assert _titles(fig) == ['ratio (fair = 1)', 'difference (fair = 0)']
  assert [t.get_text() for t in ratio.get_xticklabels()] == [
      'demographic parity ratio']
  assert [t.get_text() for t in diff.get_xticklabels()] == [
      'demographic parity difference', 'equalized odds difference']
  lines = {l.get_label(): l.get_ydata()[0] for ax in (ratio, diff)
           for l in ax.get_lines() if l.get_label().startswith(('fair', 'four'))}
  assert lines == {'fair = 1': 1.0, 'four-fifths rule 0.8': 0.8, 'fair = 0': 0.0}
  assert fig.get_suptitle() == ('sex: fairness gaps across Female (n=10), '
                                'Male (n=30)')
  _saved(fig, tmp_path / 'gaps.png', pictures.GAPS_SIZE)


def test_drift_figure_psi_bars_and_score_distributions(tmp_path):
  rng = np.random.default_rng(0)
  psi = {'age': 0.5, 'hours': 0.05, 'education': 0.25, 'wide': None}
  ref, live = rng.beta(2, 5, 500), rng.beta(5, 2, 300)
  fig = pictures.drift_figure(psi, ref, live, psi_threshold=0.2,
                              score_name='P(>50K)', title='live test')
  bars_ax, hist_ax = fig.axes
  assert _titles(fig) == ['feature PSI', 'P(>50K) distribution']
  ticks = sorted(zip(bars_ax.get_yticks(), bars_ax.get_yticklabels()),
                 key=lambda t: -t[0])
  assert [t.get_text() for _, t in ticks] == ['age', 'education', 'hours']
  red = [p.get_width() for p in bars_ax.patches
         if p.get_facecolor()[0] > 0.5 and p.get_facecolor()[2] < 0.5]
  assert sorted(red) == [0.25, 0.5]  # above the threshold
  assert [t.get_text() for t in hist_ax.get_legend().get_texts()] == [
      'reference (n=500)', 'live (n=300)']
  _saved(fig, tmp_path / 'drift.png', pictures.DRIFT_SIZE)
  # Multi-class scores [N, C]: the top-class probability; no features: a note.
  fig = pictures.drift_figure({}, rng.dirichlet([1] * 3, 50),
                              rng.dirichlet([1] * 3, 40), psi_threshold=0.2)
  assert 'no per-feature tests' in fig.axes[0].texts[0].get_text()
  _saved(fig, tmp_path / 'drift2.png', pictures.DRIFT_SIZE)


def test_fairness_gaps_with_an_undefined_gap_draw_without_warnings(tmp_path):
  gaps = {'demographic_parity_difference': {'value': None, 'ci': None},
          'demographic_parity_ratio': {'value': None, 'ci': None},
          'equalized_odds_difference': {'value': 0.3, 'ci': [0.1, 0.5]}}
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    fig = pictures.fairness_gaps_figure('race', gaps, {'a': 3, 'b': 0})
  assert fig.axes[1].get_ylim()[1] >= 0.5  # the interval fits
  _saved(fig, tmp_path / 'nan.png', pictures.GAPS_SIZE)

