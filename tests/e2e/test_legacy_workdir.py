"""A workdir written before the config sections still works with this code.

``tests/fixtures/legacy_workdir_e5bc124`` was written by commit e5bc124 (its
``config.json`` flat, one key per field; see PROVENANCE.md there). Copies of
it are evaluated, exported, restored and resumed by the current code, and a
fresh run of the command that made it writes the same ``metrics.jsonl``.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import dlresearch
from dlresearch import config as config_lib
import _forked  # pylint: disable=g-bad-import-order

FIXTURE = os.path.join(_forked.ROOT, 'tests', 'fixtures',
                       'legacy_workdir_e5bc124')
COMMAND = ['--preset=quickstart', '--tiny', '--model=mlp']
# The fixture's environment (PROVENANCE.md): one CPU device, XLA's backend
# optimisation level of the tests, HOME holding ~/tensorflow_datasets (the
# data_dir recorded in the fixture's config.json).
XLA_FLAGS = '--xla_backend_optimization_level=0'


def _lines(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(l) for l in f if l.strip()]


def _record(workdir):
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    return json.load(f)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('legacy')
  old, resumed = str(tmp / 'old'), str(tmp / 'resumed')
  shutil.copytree(FIXTURE, old)
  shutil.copytree(FIXTURE, resumed)
  home, fresh, exported = tmp / 'home', str(tmp / 'fresh'), str(tmp / 'export')
  home.mkdir()
  cli = 'experiments.cnn_imagenet'
  results = _forked.run([
      {'module': cli, 'argv': [f'--workdir={old}', '--eval_only']},
      {'module': 'dlresearch.export',
       'argv': [f'--workdir={old}', f'--out={exported}']},
      # Changes what the checkpoints mean: refused against the flat record.
      {'module': cli, 'argv': [f'--workdir={resumed}', '--optimizer=sgd']},
      {'module': cli, 'snapshot': [resumed],
       'argv': [f'--workdir={resumed}', '--num_steps=30']},
      # --cpu_kernels=xla: the dots of e5bc124 (the default, auto, takes the
      # native GEMM for this MLP: the same metrics only to float32 rounding).
      {'module': cli, 'argv': COMMAND + ['--cpu_kernels=xla', f'--workdir={fresh}']},
  ], tmp, env={'XLA_FLAGS': XLA_FLAGS, 'HOME': str(home)})
  return dict(zip(['eval', 'export', 'refused', 'resume', 'fresh'], results),
              old=old, resumed=resumed, fresh_dir=fresh, exported=exported)


def test_fixture_is_a_flat_record_of_e5bc124():
  record = _record(FIXTURE)
  assert record['git_commit'].startswith('e5bc124')
  assert not config_lib.is_sectioned(record['config'])
  assert record['config']['model'] == 'mlp'  # flat: fields at the top


def test_eval_only_on_the_legacy_workdir(runs):
  r = runs['eval']
  assert r['code'] == 0, r['stderr'][-3000:]
  final = [l for l in _lines(os.path.join(FIXTURE, 'metrics.jsonl'))
           if l['split'] == 'eval'][-1]
  assert (f'final eval at step 20: accuracy={final["accuracy"]:.4f} '
          f'loss={final["loss"]:.4f}') in r['stdout']
  with open(os.path.join(FIXTURE, 'config.json'), 'rb') as f:
    flat = f.read()
  with open(os.path.join(runs['old'], 'config.json'), 'rb') as f:
    assert f.read() == flat  # read, migrated in memory, never rewritten


def test_restore_and_export_of_the_legacy_workdir(runs):
  r = runs['export']
  assert r['code'] == 0, r['stderr'][-3000:]
  with open(os.path.join(runs['exported'], 'signature.json')) as f:
    signature = json.load(f)
  assert signature['run']['model'] == 'mlp' and signature['step'] == 20
  assert signature['preprocessing'] == 'uint8 NHWC image -> float32 / 255'

  restored = dlresearch.restore(runs['old'])
  assert restored.step == 20
  assert restored.config == config_lib.from_json(_record(FIXTURE)['config'])
  shape = [3] + signature['input']['shape'][1:]
  x = np.random.default_rng(0).random(shape, dtype=np.float32)
  with open(os.path.join(runs['exported'], 'model.jaxexport'), 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  logits = restored.predict(x)
  assert logits.shape == (3, 10)
  np.testing.assert_allclose(np.asarray(exported.call(x)), logits,
                             rtol=1e-5, atol=1e-5)


def test_legacy_workdir_resumes_and_refuses_a_meaning_change(runs):
  refused = runs['refused']
  assert refused['code'] == 2 and 'Traceback' not in refused['stderr']
  assert refused['stderr'].strip().splitlines() == [
      f"error: --optimizer: {runs['resumed']} holds checkpoints trained with "
      "--optimizer='adam', not 'sgd'; resume with the same value (or leave "
      "the flag out: the recorded config is used) or use a new --workdir"]
  r = runs['resume']
  assert r['before'][runs['resumed']] == _forked.snapshot(FIXTURE)  # untouched
  assert r['code'] == 0, r['stderr'][-3000:]
  assert 'final eval at step 30:' in r['stdout']
  old = _lines(os.path.join(FIXTURE, 'metrics.jsonl'))
  new = _lines(os.path.join(runs['resumed'], 'metrics.jsonl'))
  assert new[:len(old)] == old
  assert [l['step'] for l in new[len(old):] if l['split'] == 'train'] == [25, 30]
  assert os.path.isdir(os.path.join(runs['resumed'], 'checkpoints', '30'))
  assert _record(runs['resumed']) == _record(FIXTURE)  # still the flat record


def test_fresh_run_writes_the_same_metrics_and_a_sectioned_record(runs):
  r = runs['fresh']
  assert r['code'] == 0, r['stderr'][-3000:]
  strip = lambda lines: [{k: v for k, v in l.items() if k != 'time'}
                         for l in lines]
  new = _lines(os.path.join(runs['fresh_dir'], 'metrics.jsonl'))
  assert strip(new) == strip(_lines(os.path.join(FIXTURE, 'metrics.jsonl')))
  old, new = _record(FIXTURE), _record(runs['fresh_dir'])
  assert config_lib.is_sectioned(new['config'])
  # Same keys and values; 'pretrained' (now the xray tool's) is retired, and
  # fields added since e5bc124 hold their defaults.
  kept = {k: v for k, v in old['config'].items()
          if k not in config_lib.RETIRED_FIELDS}
  flat = config_lib.flatten(new['config'])
  default = config_lib.flatten(config_lib.to_json(config_lib.Config()))
  added = {k: default[k] for k in flat.keys() - kept.keys()}
  assert flat == {**kept, **added, 'cpu_kernels': 'xla'}
  assert new['data_model_kwargs'] == old['data_model_kwargs']
