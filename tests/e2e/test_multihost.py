"""Two local processes x 4 CPU devices behave like one process with 8."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dlresearch import checkpoint, config as config_lib, logging as log_lib, train
from experiments.cnn_imagenet import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def _two_processes(workdir, data_dir, *flags):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  cmd = ['bash', 'launch/local.sh', '2', '--', sys.executable, '-m',
         'experiments.cnn_imagenet', '--preset=quickstart', '--tiny',
         f'--data_dir={data_dir}', f'--workdir={workdir}',
         '--heartbeat_timeout_s=10', '--init_timeout_s=60',
         '--schedule=constant', *flags]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def _one_process(workdir, data_dir, **overrides):
  preset = PRESETS['quickstart']
  cfg = config_lib.override(preset.config, {**preset.tiny, 'data_dir': data_dir,
                                            'schedule': 'constant', **overrides})
  return train.run(cfg, str(workdir))


def _params(workdir):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(
      checkpoint.load_variables(str(workdir))['params'])]


def test_two_processes_match_one_and_resume_with_another_count(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  _one_process(tmp_path / 'single', data_dir, num_steps=20, checkpoint_every=10)
  # 2 processes x 4 devices, the same global batch of 64, stopping at step 10.
  r = _two_processes(tmp_path / 'multi', data_dir, '--num_steps=10',
                     '--checkpoint_every=10')
  assert r.returncode == 0, r.stderr[-3000:]
  single = log_lib.read_metrics(str(tmp_path / 'single'))
  multi = log_lib.read_metrics(str(tmp_path / 'multi'))
  first = [l for l in single if l['step'] <= 10 and l['split'] == 'train']
  got = [l for l in multi if l['split'] == 'train']
  assert [l['step'] for l in got] == [5, 10]
  for a, b in zip(first, got):
    assert b['loss'] == pytest.approx(a['loss'], rel=1e-4)
  # Resume the 2-process checkpoint in one process (8 devices) to step 20
  # (a constant learning rate, so the schedule does not depend on the
  # length): the same global batches, so the same parameters.
  _one_process(tmp_path / 'multi', data_dir, num_steps=20, checkpoint_every=10)
  for a, b in zip(_params(tmp_path / 'single'), _params(tmp_path / 'multi')):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5)  # XLA flags differ
  final_single = log_lib.read_metrics(str(tmp_path / 'single'), 'eval')[-1]
  final_multi = log_lib.read_metrics(str(tmp_path / 'multi'), 'eval')[-1]
  assert final_multi['step'] == 20
  assert final_multi['accuracy'] == pytest.approx(final_single['accuracy'], abs=1e-2)
