"""dlresearch.parallel: data parallel, FSDP and pmap give the same training
as one device; meshes from --mesh; the CPU conv compiler option (on by
default, refused values fall back, the same loss curve without it)."""

import jax
import numpy as np
import pytest

from dlresearch import logging as log_lib, parallel, state as state_lib, tasks, train
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline
from dlresearch.models import registry


def _image_data(n=96, size=8, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {'image': rng.normal(size=(n, size, size, channels)).astype(np.float32),
            'label': rng.integers(0, 10, n).astype(np.int32)}
  return pipeline.Data(pipeline.ArrayDataset(arrays), pipeline.ArrayDataset(arrays),
                       tasks.Classification(), {'num_classes': 10})


def _losses(tmp_path, name, cfg, data):
  train.run(cfg, str(tmp_path / name), data=data)
  return np.array([l['loss'] for l in log_lib.read_metrics(str(tmp_path / name), 'train')])


MODELS = {
    # A small CNN without batch norm or dropout, and a small Transformer.
    'cnn': (dict(model='lenet5'), dict(size=8, channels=1)),
    'transformer': (dict(model='vit_tiny', model_kwargs={
        'patch_size': 4, 'num_layers': 1, 'hidden_size': 16, 'num_heads': 2,
        'mlp_dim': 32}), dict(size=8, channels=3)),
}


@pytest.mark.parametrize('family', sorted(MODELS))
def test_data_parallel_fsdp_and_pmap_match_one_device(tmp_path, family):
  model_cfg, data_kw = MODELS[family]
  data = _image_data(**data_kw)
  base = Config(batch_size=32, num_steps=6, log_every=1, checkpoint_every=100,
                optimizer='adam', learning_rate=1e-3, **model_cfg)
  curves = {
      'one': _losses(tmp_path, 'one', base.replace(mesh='data:1'), data),
      'dp8': _losses(tmp_path, 'dp8', base.replace(mesh='data:8'), data),
      'fsdp': _losses(tmp_path, 'fsdp', base.replace(mesh='data:4,fsdp:2'), data),
      'pmap': _losses(tmp_path, 'pmap', base.replace(parallelism='pmap'), data),
  }
  assert len(curves['one']) == 6 and curves['one'][-1] < curves['one'][0]
  for name in ('dp8', 'fsdp', 'pmap'):
    np.testing.assert_allclose(curves[name], curves['one'], rtol=2e-4,
                               err_msg=name)


def test_fsdp_shards_parameters():
  mesh = parallel.make_mesh('data:4,fsdp:2')
  model = registry.build('mlp', num_classes=10, features=[256])
  import optax
  create = lambda: state_lib.create(model, optax.adam(1e-3),
                                    (np.zeros((1, 16, 16, 1), np.float32),), {}, 0)
  shardings = parallel.state_shardings(jax.eval_shape(create), mesh)
  state = jax.jit(create, out_shardings=shardings)()
  kernel = state.params['hidden_0']['kernel']  # [256, 256]
  assert kernel.addressable_shards[0].data.size == kernel.size // 2
  assert state.opt_state[0].mu['hidden_0']['kernel'].addressable_shards[0].data.size \
      == kernel.size // 2
  bias = state.params['hidden_0']['bias']  # small: replicated
  assert bias.addressable_shards[0].data.size == bias.size


def test_pmap_cannot_combine_with_fsdp(tmp_path):
  with pytest.raises(parallel.StrategyError, match='pmap'):
    train.run(Config(model='mlp', batch_size=32, num_steps=1, mesh='data:4,fsdp:2',
                     parallelism='pmap'), str(tmp_path), data=_image_data())


def test_resume_with_a_different_device_count_keeps_the_data_order(tmp_path):
  data = _image_data()
  base = Config(model='mlp', model_kwargs={'features': [32]}, batch_size=32,
                log_every=1, checkpoint_every=3, optimizer='sgd', learning_rate=0.1)
  straight = _losses(tmp_path, 'straight', base.replace(num_steps=6, mesh='data:8'), data)
  train.run(base.replace(num_steps=3, mesh='data:8'), str(tmp_path / 'moved'), data=data)
  resumed = _losses(tmp_path, 'moved', base.replace(num_steps=6, mesh='data:2'), data)
  np.testing.assert_allclose(resumed, straight, rtol=2e-5)


def test_bfloat16_compute_keeps_float32_params_and_remat_matches(tmp_path):
  data = _image_data(n=64, size=8, channels=3)
  base = Config(model='resnet_tiny', model_kwargs={'width': 4}, batch_size=32,
                num_steps=2, log_every=1, checkpoint_every=100, optimizer='sgd',
                learning_rate=0.1)
  plain = _losses(tmp_path, 'plain', base, data)
  remat = _losses(tmp_path, 'remat', base.replace(remat=True), data)
  np.testing.assert_allclose(remat, plain, rtol=1e-5)
  bf16 = _losses(tmp_path, 'bf16', base.replace(dtype='bfloat16'), data)
  np.testing.assert_allclose(bf16, plain, rtol=5e-2)  # bf16 rounding only
  from dlresearch import checkpoint
  params = checkpoint.load_variables(str(tmp_path / 'bf16'))['params']
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
  with pytest.raises(ConfigError, match='--remat: model .mlp. does not support'):
    train.run(base.replace(model='mlp', model_kwargs={}, remat=True),
              str(tmp_path / 'x'), data=data)


def test_mesh_from_flag():
  mesh = parallel.make_mesh('data:4,fsdp:2')
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2}
  assert dict(parallel.make_mesh('').shape) == {'data': 8, 'fsdp': 1}
  assert dict(parallel.make_mesh('fsdp:2').shape) == {'data': 4, 'fsdp': 2}
  assert parallel.make_mesh('data:2').devices.size == 2  # the first two
  for bad in ('data:16', 'model:8', 'data:0', 'data:-2'):
    with pytest.raises(parallel.MeshError):
      parallel.make_mesh(bad)
  assert parallel.fsdp_spec((4096, 1000), 2) == jax.sharding.PartitionSpec('fsdp', None)
  assert parallel.fsdp_spec((10,), 2) == jax.sharding.PartitionSpec()


def test_jit_strategy_compiles_with_the_cpu_conv_option_and_can_turn_it_off():
  mesh = parallel.make_mesh('data:1')
  on = parallel.JitStrategy(mesh, None)
  off = parallel.JitStrategy(mesh, None, cpu_eigen_convs=False)
  assert on.compiler_options == parallel.CPU_CONV_OPTIONS
  assert off.compiler_options is None
  # The option reaches XLA: it rejects a bad value of the same option.
  with pytest.raises(Exception, match='ynn_fusion_type'):
    jax.jit(lambda x: x + 1, compiler_options={
        'xla_cpu_experimental_ynn_fusion_type': 'NOT_A_FUSION_TYPE'})(1.0)


def test_a_rejected_cpu_option_falls_back_to_xla_defaults(monkeypatch):
  monkeypatch.setattr(parallel, 'CPU_CONV_OPTIONS',
                      {'xla_cpu_experimental_ynn_fusion_type': 'NOT_A_TYPE'})
  parallel._accepted_cpu_options.cache_clear()
  try:
    assert parallel.compiler_options(parallel.make_mesh('data:1')) is None
  finally:
    monkeypatch.undo()
    parallel._accepted_cpu_options.cache_clear()
  assert parallel.compiler_options(parallel.make_mesh('data:1')) == (
      parallel.CPU_CONV_OPTIONS)


def _conv_image_data(n=64, size=12, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {'image': rng.normal(size=(n, size, size, 1)).astype(np.float32),
            'label': rng.integers(0, 10, n).astype(np.int32)}
  return pipeline.Data(pipeline.ArrayDataset(arrays), pipeline.ArrayDataset(arrays),
                       tasks.Classification(), {'num_classes': 10})


def test_cnn_loss_curve_is_the_same_with_and_without_the_conv_option(tmp_path):
  data = _conv_image_data()
  base = Config(model='lenet5', batch_size=16, num_steps=5, log_every=1,
                checkpoint_every=100, optimizer='adam', learning_rate=1e-3,
                mesh='data:1', model_summary=False, plots=False)
  curves = {}
  for eigen in (True, False):
    workdir = str(tmp_path / f'eigen_{eigen}')
    final = train.run(base.replace(cpu_eigen_convs=eigen), workdir, data=data)
    curves[eigen] = [l['loss'] for l in log_lib.read_metrics(workdir, 'train')]
    curves[eigen].append(final['loss'])
  assert len(curves[True]) == 6 and curves[True][4] < curves[True][0]
  np.testing.assert_allclose(curves[True], curves[False], rtol=1e-5)
