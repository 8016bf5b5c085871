"""Weight decay by parameter role, checked on every registered model.

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

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlresearch import optim
from dlresearch.config import Config
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
