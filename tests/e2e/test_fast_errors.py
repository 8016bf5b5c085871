"""Bad flags and names fail before jax, flax or the data are loaded.

The time this saves is measured by ``benchmarks/startup.py --errors``; here,
without timing, each case must exit non-zero with one ``error:`` line and
without having imported jax.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = r'''
import json, runpy, sys
sys.argv = sys.argv[1:]
try:
  runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
  code = 0
except SystemExit as e:
  code = e.code
print(json.dumps({'code': code, 'loaded': [m for m in ('jax', 'flax')
                                           if m in sys.modules]}))
'''


def run_cli(module, *argv, tmp_path):
  out = subprocess.run(
      [sys.executable, '-c', CHILD, module, f'--workdir={tmp_path / "w"}',
       *argv], cwd=ROOT, capture_output=True, text=True, check=False,
      timeout=300)
  return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.parametrize('module,argv,message', [
    ('experiments.cnn_imagenet', ['--num_step=3'],
     "Unknown command line flag 'num_step'; did you mean --num_steps"),
    ('experiments.cnn_imagenet', ['--model=lenet'],
     "--model: unknown model 'lenet'; did you mean lenet5"),
    ('experiments.cnn_imagenet', ['--batch_size=abc'],
     "--batch_size: expected int, got 'abc'"),
    ('experiments.cnn_imagenet', ['--dataset=digts'],
     'did you mean digits?'),
    ('experiments.cnn_imagenet', ['--data_kind=clasification'],
     'did you mean classification'),
    ('experiments.mnist1d', ['--model=mlpp'], 'did you mean mlp'),
    ('experiments.tabular', ['--num_steps=-1'], '--num_steps'),
    ('experiments.anomaly', ['--model=autoencoder'],
     'did you mean mlp_autoencoder'),
    ('experiments.recommend', ['--model=matrix_factorisation'],
     'did you mean matrix_factorization'),
    ('experiments.text_classify', ['--dataset=rotten_tomatos'],
     'did you mean rotten_tomatoes'),
    ('experiments.audit', ['--group_key=sex', '--bogus=1'],
     'does not take --bogus'),
    ('experiments.explain', ['--num_examples=0'], '--num_examples: must be > 0'),
])
def test_bad_input_fails_before_jax_loads(module, argv, message, tmp_path):
  result, stderr = run_cli(module, *argv, tmp_path=tmp_path)
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert result['code'] == 2, stderr
  assert lines[-1].startswith('error: ') and message in lines[-1], stderr
  assert len(lines) == 1, stderr
  assert result['loaded'] == [], stderr
  assert not (tmp_path / 'w').exists()


def test_mnist_suggests_the_offline_datasets_first(tmp_path):
  result, stderr = run_cli('experiments.cnn_imagenet', '--dataset=mnist',
                           f'--data_dir={tmp_path / "tfds"}', tmp_path=tmp_path)
  assert result['code'] == 2 and result['loaded'] == []
  first = stderr.strip().splitlines()[0]
  assert first.startswith('error: --dataset=mnist is not prepared in ')
  assert first.index('fashion_mnist_local') < first.index('digits')
  assert 'TensorFlow' in stderr and not (tmp_path / 'tfds').exists()
