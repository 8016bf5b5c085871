"""``--dataset=image_folder:PATH`` from the command line, as a user runs it.

Real processes (``python -m experiments.cnn_imagenet``) on a folder of real
images written by the test (scikit-learn's digits as PNG/JPEG files of
different sizes, grey and RGB, plus one broken file): prepared once with the
broken file skipped and counted, trained through a grain worker process,
reused by the next run, and refused in one line once the folder changes.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.unit import test_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _train(folder, data_dir, workdir, *flags):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.cnn_imagenet',
       '--preset=resnet50_imagenet', '--tiny', f'--dataset=image_folder:{folder}',
       f'--data_dir={data_dir}', f'--workdir={workdir}', '--num_steps=4',
       *flags], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
      capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_prepare_train_reuse_and_refuse_a_changed_folder(tmp_path):
  folder, data_dir = tmp_path / 'pictures', tmp_path / 'tfds'
  test_image_folder.write_digits(folder, per_class=8)  # 24 + 6 + broken.jpg
  p = _train(folder, data_dir, tmp_path / 'run1')
  assert p.returncode == 0, p.stderr[-3000:]
  out = p.stdout + p.stderr
  assert 'Preparing image_folder:' in out
  assert 'skipped 1 of 31 files that are not readable images' in out
  assert 'broken.jpg: not a readable image' in out
  assert 'final eval at step 4: accuracy=' in p.stdout
  with open(tmp_path / 'run1' / 'metrics.jsonl') as f:
    lines = [json.loads(l) for l in f]
  assert [l['step'] for l in lines if l['split'] == 'train'] == [1, 2, 3, 4]
  evals = [l for l in lines if l['split'] != 'train']
  assert evals[-1]['num_examples'] == 6  # the test split: 3 classes x 2
  with open(tmp_path / 'run1' / 'config.json') as f:
    recorded = json.load(f)['config']
  assert recorded['data']['dataset'] == f'image_folder:{folder}'
  assert recorded['data']['grain_workers'] == 1  # the worker process path
  [info] = data_dir.glob('image_folder/*/1.0.0/dataset_info.json')
  prepared_at = info.stat().st_mtime_ns

  p = _train(folder, data_dir, tmp_path / 'run2')  # reused, not prepared
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'Preparing image_folder:' not in p.stdout + p.stderr
  assert info.stat().st_mtime_ns == prepared_at

  (folder / 'train' / 'digit_2' / '003.png').unlink()
  p = _train(folder, data_dir, tmp_path / 'run3')
  assert p.returncode == 2
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  errors = [l for l in p.stderr.splitlines() if l.startswith('error:')]
  assert errors == [
      f'error: --dataset=image_folder:{folder}: the files of {folder} changed '
      f'since it was prepared into {info.parent} (31 image files then, 30 '
      f'now; ' + errors[0].split('now; ', 1)[1]], p.stderr[-2000:]
  assert f'delete {info.parent} to prepare it again' in errors[0]
  assert not (tmp_path / 'run3').exists()
