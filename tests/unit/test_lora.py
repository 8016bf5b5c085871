"""LoRA (models/lora.py): adapters on Dense kernels of any registry model,
frozen base weights, merge, and a run from --init_from on the FSDP mesh."""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlresearch
from dlresearch import checkpoint, config as config_lib, optim, train
from dlresearch.tools import export
from dlresearch.config import Config, ConfigError
from dlresearch.models import lora, registry

from _text_corpora import write_shakespeare


def _tokens(shape, vocab, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, size=shape), jnp.int32)


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _perturb_adapters(params, seed=0):
  """Non-zero ``lora_b`` (a trained adapter), everything else unchanged."""
  rng = np.random.default_rng(seed)
  flat = {p: (v + 0.3 * rng.normal(size=v.shape).astype(np.float32)
              if p.endswith('/lora_b') else v) for p, v in _flat(params).items()}
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def test_zero_init_adapters_leave_logits_unchanged_and_merge_equals_unmerged():
  base = registry.build('llama_tiny', vocab_size=17)
  model = lora.LoRA(base, rank=3, alpha=6.0, targets='.*')
  tokens = _tokens((2, 7), 17)
  variables = jax.jit(lambda k: model.init(k, tokens))(jax.random.key(0))
  flat = _flat(variables['params'])
  # Every Dense/DenseGeneral kernel got an adapter; the embedding did not.
  kernels = [p for p in flat if p.endswith('/kernel')]
  assert len(kernels) == 15 and all(p[:-len('kernel')] + 'lora_a' in flat for p in kernels)
  assert flat['transformer/block_0/attn/out/lora_a'].shape == (64, 3)  # heads x head_dim in
  assert flat['transformer/block_0/attn/key/lora_b'].shape == (3, 32)  # 2 kv heads x 16 out
  assert not any(p.startswith('token_embed/lora') for p in flat)
  plain = {'params': lora.merge(variables['params'], model.scale)}
  assert jax.tree.structure(plain) == jax.tree.structure(
      jax.eval_shape(base.init, jax.random.key(0), tokens))
  np.testing.assert_array_equal(model.apply(variables, tokens), base.apply(plain, tokens))
  # Trained (non-zero) adapters: the LoRA forward equals the merged model's.
  trained = {'params': _perturb_adapters(variables['params'])}
  adapted = model.apply(trained, tokens)
  merged = base.apply({'params': lora.merge(trained['params'], model.scale)}, tokens)
  np.testing.assert_allclose(adapted, merged, atol=2e-5)
  assert not np.allclose(adapted, base.apply(plain, tokens), atol=1e-3)


def test_dense_adapter_matches_numpy_and_dropout_acts_in_training():
  base = registry.build('mlp', num_classes=3, features=(5,))
  model = lora.LoRA(base, rank=2, alpha=4.0, dropout=0.5, targets='.*')
  x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
  variables = model.init(jax.random.key(0), x)
  params = _perturb_adapters(variables['params'])
  p = {k: np.float64(v) for k, v in _flat(params).items()}
  names = ['hidden_0', 'head']
  assert {k.split('/')[0] for k in p} == set(names)
  h = np.float64(x)
  for i, name in enumerate(names):  # hidden Dense layers, then the head
    h = (h @ p[f'{name}/kernel'] + p[f'{name}/bias']
         + 2.0 * (h @ p[f'{name}/lora_a']) @ p[f'{name}/lora_b'])
    if i < len(names) - 1:
      h = np.maximum(h, 0)
  out = model.apply({'params': params}, x)
  np.testing.assert_allclose(out, h, rtol=1e-4, atol=1e-4)
  drop = lambda k: model.apply({'params': params}, x, train=True, rngs={'dropout': k})  # noqa: E731
  assert not np.allclose(drop(jax.random.key(1)), out, atol=1e-4)
  assert not np.allclose(drop(jax.random.key(1)), drop(jax.random.key(2)), atol=1e-4)


def test_targets_are_dense_kernels_only_and_bad_input_is_one_line():
  vit = lora.LoRA(registry.build('vit_tiny', num_classes=3), rank=2, targets='.*')
  images = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  chosen = vit.targeted(images)
  assert 'encoder/block_0/attn/query/kernel' in chosen and 'head/kernel' in chosen
  assert not any('patch_embed' in p for p in chosen)  # never a convolution
  bert = lora.LoRA(registry.build('bert_base', num_layers=1, hidden_size=32, num_heads=2,
                                  mlp_dim=64, vocab_size=50, num_classes=2), rank=4)
  assert sorted(bert.targeted(_tokens((1, 5), 50))) == [
      'encoder/block_0/attn/query/kernel', 'encoder/block_0/attn/value/kernel']
  gpt = registry.build('transformer_lm', vocab_size=9, num_layers=1, d_model=16, num_heads=2)
  with pytest.raises(ConfigError, match="--lora_targets: 'nothing' matches no Dense kernel"):
    lora.LoRA(gpt, rank=2, targets='nothing').targeted(_tokens((1, 3), 9))
  with pytest.raises(ConfigError, match='--lora_rank: must be > 0'):
    lora.LoRA(gpt, rank=0)
  with pytest.raises(ConfigError, match='--lora_targets: not a valid regular expression'):
    lora.LoRA(gpt, rank=2, targets='(')
  mf = lora.LoRA(registry.build('matrix_factorization', num_users=3, num_items=4), rank=2)
  ids = jax.ShapeDtypeStruct((2,), jnp.int32)
  with pytest.raises(ConfigError, match='--lora_rank: .* has no Dense kernels'):
    mf.targeted(ids, ids)
  with pytest.raises(ConfigError, match='--lora_rank: must be >= 0'):
    config_lib.validate(Config(lora_rank=-1))


def test_only_adapters_get_optimizer_state():
  model = lora.LoRA(registry.build('llama_tiny', vocab_size=11), rank=4)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 4), jnp.int32))['params']
  cfg = Config(optimizer='adamw', lora_rank=4, weight_decay=0.1)
  mask = _flat(optim.trainable(cfg, params))
  assert {p for p, t in mask.items() if t} == {p for p in mask if lora.is_adapter(p)}
  tx, _ = optim.make(cfg, 10, params)
  state = jax.eval_shape(tx.init, params)
  adapters = sum(math.prod(v.shape) for p, v in _flat(params).items() if lora.is_adapter(p))
  floats = sum(math.prod(x.shape) for x in jax.tree.leaves(state)
               if jnp.issubdtype(x.dtype, jnp.floating))
  # query (64 -> 4 x 16) and value (64 -> 2 kv heads x 16) of 2 blocks
  assert adapters == 2 * ((64 * 4 + 4 * 64) + (64 * 4 + 4 * 32))
  assert floats == 2 * adapters  # Adam's two moments, none for the base weights




@pytest.mark.slow  # a longer end-to-end run (CI: -m slow)
def test_lora_run_from_init_from_changes_only_adapters_on_the_fsdp_mesh(tmp_path):
  from experiments import transformer_lm  # pylint: disable=g-import-not-at-top
  texts = tmp_path / 'shakespeare'
  texts.mkdir()
  write_shakespeare(texts, 400)
  preset = transformer_lm.PRESETS['shakespeare_char']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'model': 'llama_tiny',
      'model_kwargs': {'num_layers': 2, 'd_model': 64, 'num_heads': 4}, 'num_steps': 4,
      'checkpoint_every': 4, 'log_every': 1, 'data_dir': str(tmp_path / 'tfds'),
      'manual_dir': str(texts), 'model_summary': False, 'plots': False})
  train.run(cfg, str(tmp_path / 'base'))
  source = checkpoint.load_variables(str(tmp_path / 'base'))['params']
  lora_cfg = cfg.replace(init_from=str(tmp_path / 'base'), lora_rank=4,
                         lora_targets='attn/(query|key|value|out)/kernel',
                         mesh='data:4,fsdp:2', learning_rate=1e-2)
  result = train.run(lora_cfg, str(tmp_path / 'lora'))
  assert np.isfinite(result['loss'])
  tuned = _flat(checkpoint.load_variables(str(tmp_path / 'lora'))['params'])
  base = _flat(source)
  assert set(tuned) - set(base) == {p for p in tuned if lora.is_adapter(p)}
  assert len(set(tuned) - set(base)) == 2 * 4 * 2  # a, b on q/k/v/out of 2 blocks
  for path, value in base.items():  # the base weights are bit-identical
    np.testing.assert_array_equal(tuned[path], value, err_msg=path)
  assert all(np.abs(tuned[p]).max() > 0 for p in tuned if p.endswith('/lora_b'))
  report = (tmp_path / 'lora' / 'init_report.json').read_text()
  assert 'lora_a' in report and 'lora_b' in report
  # dlresearch.restore of the LoRA run applies the adapters: its predictions
  # are the merged plain model's.
  run = dlresearch.restore(str(tmp_path / 'lora'))
  assert isinstance(run.model, lora.LoRA)
  tokens = _tokens((2, 9), run.model.vocab_size)
  merged = lora.merge(flax.traverse_util.unflatten_dict(tuned, sep='/'), 8.0 / 4)
  np.testing.assert_allclose(run.predict(tokens),
                             run.model.model.apply({'params': merged}, tokens), atol=1e-5)
  # dlresearch.export of a LoRA run: the merged plain model, same outputs.
  model, variables, example, signature = export.restore_for_export(str(tmp_path / 'lora'))
  assert not isinstance(model, lora.LoRA) and signature['lora'] == 'merged'
  assert not any(lora.is_adapter(p) for p in _flat(variables['params']))
  export.export_run(model, variables, example, str(tmp_path / 'exported'), signature)
  with open(tmp_path / 'exported' / 'model.jaxexport', 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  example = jnp.asarray(example)
  np.testing.assert_allclose(exported.call(example), run.predict(example), atol=1e-5)


def test_lora_under_remat_gives_the_same_gradients():
  tokens = _tokens((2, 6), 11)
  grads, params = {}, None
  for remat in (False, True):
    model = lora.LoRA(registry.build('llama_tiny', vocab_size=11, remat=remat), rank=2,
                      targets='.*', dropout=0.1)
    if params is None:  # the same params for both (remat's init draws others)
      params = _perturb_adapters(model.init(jax.random.key(0), tokens)['params'])
    loss = lambda p, m=model: jnp.sum(m.apply(  # noqa: E731
        {'params': p}, tokens, train=True, rngs={'dropout': jax.random.key(3)}) ** 2)
    grads[remat] = _flat(jax.jit(jax.grad(loss))(params))
  for path, g in grads[False].items():
    np.testing.assert_allclose(grads[True][path], g, atol=1e-6, err_msg=path)
  assert np.abs(grads[True]['transformer/block_0/attn/query/lora_a']).max() > 0
