"""--lora_save=adapters: checkpoints of only the trained parameters, the base
re-read from --init_from (dlresearch/init.py ``complete``).

A tiny Llama char-LM is trained as the base; LoRA runs start from a copy of
it. The file is also the subprocess driver of the kill -9 test:

    python tests/e2e/test_lora_adapters.py WORKDIR OVERRIDES_JSON KILL_AT
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))  # _train_driver, as a script too

import dlresearch  # noqa: E402
from dlresearch import checkpoint, config as config_lib, init as init_lib, train  # noqa: E402
from dlresearch import logging as log_lib  # noqa: E402
from dlresearch.callbacks import base as callbacks_base  # noqa: E402
from dlresearch.config import ConfigError  # noqa: E402
from dlresearch.models import lora  # noqa: E402
from dlresearch.tools import export  # noqa: E402
from _text_corpora import write_shakespeare  # noqa: E402
from _train_driver import KillAfter  # noqa: E402

pytestmark = pytest.mark.slow  # three tiny runs and a killed one (CI: -m slow)



def _config(overrides: dict):
  from experiments import transformer_lm  # pylint: disable=g-import-not-at-top
  preset = transformer_lm.PRESETS['shakespeare_char']
  return config_lib.override(preset.config, {
      **preset.tiny, 'model': 'llama_tiny',
      'model_kwargs': {'num_layers': 2, 'd_model': 32, 'num_heads': 4},
      'log_every': 1, 'model_summary': False, 'plots': False, **overrides})


def _flat(tree) -> dict:
  return {p: np.asarray(v) for p, v in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(tree), sep='/').items()}


def _size(path) -> int:
  return sum(os.path.getsize(os.path.join(d, n))
             for d, _, names in os.walk(path) for n in names)


class _Final(callbacks_base.Callback):
  """Keeps the in-memory params at the end of the run."""

  params = None

  def on_end(self, step, state, result):
    self.params = _flat(state.params)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('lora_adapters')
  texts = root / 'shakespeare'
  texts.mkdir()
  write_shakespeare(texts, 400)
  data = {'data_dir': str(root / 'tfds'), 'manual_dir': str(texts)}
  train.run(_config({**data, 'num_steps': 4, 'checkpoint_every': 4}), str(root / 'base'))
  shutil.copytree(root / 'base', root / 'base_copy')  # the refusal test changes it
  lora_args = {**data, 'init_from': str(root / 'base_copy'), 'lora_rank': 4,
               'learning_rate': 1e-2, 'num_steps': 6, 'checkpoint_every': 2,
               'keep_checkpoints': 3}
  out = {'root': root, 'data': data, 'lora_args': lora_args}
  for save in ('full', 'adapters'):
    final = _Final()
    train.run(_config({**lora_args, 'lora_save': save}), str(root / save),
              callbacks=[final])
    out[save] = final.params
  return out


def test_adapters_only_checkpoints_restore_export_and_resume_exactly(runs):
  root = runs['root']
  # The checkpoints hold the adapters only (+ their Adam moments); the base
  # is recorded with its sha256.
  step_dir = root / 'adapters' / 'checkpoints' / '6'
  saved = _flat(checkpoint.load_variables(str(step_dir))['params'])
  assert saved and all(lora.is_adapter(p) for p in saved)
  record = json.loads((root / 'adapters' / init_lib.BASE_FILE).read_text())
  assert record['init_from'] == str(root / 'base_copy') and len(record['sha256']) == 64
  assert set(record['params']) == set(runs['full']) - set(saved)
  # The frozen base's bytes are not written (the rest is orbax's metadata).
  full_size, small_size = _size(root / 'full' / 'checkpoints' / '6'), _size(step_dir)
  frozen_bytes = 4 * sum(np.prod(m['shape']) for m in record['params'].values())
  assert full_size - small_size > 0.9 * frozen_bytes, (full_size, small_size, frozen_bytes)
  assert small_size * 2 < full_size, (small_size, full_size)
  # The same training either way; restore gives the in-memory state.
  for path, value in runs['full'].items():
    np.testing.assert_array_equal(runs['adapters'][path], value, err_msg=path)
  run = dlresearch.restore(str(root / 'adapters'))
  restored = _flat(run.variables['params'])
  assert set(restored) == set(runs['adapters'])
  for path, value in runs['adapters'].items():
    np.testing.assert_array_equal(restored[path], value, err_msg=path)
  # Export: the merged plain model, whose outputs are restore's predictions.
  model, variables, example, signature = export.restore_for_export(str(root / 'adapters'))
  assert signature['lora'] == 'merged' and not isinstance(model, lora.LoRA)
  export.export_run(model, variables, example, str(root / 'exported'), signature)
  with open(root / 'exported' / 'model.jaxexport', 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  example = jnp.asarray(example)
  np.testing.assert_allclose(exported.call(example), run.predict(example), atol=1e-5)
  # kill -9 after step 5 (checkpoint 4 on disk), rerun: the same params and
  # metric lines as the uninterrupted run.
  overrides = json.dumps({**runs['lora_args'], 'lora_save': 'adapters'})
  drive = lambda kill_at: subprocess.run(  # noqa: E731
      [sys.executable, os.path.abspath(__file__), str(root / 'resumed'), overrides,
       str(kill_at)], capture_output=True, text=True, timeout=400, cwd=ROOT)
  killed = drive(5)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  resumed = drive(0)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  again = _flat(dlresearch.restore(str(root / 'resumed')).variables['params'])
  for path, value in runs['adapters'].items():
    np.testing.assert_array_equal(again[path], value, err_msg=path)
  untimed = lambda w: [{k: v for k, v in line.items() if k != 'time'}  # noqa: E731
                       for line in log_lib.read_metrics(str(root / w))]
  assert untimed('resumed') == untimed('adapters')


def test_a_changed_or_missing_base_is_refused_in_one_line(runs):
  root = runs['root']
  # The base run trains one more step: its newest checkpoint is another base.
  train.run(_config({**runs['data'], 'num_steps': 5, 'checkpoint_every': 5}),
            str(root / 'base_copy'))
  with pytest.raises(ConfigError, match=r'--init_from: the base of the adapters-only '
                     r'LoRA run .* has changed \(sha256 \w{12} now, \w{12} when trained\)') as e:
    dlresearch.restore(str(root / 'adapters'))
  assert '\n' not in str(e.value)
  cfg = _config({**runs['lora_args'], 'lora_save': 'adapters', 'num_steps': 8})
  with pytest.raises(ConfigError, match='has changed'):  # nor does it resume
    train.run(cfg, str(root / 'adapters'))
  os.rename(root / 'base_copy', root / 'elsewhere')
  with pytest.raises(ConfigError, match=r'--init_from: the base .* cannot be read '
                     r'\(.*does not exist\); put the original base back'):
    export.restore_for_export(str(root / 'adapters'))
  # The full-save run does not need its base.
  assert dlresearch.restore(str(root / 'full')).step == 6
  with pytest.raises(ConfigError, match='--lora_save: adapters needs --init_from'):
    config_lib.validate(config_lib.Config(lora_rank=2, lora_save='adapters'))


def main():
  workdir, overrides, kill_at = sys.argv[1:4]
  cfg = _config(json.loads(overrides))
  writer = KillAfter(log_lib.default_writer(workdir, cfg.num_steps, cfg.batch_size, True),
                      int(kill_at))
  train.run(cfg, workdir, writer=writer)


if __name__ == '__main__':
  main()
