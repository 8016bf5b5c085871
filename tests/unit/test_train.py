"""Unit tests of the engine's pieces: config, losses, metrics, optimizer, data order."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlresearch import config as config_lib, optim, parallel, state as state_lib
from dlresearch import tasks, train
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline
from dlresearch.models import registry


# --- config ----------------------------------------------------------------


@pytest.mark.parametrize('field,value,needle', [
    ('batch_size', 0, '--batch_size: must be > 0'),
    ('learning_rate', -1.0, '--learning_rate: must be > 0'),
    ('num_steps', -5, '--num_steps: must be >= 0'),
    ('optimizer', 'lion', '--optimizer: must be one of sgd, nesterov, adam, adamw'),
    ('label_smoothing', 1.0, '--label_smoothing'),
    ('grad_accum_steps', 3, '--grad_accum_steps: must divide --batch_size=128'),
])
def test_config_rejects_out_of_range(field, value, needle):
  with pytest.raises(ConfigError, match=needle.replace('(', r'\(')) as e:
    config_lib.validate(Config().replace(**{field: value}))
  assert e.value.flag == field


def test_config_overrides_and_parsing():
  cfg = config_lib.override(Config(num_epochs=5), {'num_steps': 7})
  assert cfg.num_steps == 7
  # num_epochs on the command line wins over a preset's num_steps.
  cfg = config_lib.override(Config(num_steps=7), {'num_epochs': 2.0})
  assert (cfg.num_steps, cfg.num_epochs) == (0, 2.0)
  cfg = config_lib.override(Config(model_kwargs={'a': 1}),
                            {'model_kwargs': {'b': 2}})
  assert cfg.model_kwargs == {'a': 1, 'b': 2}
  assert config_lib.parse_value('batch_size', '32') == 32
  assert config_lib.parse_value('step_boundaries', '0.5,0.75') == (0.5, 0.75)
  with pytest.raises(ConfigError, match='--batch_size: expected int'):
    config_lib.parse_value('batch_size', 'abc')
  with pytest.raises(ConfigError, match='--model_kwargs: expected dict'):
    config_lib.parse_value('model_kwargs', '[1]')
  with pytest.raises(ConfigError, match='unknown config field'):
    config_lib.override(Config(), {'bogus': 1})
  assert config_lib.from_json(config_lib.to_json(cfg)) == cfg


def test_batch_must_divide_devices():
  config_lib.check_devices(Config(batch_size=64), 8)
  with pytest.raises(ConfigError, match='--batch_size: 12 does not divide evenly over 8'):
    config_lib.check_devices(Config(batch_size=12), 8)
  with pytest.raises(ConfigError, match='--eval_batch_size'):
    config_lib.check_devices(Config(batch_size=64, eval_batch_size=10), 8)


# --- losses: gradients against finite differences --------------------------


def _finite_difference_check(fn, x, eps=1e-3, tol=2e-3):
  """Compares jax.grad(fn) with central differences in float64."""
  x = np.asarray(x, np.float64)
  grad = np.asarray(jax.grad(lambda v: fn(v))(jnp.asarray(x, jnp.float32)))
  numeric = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = eps
    numeric[i] = (float(fn(jnp.asarray(x + d, jnp.float32))) -
                  float(fn(jnp.asarray(x - d, jnp.float32)))) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=tol, rtol=tol)


@pytest.mark.parametrize('name,smoothing', [
    ('softmax_xent', 0.0), ('softmax_xent', 0.1), ('sigmoid_xent', 0.0),
    ('sigmoid_xent', 0.2), ('mse', 0.0)])
def test_loss_gradients_match_finite_differences(name, smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5))
  labels = jnp.array([0, 3, 4])
  fn = lambda z: tasks.LOSSES[name](z, labels, smoothing).sum()
  _finite_difference_check(fn, logits)


def test_loss_values_against_numpy():
  z = np.array([[2.0, -1.0, 0.5]])
  p = np.exp(z) / np.exp(z).sum()
  ls = 0.3
  target = np.array([[0, 1, 0]]) * (1 - ls) + ls / 3
  np.testing.assert_allclose(tasks.softmax_xent(z, jnp.array([1]), ls),
                             -(target * np.log(p)).sum(-1), rtol=1e-5)
  sig = 1 / (1 + np.exp(-z))
  onehot = np.array([[0, 1, 0]])
  np.testing.assert_allclose(
      tasks.sigmoid_xent(z, jnp.array([1])),
      -(onehot * np.log(sig) + (1 - onehot) * np.log(1 - sig)).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(tasks.mse(z, jnp.array([1])),
                             ((z - onehot) ** 2).mean(-1), rtol=1e-6)


# --- metrics ---------------------------------------------------------------


def test_classification_sums_mask_and_top5():
  logits = jnp.array([[9., 1, 2, 3, 4, 5, 6], [0., 9, 1, 2, 3, 4, 5],
                      [0., 1, 2, 3, 4, 5, 9]])
  labels = jnp.array([0, 0, 1])
  per = jnp.array([1.0, 2.0, 4.0])
  sums = tasks.classification_sums(logits, labels, per, jnp.array([1., 1., 0.]))
  out = tasks.finalize_sums(sums)
  assert out == {'loss': 1.5, 'accuracy': 0.5, 'top5_accuracy': 0.5}
  assert 'top5_accuracy' not in tasks.classification_sums(
      logits[:, :5], labels, per)


# --- optimizer -------------------------------------------------------------


def test_schedules():
  cfg = Config(learning_rate=1.0, warmup_steps=10, schedule='cosine')
  lr = optim.schedule(cfg, 110)
  # Warmup: step s < 10 uses (s + 1) / 10 of the rate (the first step moves).
  assert float(lr(0)) == pytest.approx(0.1) and float(lr(4)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-6)
  step = optim.schedule(Config(learning_rate=1.0, schedule='step',
                               step_boundaries=(0.5, 0.75)), 100)
  assert [float(step(s)) for s in (49, 50, 74, 75)] == pytest.approx(
      [1.0, 0.1, 0.1, 0.01])


def test_weight_decay_skips_biases_and_freeze_by_regex():
  params = {'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)},
            'norm': {'scale': jnp.ones(2)}, 'head': {'kernel': jnp.ones((2, 3))}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  cfg = Config(optimizer='sgd', momentum=0.0, learning_rate=1.0, weight_decay=0.1)
  tx, _ = optim.make(cfg, 10, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(updates['dense']['kernel'][0, 0]) == pytest.approx(-0.1)
  assert float(updates['dense']['bias'][0]) == 0.0
  assert float(updates['norm']['scale'][0]) == 0.0
  tx, _ = optim.make(cfg.replace(freeze='^dense/'), 10, params)
  ones = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(ones, tx.init(params), params)
  assert float(jnp.abs(updates['dense']['kernel']).sum()) == 0.0
  assert float(updates['head']['kernel'][0, 0]) == pytest.approx(-1.1)
  with pytest.raises(optim.FreezeError, match='matches no parameter'):
    optim.make(cfg.replace(freeze='^nothing'), 10, params)


def test_grad_clipping():
  params = {'w': jnp.zeros(4)}
  tx, _ = optim.make(Config(optimizer='sgd', momentum=0.0, learning_rate=1.0,
                            grad_clip_norm=1.0), 10, params)
  updates, _ = tx.update({'w': jnp.full(4, 10.0)}, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


# --- data order ------------------------------------------------------------


def _digits_like(n=50):
  rng = np.random.default_rng(0)
  return {'image': rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8),
          'label': np.arange(n, dtype=np.int32) % 10}


def test_global_batch_depends_only_on_seed_and_step():
  ds = pipeline.ArrayDataset(_digits_like())
  a = pipeline.TrainIterator(ds, batch_size=8, seed=3)
  batches = [next(a)['label'] for _ in range(9)]
  b = pipeline.TrainIterator(ds, batch_size=8, seed=3, step=5)  # resumed
  np.testing.assert_array_equal(next(b)['label'], batches[5])
  # Each epoch (6 steps of 8 from 50) is a permutation without repeats.
  idx = np.concatenate([pipeline.global_indices(s, num_examples=50, batch_size=8,
                                                seed=3) for s in range(6)])
  assert len(set(idx.tolist())) == 48
  assert not np.array_equal(idx[:8], pipeline.global_indices(
      6, num_examples=50, batch_size=8, seed=3))  # reshuffled next epoch
  # Two processes' slices concatenate to the single-process batch.
  parts = [next(pipeline.TrainIterator(ds, 8, 3, step=4, process_index=p,
                                       process_count=2))['label'] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(parts), batches[4])
  # The grain-threaded path yields the same batches.
  g = pipeline.TrainIterator(ds, batch_size=8, seed=3, step=2, threads=2)
  np.testing.assert_array_equal(next(g)['label'], batches[2])
  assert g.state() == {'step': 3, 'seed': 3, 'batch_size': 8}


def test_augmentation_is_per_example_and_reproducible():
  fn = pipeline.image_example_fn('pad_crop_flip', 0, train=True)
  ds = pipeline.ArrayDataset(_digits_like(), fn, pipeline.image_batch_fn('scale'))
  x1 = next(pipeline.TrainIterator(ds, 8, seed=1, step=3))['image']
  x2 = next(pipeline.TrainIterator(ds, 8, seed=1, step=3))['image']
  plain = next(pipeline.TrainIterator(pipeline.ArrayDataset(_digits_like()), 8,
                                      seed=1, step=3))['image'] / 255.0
  np.testing.assert_array_equal(x1, x2)
  assert x1.dtype == np.float32 and x1.shape == (8, 8, 8, 1)
  assert not np.allclose(x1, plain)


def test_eval_batches_cover_every_example_once():
  ds = pipeline.ArrayDataset(_digits_like(37))
  seen, valid = [], 0.0
  for p in (0, 1):
    for b in pipeline.eval_batches(ds, 16, process_index=p, process_count=2):
      seen.extend(b['label'][b['_valid'] > 0].tolist())
      valid += b['_valid'].sum()
      assert b['image'].shape[0] == 8
  assert valid == 37 and sorted(seen) == sorted((np.arange(37) % 10).tolist())


# --- eval over an uneven split equals NumPy over all examples --------------


def test_eval_metrics_over_uneven_split_match_numpy(tmp_path):
  rng = np.random.default_rng(1)
  n = 37  # not a multiple of the eval batch (16) nor of the 8 devices
  arrays = {'image': rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
            'label': rng.integers(0, 10, n).astype(np.int32)}
  ds = pipeline.ArrayDataset(arrays)
  data = pipeline.Data(pipeline.ArrayDataset(arrays), ds, tasks.Classification(),
                       {'num_classes': 10})
  cfg = Config(model='mlp', model_kwargs={'features': [16]}, batch_size=16,
               num_steps=3, log_every=1, checkpoint_every=100)
  result = train.run(cfg, str(tmp_path), data=data)
  from dlresearch import checkpoint
  variables = checkpoint.load_variables(str(tmp_path))
  model = registry.build('mlp', num_classes=10, features=[16])
  logits = np.asarray(model.apply({'params': variables['params']},
                                  arrays['image']), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  labels = arrays['label']
  expected_loss = -logp[np.arange(n), labels].mean()
  expected_acc = (logits.argmax(-1) == labels).mean()
  top5 = np.argsort(-logits, -1)[:, :5]
  expected_top5 = (top5 == labels[:, None]).any(-1).mean()
  assert result['step'] == 3
  assert result['accuracy'] == pytest.approx(expected_acc, abs=1e-9)
  assert result['top5_accuracy'] == pytest.approx(expected_top5, abs=1e-9)
  assert result['loss'] == pytest.approx(expected_loss, rel=1e-5)


def test_grad_accumulation_equals_large_batch(tmp_path):
  rng = np.random.default_rng(2)
  arrays = {'image': rng.normal(size=(64, 4, 4, 1)).astype(np.float32),
            'label': rng.integers(0, 10, 64).astype(np.int32)}
  results = {}
  for accum in (1, 4):
    data = pipeline.Data(pipeline.ArrayDataset(arrays), pipeline.ArrayDataset(arrays),
                         tasks.Classification(), {'num_classes': 10})
    cfg = Config(model='mlp', model_kwargs={'features': [32]}, batch_size=32,
                 num_steps=4, grad_accum_steps=accum, optimizer='sgd',
                 learning_rate=0.5, log_every=100, checkpoint_every=100)
    results[accum] = train.run(cfg, str(tmp_path / f'a{accum}'), data=data)
  assert results[4]['loss'] == pytest.approx(results[1]['loss'], rel=1e-5)


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


def test_jsonl_writer_appends_and_drops_a_partial_last_line(tmp_path):
  from dlresearch import logging as log_lib
  w = log_lib.JsonlWriter(str(tmp_path / 'metrics.jsonl'))
  w.write(1, 'train', {'loss': 0.1234567890123})
  w.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 2, "split": "tr')  # a crash mid-line
  w = log_lib.JsonlWriter(str(tmp_path / 'metrics.jsonl'))
  w.write(2, 'eval', {'accuracy': 0.5, 'loss': float('nan')})
  w.close()
  lines = log_lib.read_metrics(str(tmp_path))
  assert lines == [{'step': 1, 'split': 'train', 'loss': 0.1234567890123},
                   {'step': 2, 'split': 'eval', 'accuracy': 0.5, 'loss': 'nan'}]


def test_console_progress_reports_rates_and_eta(caplog):
  from dlresearch import logging as log_lib
  times = iter([0.0, 2.0])
  w = log_lib.ConsoleWriter(total_steps=30, batch_size=8, clock=lambda: next(times))
  with caplog.at_level('INFO'):
    w.write(10, 'train', {'loss': 1.0})
    w.write(20, 'train', {'loss': 0.5})
  text = caplog.text
  assert '5.00 steps/s' in text and '40 ex/s' in text and 'ETA 00:00:02' in text


# --- the pure train step, called directly ---------------------------------


class _Linear(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3, name='dense')(x)


def _linear_setup(lr=0.5):
  model, task = _Linear(), tasks.Classification(input_key='x', label_key='y',
                                                loss='mse')
  rng = np.random.default_rng(0)
  batch = {'x': rng.normal(size=(8, 4)).astype(np.float32),
           'y': rng.integers(0, 3, 8).astype(np.int32)}
  tx, _ = optim.make(Config(optimizer='sgd', momentum=0.0, learning_rate=lr),
                     10)
  state = state_lib.create(model, tx, (batch['x'][:1],), {}, 0)
  return model, task, tx, state, batch


def test_train_step_sgd_on_a_linear_model_is_the_hand_computed_update():
  model, task, tx, state, batch = _linear_setup(lr=0.5)
  w, b = (np.asarray(state.params['dense'][k]) for k in ('kernel', 'bias'))
  new, out = jax.jit(train.make_train_step(model, task, tx))(state, batch)
  x, t = batch['x'], np.eye(3)[batch['y']]
  err = x @ w + b - t  # mse per example = mean over the 3 outputs
  grad_w = 2 * x.T @ err / (8 * 3)
  grad_b = 2 * err.sum(0) / (8 * 3)
  np.testing.assert_allclose(new.params['dense']['kernel'], w - 0.5 * grad_w,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.params['dense']['bias'], b - 0.5 * grad_b,
                             rtol=1e-5, atol=1e-6)
  assert int(new.step) == 1
  np.testing.assert_allclose(out['loss'], np.mean(err ** 2), rtol=1e-5)
  np.testing.assert_allclose(
      out['grad_norm'], np.sqrt((grad_w ** 2).sum() + (grad_b ** 2).sum()),
      rtol=1e-5)


def test_accumulating_k_micro_batches_equals_the_k_times_batch():
  model, task, tx, state, batch = _linear_setup()
  whole, m1 = jax.jit(train.make_train_step(model, task, tx))(state, batch)
  grad_fn = train.accumulate(
      functools.partial(train.gradients, model=model, task=task), 4)
  step = functools.partial(train.train_step, grad_fn=grad_fn, tx=tx)
  accum, m4 = jax.jit(step)(state, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               whole.params, accum.params)
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-5)
  np.testing.assert_allclose(m1['accuracy'], m4['accuracy'])
