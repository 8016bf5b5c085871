"""The tools' commands in their own processes: bad input is one line on
stderr, exit status 2, nothing written (``dlresearch/tools/entry.py``)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _command(module, *argv):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', module, *argv], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('flag', ['--model=cnn', '--init_from=torch:x.pth',
                                  '--eval_only', '--num_steps=5'])
def test_xray_refuses_training_flags(flag, tmp_path):
  proc = _command('experiments.xray', f'--workdir={tmp_path}/run', flag)
  assert proc.returncode == 2
  name = flag.partition('=')[0]
  assert proc.stderr.splitlines() == [
      f'error: python -m experiments.xray does not take {name}; it takes '
      '--workdir, --manual_dir, --pretrained, --image_size, --tiny (--help)']
  assert not (tmp_path / 'run').exists()


def test_export_errors_look_like_every_other_tool(tmp_path):
  proc = _command('dlresearch.export', f'--workdir={tmp_path}/none',
                  f'--out={tmp_path}/out')
  assert proc.returncode == 2
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  assert not (tmp_path / 'out').exists()
