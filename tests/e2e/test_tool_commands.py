"""The tools' commands in their own processes: bad input is one line on
stderr, exit status 2, nothing written (``dlresearch/tools/entry.py``)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dlresearch import config as config_lib, train
from dlresearch.tools import inference
from experiments.cnn_imagenet import PRESETS

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


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny(data_dir, **overrides):
  preset = PRESETS['quickstart']
  return config_lib.override(preset.config, {
      **preset.tiny, 'data_dir': data_dir, 'progress': 'none', **overrides})


def test_export_cli_reproduces_logits_in_a_fresh_process(tmp_path, data_dir):
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'export')
  train.run(tiny(data_dir, num_steps=5, plots=False, model_summary=False),
            workdir)
  env = {**os.environ, 'PYTHONPATH': ROOT}
  done = subprocess.run([sys.executable, '-m', 'dlresearch.export',
                         f'--workdir={workdir}', f'--out={out}'], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  signature = json.load(open(os.path.join(out, 'signature.json')))
  assert signature['input']['shape'] == [None, 8, 8, 1]
  assert signature['label_names'] == [str(i) for i in range(10)]
  assert signature['run']['workdir'] == os.path.join('..', 'run')  # portable
  lines = done.stdout.splitlines()  # what it does and how big, then where
  assert lines[1].startswith('exporting ') and ' parameters, input [8, 8, 1] ' \
      'float32) for cpu to ' in lines[1], done.stdout
  assert 'it does not run on a GPU' in lines[2]
  assert lines[-1] == os.path.join(out, 'model.jaxexport')
  run = inference.restore(workdir)
  x = np.random.default_rng(1).uniform(size=(7, 8, 8, 1)).astype(np.float32)
  np.save(tmp_path / 'x.npy', x)
  script = textwrap.dedent(f"""
      import sys, jax, numpy as np
      exported = jax.export.deserialize(bytearray(open(
          {os.path.join(out, 'model.jaxexport')!r}, 'rb').read()))
      x = np.load({str(tmp_path / 'x.npy')!r})
      np.save({str(tmp_path / 'y.npy')!r}, np.concatenate(
          [np.asarray(exported.call(x[:2])), np.asarray(exported.call(x[2:]))]))
      assert 'dlresearch' not in sys.modules
  """)
  clean = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  done = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path),
                        env=clean, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  np.testing.assert_allclose(np.load(tmp_path / 'y.npy'), run.predict(x),
                             rtol=1e-5, atol=1e-5)
  bad = subprocess.run([sys.executable, '-m', 'dlresearch.export',
                        f'--workdir={tmp_path}/nothing', f'--out={out}2'],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 2 and bad.stderr.startswith('error:')
  assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
  assert not os.path.exists(f'{out}2')
