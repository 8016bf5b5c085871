"""dlresearch.optim: schedules, Adam flags, clipping, weight decay, --freeze
and --lr_multipliers.

Weight decay by parameter role is checked on every registered model.

The rule (``optim.decay_role``): weight matrices (``kernel``,
``recurrent_kernel``) and token/entity embedding tables decay; biases of any
shape (attention's q/k/v biases are ``[heads, head_dim]``), norm scales,
per-entity bias tables, learned position tables and the ViT class token do
not. The expectations below are written per parameter name, independently of
the implementation's regular expressions.
"""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlresearch import config as config_lib
from dlresearch import optim
from dlresearch import state as state_lib
from dlresearch import tasks, train
from dlresearch.config import Config
from dlresearch.config import ConfigError
from dlresearch.models import registry


FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures')

# (module name, leaf name) pairs of learned position tables and bias tables.
NOT_DECAYED_TABLES = {('pos_embed', 'embedding'),
                      ('encoder_pos_embed', 'embedding'),
                      ('decoder_pos_embed', 'embedding'),
                      ('user_bias', 'embedding'), ('item_bias', 'embedding')}


def expected(path: tuple[str, ...]) -> bool:
  module, leaf = (path[-2] if len(path) > 1 else ''), path[-1]
  if leaf in ('bias', 'recurrent_bias', 'scale', 'offset', 'cls',
              'pos_embedding'):
    return False
  if (module, leaf) in NOT_DECAYED_TABLES:
    return False
  if leaf in ('kernel', 'recurrent_kernel', 'embedding', 'genre_embed'):
    return True
  raise AssertionError(f'no rule for {"/".join(path)}: decide and add it')


@functools.cache
def _cases() -> dict:
  with open(os.path.join(FIXTURES, 'param_shapes.json')) as f:
    return json.load(f)['cases']


def _flat(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(optim._key_name(k) for k in path): leaf  # pylint: disable=protected-access
          for path, leaf in flat}


def test_every_registered_model_has_a_case():
  assert {c['name'] for c in _cases().values()} == set(registry.names())


@pytest.mark.parametrize('case', sorted(_cases()))
def test_mask_follows_the_role_rule(case):
  spec = _cases()[case]
  model = registry.build(spec['name'], **spec['kwargs'])
  inputs = [jax.ShapeDtypeStruct(tuple(s), jnp.dtype(d))
            for s, d in spec['inputs']]
  params = jax.eval_shape(model.init, jax.random.key(0), *inputs)['params']
  mask = _flat(optim.decay_mask(params))
  assert mask.keys() == _flat(params).keys()
  for path, decayed in mask.items():
    assert decayed == expected(path), '/'.join(path)
    assert 'unknown' not in optim.decay_role('/'.join(path))[1]


def test_attention_biases_are_not_decayed_by_adamw():
  """One AdamW step with zero gradients: only decayed leaves shrink, by
  exactly (1 - lr * wd); the [heads, head_dim] q/k/v biases stay put."""
  model = registry.build('vit_tiny', num_classes=3)
  x = jnp.ones((1, 32, 32, 3))
  # Jitted: op by op, the init and the update of ~100 leaves take ~15 s.
  params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      x)['params']
  params = jax.tree.map(lambda p: p + 0.5, params)  # no zeros
  cfg = Config(optimizer='adamw', learning_rate=0.1, weight_decay=0.5)
  tx, _ = optim.make(cfg, 10, params)

  @jax.jit
  def step(params):
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params),
                           tx.init(params), params)
    return optax.apply_updates(params, updates)

  new = _flat(step(params))
  old = _flat(params)
  attn_bias = [p for p in old if p[-1] == 'bias' and p[-2] in
               ('query', 'key', 'value')]
  assert attn_bias and all(old[p].ndim == 2 for p in attn_bias)
  for path, value in old.items():
    factor = 1 - 0.1 * 0.5 if expected(path) else 1.0
    np.testing.assert_allclose(new[path], value * factor, rtol=1e-6,
                               err_msg='/'.join(path))
  assert not expected(('cls',)) and not expected(('pos_embedding',))


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


def test_warmup_first_step_moves_and_schedules_end_where_asked():
  cfg = Config(learning_rate=1.0, warmup_steps=4, schedule='cosine',
               min_lr_ratio=0.1)
  lr = optim.schedule(cfg, 20)
  assert float(lr(0)) == pytest.approx(0.25)  # the first update moves
  assert [float(lr(s)) for s in (1, 2, 3)] == pytest.approx([0.5, 0.75, 1.0])
  assert float(lr(4)) == pytest.approx(1.0)
  assert float(lr(20)) == pytest.approx(0.1)  # cosine ends at min_lr_ratio
  inv = optim.schedule(cfg.replace(schedule='inverse_sqrt'), 20)
  # min((t)/w, sqrt(w/t)) with t = count + 1, w = 4
  for count in (0, 3, 15, 99):
    t = count + 1
    assert float(inv(count)) == pytest.approx(min(t / 4, (4 / t) ** 0.5))


def test_adam_flags_reach_optax_and_momentum_stays_with_sgd():
  params = {'w': jnp.array([1.0, -2.0])}
  grads = {'w': jnp.array([0.3, 0.1])}
  cfg = Config(optimizer='adam', learning_rate=0.1, adam_b1=0.5,
               adam_b2=0.9, adam_eps=1e-3, momentum=0.0)
  tx, _ = optim.make(cfg, 10)
  ref = optax.adam(0.1, b1=0.5, b2=0.9, eps=1e-3)
  s, r = tx.init(params), ref.init(params)
  for _ in range(3):
    u, s = tx.update(grads, s, params)
    v, r = ref.update(grads, r, params)
    np.testing.assert_allclose(u['w'], v['w'], rtol=1e-6)
  with pytest.raises(ConfigError, match='--adam_b2'):
    config_lib.validate(cfg.replace(adam_b2=1.0))


def test_wmt_preset_is_the_published_recipe():
  from experiments.transformer_translate import PRESETS as MT
  cfg = MT['wmt14_base'].config
  assert (cfg.optimizer, cfg.adam_b1, cfg.adam_b2, cfg.adam_eps) == (
      'adam', 0.9, 0.98, 1e-9)
  assert (cfg.schedule, cfg.warmup_steps, cfg.label_smoothing) == (
      'inverse_sqrt', 4000, 0.1)
  lr = optim.schedule(cfg, cfg.num_steps)
  for step in (1, 4000, 10_000):  # the paper's lrate at 1-based ``step``
    paper = 512 ** -0.5 * min(step ** -0.5, step * 4000 ** -1.5)
    assert float(lr(step - 1)) == pytest.approx(paper, rel=1e-5)


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, name='bn')(x)
    x = nn.Dropout(0.5, deterministic=not train)(x.mean((1, 2)))
    return nn.Dense(3, name='head')(x)


def _train(cfg, steps=3):
  model = _Net()
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 6, 6, 2)).astype(np.float32),
           'label': rng.integers(0, 3, 8).astype(np.int32)}
  args = (batch['image'],)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))['params']
  tx, _ = optim.make(cfg, steps, params)
  state = state_lib.create(model, tx, args, {}, 0)
  task = tasks.freeze_backbone(
      tasks.Classification(), probe=cfg.probe,
      trainable=optim.trainable(cfg, params), model_state=state.model_state)
  step = jax.jit(train.make_train_step(model, task, tx))
  first = state
  for _ in range(steps):
    state, _ = step(state, batch)
  return first, state


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                  jax.tree.leaves(b)))


@pytest.mark.parametrize('flags', [{'freeze': '^(conv|bn)/'},
                                   {'probe': True, 'new_head': '^head/'}])
def test_frozen_parameters_and_their_batch_stats_do_not_move(flags):
  cfg = Config(optimizer='adam', learning_rate=0.1, **flags)
  first, last = _train(cfg)
  for name in ('conv', 'bn'):
    assert _same(first.params[name], last.params[name])
  assert _same(first.model_state, last.model_state)  # bit-identical stats
  assert not _same(first.params['head'], last.params['head'])
  # Frozen parameters get no optimizer state: Adam's mu and nu hold the
  # head's two arrays only.
  sizes = sorted(x.size for x in jax.tree.leaves(last.opt_state) if x.ndim)
  assert sizes == sorted([3, 3, 12, 12])
  # Without freezing, the same step moves the body and its statistics.
  first, last = _train(Config(optimizer='adam', learning_rate=0.1))
  assert not _same(first.params['conv'], last.params['conv'])
  assert not _same(first.model_state, last.model_state)


def test_frozen_parameters_get_no_gradient_and_no_backward_pass():
  """The loss sees frozen parameters through stop_gradient: their gradients
  are zeros, the global norm (what --grad_clip_norm clips by, and the
  logged grad_norm) is the head's alone, and a probe's backward pass has no
  product through the frozen convolution."""
  model = _Net()
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 6, 6, 2)).astype(np.float32),
           'label': rng.integers(0, 3, 8).astype(np.int32)}
  variables = model.init(jax.random.PRNGKey(0), batch['image'])
  params, model_state = variables['params'], {'batch_stats': variables['batch_stats']}
  cfg = Config(probe=True, new_head='^head/')
  task = tasks.freeze_backbone(
      tasks.Classification(), probe=True,
      trainable=optim.trainable(cfg, params), model_state=model_state)
  grad = functools.partial(train.gradients, model=model, task=task)
  grads, _, _ = grad(params, model_state, batch, jax.random.PRNGKey(1))
  for name in ('conv', 'bn'):
    assert all(not np.any(g) for g in jax.tree.leaves(grads[name]))

  def head_loss(head):  # the head's gradient with the body held constant
    sums, _ = tasks.Classification()(model, {'params': {**params, 'head': head},
                                             **model_state}, batch, train=False)
    return sums['loss'] / sums['count']

  want = jax.grad(head_loss)(params['head'])
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7),
               grads['head'], want)
  assert float(optax.tree.norm(grads)) == pytest.approx(
      float(optax.tree.norm(want)), rel=1e-5)
  convs = lambda t: str(jax.make_jaxpr(functools.partial(
      train.gradients, model=model, task=t))(params, model_state, batch,
                                             jax.random.PRNGKey(1))).count(
                                                 'conv_general_dilated')
  # Forward only (1) with the body frozen; forward and weight gradient (2)
  # when it trains.
  assert (convs(task), convs(tasks.Classification())) == (1, 2)


def test_lr_multipliers_scale_each_group_update():
  params = {'body': {'kernel': jnp.ones((2, 2))}, 'head': {'kernel': jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  cfg = Config(optimizer='sgd', momentum=0.0, learning_rate=0.5,
               lr_multipliers='^body/=0.1,head=3')
  tx, _ = optim.make(cfg, 10, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['body']['kernel'], -0.05)
  np.testing.assert_allclose(updates['head']['kernel'], -1.5)
  for bad, needle in (('body', 'not REGEX=FACTOR'), ('x=-1', 'finite number'),
                      ('(=1', 'unterminated'), ('nope=2', 'matches no parameter')):
    with pytest.raises(ConfigError, match=needle):
      optim.make(cfg.replace(lr_multipliers=bad), 10, params)
