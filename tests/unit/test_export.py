"""Tests for export.py: a flax CNN served from a process that has only JAX."""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch.tools import entry, export



class TinyCNN(nn.Module):
  """Conv + batch norm + dense: params and a model state to bake in."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, name='bn')(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(3, name='head')(x)


def _model():
  model = TinyCNN()
  x = jax.random.uniform(jax.random.key(1), (5, 8, 8, 1))
  variables = model.init(jax.random.key(0), x[:1])
  # Non-trivial batch statistics, so a dropped model state would show.
  variables = {'params': variables['params'], 'batch_stats': jax.tree.map(
      lambda s: s + 0.3, variables['batch_stats'])}
  return model, variables, np.asarray(x)


LOADER = textwrap.dedent('''
    import sys
    import jax
    import numpy as np
    with open('model/model.jaxexport', 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    x = np.load('x.npy')
    for n in (1, 5):
      np.save(f'out_{n}.npy', np.asarray(exported.call(x[:n])))
    assert 'dlresearch' not in sys.modules and 'flax' not in sys.modules
    print('platforms', exported.platforms)
''')


def test_exported_model_reproduces_the_logits_in_a_fresh_jax_only_process(tmp_path):
  model, variables, x = _model()
  expected = np.asarray(model.apply(variables, x, train=False))
  export.export_run(model, variables, x[:2], str(tmp_path / 'model'),
                    {'label_names': ['a', 'b', 'c'], 'preprocessing': 'x / 255'})
  np.save(tmp_path / 'x.npy', x)
  proc = subprocess.run([sys.executable, '-c', LOADER], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for n in (1, 5):
    got = np.load(tmp_path / f'out_{n}.npy')
    assert got.shape == (n, 3)
    np.testing.assert_allclose(got, expected[:n], rtol=1e-5, atol=1e-5)

  signature = json.loads((tmp_path / 'model' / 'signature.json').read_text())
  assert signature['input'] == {'shape': [None, 8, 8, 1], 'dtype': 'float32'}
  assert signature['outputs'] == [{'shape': [None, 3], 'dtype': 'float32'}]
  assert signature['label_names'] == ['a', 'b', 'c']
  assert signature['preprocessing'] == 'x / 255'
  assert signature['format'] == 'jax.export' and signature['platforms'] == ['cpu']


def test_params_are_constants_and_other_platforms_lower_too(tmp_path):
  model, variables, x = _model()
  # The checkpoint layout (params + model_state) is accepted as well.
  exported = export.export_run(
      model, {'params': variables['params'], 'model_state': {'batch_stats':
                                                             variables['batch_stats']}},
      x[:1], str(tmp_path), platforms=('cpu', 'cuda'))
  assert exported.platforms == ('cpu', 'cuda')
  assert len(exported.in_avals) == 1  # x only: the variables are baked in
  np.testing.assert_allclose(exported.call(jnp.asarray(x[:4])),
                             model.apply(variables, x[:4], train=False), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"signature keys \['input'\]"):
    export.export_run(model, variables, x[:1], str(tmp_path), {'input': 'mine'})
  with pytest.raises(ValueError, match='example_batch'):
    export.export_run(model, variables, x[0, 0, 0, 0], str(tmp_path))


def test_missing_flatbuffers_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'flatbuffers', None)  # import -> ImportError
  model, variables, x = _model()
  with pytest.raises(ImportError, match="needs the 'flatbuffers' package"):
    export.export_run(model, variables, x[:1], str(tmp_path))


def test_saved_model_is_skipped_without_tensorflow(tmp_path, monkeypatch):
  monkeypatch.setattr(export.importlib.util, 'find_spec',
                      lambda name: None if name == 'tensorflow' else object())
  assert not export._saved_model(lambda x: x, np.zeros((1, 2), np.float32),
                                 str(tmp_path / 'sm'))
  assert not (tmp_path / 'sm').exists()


def test_signature_from_config_and_cli_without_restore(tmp_path, capsys):
  (tmp_path / 'config.json').write_text(json.dumps({
      'config': {'dataset': 'digits', 'model': 'lenet5', 'model_kwargs': {},
                 'dtype': 'float32', 'normalize': 'imagenet', 'image_size': 32},
      'git_commit': 'abc'}))
  signature = export.signature_from_config(str(tmp_path))
  assert signature['run']['dataset'] == 'digits' and signature['run']['git_commit'] == 'abc'
  assert signature['preprocessing'].startswith(
      'resize (PIL bilinear) and centre-crop to 32x32; uint8 NHWC image -> (x / 255 - mean)')
  # The CLI end to end: tests/e2e/test_tool_commands.py. A workdir without
  # checkpoints is one clear line and exit 2, nothing written.
  assert entry.run(export, [f'--workdir={tmp_path}', f'--out={tmp_path}/out']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error:') and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / 'out').exists()
