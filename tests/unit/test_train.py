"""dlresearch.train: the pure train step called directly, gradient
accumulation, and ``train.run``'s eval metrics over an uneven split."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from dlresearch import optim, state as state_lib
from dlresearch import tasks, train
from dlresearch.config import Config
from dlresearch.data import pipeline
from dlresearch.models import registry


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
