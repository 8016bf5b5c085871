"""dlresearch.init: ``--init_from`` of converted weights and runs (the merge
by path, a run of another model refused, a new head and the init report),
and a MiniLM probe that trains only the head."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch import config as config_lib, init
from dlresearch import tasks, train
from dlresearch.config import Config, ConfigError

from _pretrained import minilm_dir, mobilenet_pth  # noqa: F401  pylint: disable=unused-import


# ------------------------------------------------------------- the merge --


def _tree(**leaves):
  out = {}
  for path, value in leaves.items():
    node = out
    *parents, last = path.split('__')
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = np.asarray(value, np.float32)
  return out


def test_merge_loads_by_path_replaces_only_the_named_head():
  target = _tree(params__body__kernel=np.zeros((2, 3)),
                 params__head__kernel=np.zeros((3, 4)),
                 batch_stats__bn__mean=np.zeros(3))
  source = _tree(params__body__kernel=np.ones((2, 3)),
                 params__head__kernel=np.ones((3, 1000)),
                 batch_stats__bn__mean=np.full(3, 2.0))
  merged, report = init.merge(target, source, '^head/')
  np.testing.assert_array_equal(merged['params']['body']['kernel'], 1.0)
  np.testing.assert_array_equal(merged['params']['head']['kernel'], 0.0)
  np.testing.assert_array_equal(merged['batch_stats']['bn']['mean'], 2.0)
  assert report == {'loaded': ['batch_stats/bn/mean', 'params/body/kernel'],
                    'new': ['params/head/kernel'],
                    'skipped': ['params/head/kernel']}
  # The warning names the head once: fresh, replacing the source's.
  line = init.describe({'source': 'torch:w.pth', **report}, 'W/init_report.json')
  assert line == ('init_from torch:w.pth: loaded 2 variables; 1 initialised '
                  "fresh (params/head/kernel), replacing the source's 1 at "
                  'the same path; 0 source variables the model does not '
                  'take, skipped (none); details in W/init_report.json')
  assert line.count('params/head/kernel') == 1
  # Without --new_head the different head is an error naming both shapes.
  with pytest.raises(ConfigError, match=r'params/head/kernel has shape '
                     r'\(3, 1000\) in the source but \(3, 4\)'):
    init.merge(target, source)
  # A variable the source lacks never stays fresh silently.
  del source['batch_stats']
  with pytest.raises(ConfigError, match='batch_stats/bn/mean is not in the source'):
    init.merge(target, source, '^head/')
  with pytest.raises(ConfigError, match='matches no parameter'):
    init.merge(target, source, '^nothing/')


def test_init_from_a_run_of_another_model_is_refused(tmp_path):
  # LeNet -> MLP used to copy the output bias because path and shape matched.
  (tmp_path / config_lib.CONFIG_FILE).write_text(json.dumps(
      {'config': config_lib.to_json(Config(model='lenet5'))}))
  with pytest.raises(ConfigError, match='holds a lenet5 model, not --model=mlp'):
    init.run_variables(Config(model='mlp', init_from=str(tmp_path)))
  with pytest.raises(ConfigError, match='no config.json'):
    init.run_variables(Config(model='mlp', init_from=str(tmp_path / 'x' / 'y' / 'z')))


def test_mobilenet_weights_load_with_a_new_head_and_a_report(mobilenet_pth, tmp_path, capsys):  # noqa: F811
  cfg = Config(model='mobilenet_v2', init_from=f'torch:{mobilenet_pth}',
               new_head='^head/')
  model = train.build_model(cfg, {'num_classes': 10})
  fresh = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))  # eager: op by op
  params, model_state, report = init.initialize(
      cfg, model, fresh['params'], {'batch_stats': fresh['batch_stats']},
      str(tmp_path))
  assert report['new'] == ['params/head/bias', 'params/head/kernel']
  assert report['skipped'] == ['params/head/bias', 'params/head/kernel']
  err = capsys.readouterr().err  # the conversion says what and how big
  assert (f'init_from: reading and converting torch:{mobilenet_pth} into '
          'mobilenet_v2 (14.') in err and ' MB) ...' in err
  assert 'into mobilenet_v2: done, in ' in err
  assert len(report['loaded']) == 260  # 158 params + 2 x 51 batch-norm stats
  assert json.loads((tmp_path / init.REPORT_FILE).read_text()) == report
  assert params['head']['kernel'].shape == (1280, 10)
  np.testing.assert_array_equal(params['head']['kernel'],
                                fresh['params']['head']['kernel'])
  from dlresearch import weights  # pylint: disable=g-import-not-at-top
  sd = weights.read(f'torch:{mobilenet_pth}')
  np.testing.assert_array_equal(model_state['batch_stats']['stem_bn']['var'],
                                sd['features.0.1.running_var'])
  np.testing.assert_array_equal(params['stem_conv']['kernel'],
                                sd['features.0.0.weight'].transpose(2, 3, 1, 0))


# ------------------------------------------------------------- predict --


@pytest.mark.slow  # a longer end-to-end run (CI: -m slow)
def test_minilm_probe_trains_only_the_head_on_mean_pooled_embeddings(
    minilm_dir, tmp_path):  # noqa: F811
  from dlresearch import checkpoint, weights  # pylint: disable=g-import-not-at-top
  from dlresearch.data import pipeline  # pylint: disable=g-import-not-at-top
  from dlresearch.problems import hf_text  # pylint: disable=g-import-not-at-top
  from experiments.finetune import PRESETS  # pylint: disable=g-import-not-at-top
  cfg = PRESETS['minilm_rotten_tomatoes'].config.replace(
      init_from=f'hf:{minilm_dir}', pretrained_tokenizer=str(minilm_dir),
      probe=True, num_steps=3, batch_size=8, eval_batch_size=8, max_len=16,
      num_train_examples=0, log_every=1)
  tok = hf_text.load_tokenizer(hf_text.tokenizer_path(cfg), 16)
  texts = ['a wonderful, moving film', 'dull and lifeless'] * 8
  arrays = {**hf_text.encode(tok, texts),
            'label': np.array([1, 0] * 8, np.int32)}
  assert arrays['inputs'][0, 0] == tok.token_to_id('[CLS]')
  data = pipeline.Data(pipeline.ArrayDataset(arrays), pipeline.ArrayDataset(arrays),
                       tasks.Classification(input_key='inputs', mask_key='mask'),
                       {'vocab_size': tok.get_vocab_size(), 'num_classes': 2})
  workdir = tmp_path / 'run'
  train.run(cfg, str(workdir), data=data)
  report = json.loads((workdir / init.REPORT_FILE).read_text())
  assert report['new'] == ['params/head/bias', 'params/head/kernel']
  assert report['skipped'] == ['params/pooler/bias', 'params/pooler/kernel']
  assert len(report['loaded']) == 101  # 3 embeddings, embed_norm (2), 6 x 16
  params = checkpoint.load_variables(str(workdir))['params']
  sd = weights.read(f'hf:{minilm_dir}')
  np.testing.assert_array_equal(params['token_embed']['embedding'],
                                sd['embeddings.word_embeddings.weight'])
  np.testing.assert_array_equal(
      params['encoder']['block_5']['mlp']['fc2']['kernel'],
      sd['encoder.layer.5.output.dense.weight'].T)
  assert float(np.abs(params['head']['kernel']).max()) > 0
