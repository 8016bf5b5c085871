"""``python -m dlresearch.tools.show``: the grid a researcher checks first.

Real processes: the quickstart's digits with a crop-and-flip augmentation,
and a folder of images (``image_folder:``) under the tiny ResNet-50 preset
(ImageNet normalisation, random-resized crops); then bad input.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.unit import test_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _show(*flags):
  return subprocess.run(
      [sys.executable, '-m', 'dlresearch.tools.show', *flags], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
      timeout=600, check=False)


def _cells(png, rows, cols, cell=160):
  """The grid's pixels, and each cell's pixel spread (0 for a blank cell)."""
  pixels = np.asarray(Image.open(png).convert('L'), np.float32)
  assert pixels.shape == (rows * cell, cols * cell)
  return [pixels[r * cell + 40:(r + 1) * cell - 20,
                 c * cell + 30:(c + 1) * cell - 30].std()
          for r in range(rows) for c in range(cols)]


@pytest.mark.slow
def test_draws_the_augmented_batch_with_labels(tmp_path):
  out = tmp_path / 'grids' / 'digits.png'
  p = _show('--preset=quickstart', '--set=augment=pad_crop_flip', '--num=8',
            f'--data_dir={tmp_path / "tfds"}', f'--out={out}')
  assert p.returncode == 0, p.stderr[-3000:]
  assert p.stdout.strip().splitlines()[-1] == str(out)
  spread = _cells(out, 3, 3)  # 8 examples: 3 x 3, the last cell empty
  assert all(s > 10 for s in spread[:8]) and spread[8] == 0, spread

  folder = tmp_path / 'pictures'
  test_image_folder.write_digits(folder)
  out = tmp_path / 'folder.png'
  p = _show('--preset=resnet50_imagenet', '--tiny',
            f'--dataset=image_folder:{folder}', f'--data_dir={tmp_path / "tfds"}',
            '--num=4', '--step=3', f'--out={out}')
  assert p.returncode == 0, p.stderr[-3000:]
  assert all(s > 10 for s in _cells(out, 2, 2)), _cells(out, 2, 2)


def test_the_labels_are_the_batch_labels():
  from dlresearch.tools import show  # pylint: disable=g-import-not-at-top
  names = ['cat', 'dog', 'bird']
  assert show._label(np.int64(2), names) == 'bird'  # pylint: disable=protected-access
  assert show._label(np.array([0.3, 0.7, 0.0]), names) == '0.70 dog + 0.30 cat'  # pylint: disable=protected-access
  assert show._label(np.array([0.0, 1.0, 0.0]), names) == '1.00 dog'  # pylint: disable=protected-access


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
  out = tmp_path / 'grid.png'
  cases = [
      (['--preset=nope'], "--preset: cnn_imagenet has no preset 'nope'"),
      (['--preset=quickstart', '--experiment=nope'],
       '--experiment: no experiments/nope.py'),
      (['--preset=quickstart', '--set=bogus=1'],
       "--set: expected FIELD=VALUE with a config field, got 'bogus=1'"),
      (['--preset=quickstart', f'--dataset=image_folder:{tmp_path / "none"}'],
       f'--dataset=image_folder:{tmp_path / "none"}: image folder '),
      (['--preset=quickstart', '--num=0'], '--num: must be >= 1'),
  ]
  for flags, message in cases:
    p = _show(*flags, f'--out={out}', f'--data_dir={tmp_path / "tfds"}')
    assert p.returncode == 2, (flags, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {message}'), (
        flags, p.stderr[-2000:])
    assert not out.exists()
