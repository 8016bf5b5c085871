"""Tests for top-p (nucleus) sampling in decoding.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlresearch.models import decoding
from dlresearch.models import registry

PROBS = np.array([0.05, 0.4, 0.1, 0.3, 0.15])


def _nucleus(probs: np.ndarray, p: float) -> set[int]:
  """Independent reference: most likely first, until the mass reaches p."""
  kept, mass = set(), 0.0
  for i in np.argsort(-probs, kind='stable'):
    kept.add(int(i))
    mass += probs[i]
    if mass >= p:
      return kept
  return kept


def _draws(logits, n=2000, seed=0, **kwargs):
  tiled = jnp.tile(jnp.asarray(logits, jnp.float32)[None], (n, 1))
  return np.asarray(jax.jit(lambda l, k: decoding.sample_logits(l, k, **kwargs))(
      tiled, jax.random.key(seed)))


@pytest.mark.parametrize('p', [0.3, 0.5, 0.75, 0.9, 0.99])
def test_draws_stay_inside_the_nucleus(p):
  nucleus = _nucleus(PROBS, p)
  draws = _draws(np.log(PROBS), top_p=p)
  assert set(np.unique(draws)) == nucleus  # nothing outside, every member drawn
  # ... in proportion to the renormalised probabilities.
  members = sorted(nucleus)
  freq = np.bincount(draws, minlength=len(PROBS))[members] / len(draws)
  np.testing.assert_allclose(freq, PROBS[members] / PROBS[members].sum(), atol=0.04)


def test_the_token_that_crosses_p_is_kept():
  # 0.4 < 0.5, so the 0.3 token (mass 0.7 >= 0.5) is kept; 0.15 is not.
  assert set(np.unique(_draws(np.log(PROBS), top_p=0.5))) == {1, 3}
  # A p below the top probability keeps only the argmax.
  assert set(np.unique(_draws(np.log(PROBS), top_p=0.01))) == {1}


def test_nucleus_is_taken_after_temperature_and_top_k():
  # top_k=2 leaves 0.4 and 0.3, i.e. 4/7 and 3/7: p=0.55 keeps only the first.
  assert set(np.unique(_draws(np.log(PROBS), top_k=2, top_p=0.55))) == {1}
  # Temperature 4 flattens PROBS so that p=0.5 needs three tokens.
  hot = np.exp(np.log(PROBS) / 4)
  hot /= hot.sum()
  nucleus = _nucleus(hot, 0.5)
  assert len(nucleus) == 3
  assert set(np.unique(_draws(np.log(PROBS), temperature=4.0, top_p=0.5))) == nucleus


def test_top_p_one_equals_plain_sampling():
  logits = jax.random.normal(jax.random.key(3), (64, 50))
  for seed in range(3):
    key = jax.random.key(seed)
    plain = jax.random.categorical(key, logits, axis=-1)
    np.testing.assert_array_equal(decoding.sample_logits(logits, key, top_p=1.0), plain)
    np.testing.assert_array_equal(decoding.sample_logits(logits, key), plain)
    np.testing.assert_array_equal(
        decoding.sample_logits(logits, key, temperature=0.7, top_k=5, top_p=1.0),
        decoding.sample_logits(logits, key, temperature=0.7, top_k=5))


def test_traced_top_p_serves_every_setting():
  sample = jax.jit(decoding.sample_logits)
  logits = jnp.tile(jnp.log(jnp.asarray(PROBS, jnp.float32))[None], (500, 1))
  key = jax.random.key(1)
  assert set(np.unique(sample(logits, key, 1.0, 0, False, 0.5))) == {1, 3}
  assert set(np.unique(sample(logits, key, 1.0, 0, False, 0.01))) == {1}


@pytest.mark.parametrize('bad', [0.0, -0.1, 1.5, float('nan')])
def test_invalid_top_p_is_a_clear_error(bad):
  with pytest.raises(ValueError, match=r'top_p must be in \(0, 1\]'):
    decoding.sample_logits(jnp.zeros((1, 4)), jax.random.key(0), top_p=bad)
  model = registry.build('lstm_lm', vocab_size=7, embed_dim=4, hidden_size=4)
  with pytest.raises(ValueError, match='top_p'):
    decoding.sample_rnn(model, {}, jnp.zeros((1, 2), jnp.int32), 3, jax.random.key(0),
                        top_p=bad)
  lm = registry.build('transformer_lm', vocab_size=7, num_layers=1, d_model=8, num_heads=2,
                      max_len=8)
  with pytest.raises(ValueError, match='top_p'):
    decoding.generate(lm, {}, jnp.zeros((1, 2), jnp.int32), 3, jax.random.key(0), top_p=bad)


def _check_plumbing(sampler, model, params, prompt):
  plen, new = prompt.shape[1], 6
  greedy = sampler(model, params, prompt, new, jax.random.key(0), greedy=True)
  narrow = sampler(model, params, prompt, new, jax.random.key(1), top_p=1e-6)
  np.testing.assert_array_equal(narrow, greedy)
  plain = sampler(model, params, prompt, new, jax.random.key(2), temperature=3.0)
  np.testing.assert_array_equal(
      sampler(model, params, prompt, new, jax.random.key(2), temperature=3.0, top_p=1.0), plain)
  # Every token drawn with top_p lies in the nucleus of the model's own
  # (uncached, causal) distribution at that position; T=0.1 keeps the
  # nuclei small (1-8 tokens) without making the draw greedy.
  out = np.asarray(sampler(model, params, prompt, new, jax.random.key(3), temperature=0.1,
                           top_p=0.6))
  logits = np.asarray(jax.jit(model.apply)({'params': params}, out[:, :-1]), np.float64)
  sizes = []
  for row in range(out.shape[0]):
    for t in range(plen, plen + new):
      z = logits[row, t - 1] / 0.1
      probs = np.exp(z - z.max())
      nucleus = _nucleus(probs / probs.sum(), 0.6)
      sizes.append(len(nucleus))
      assert out[row, t] in nucleus
  assert max(sizes) > 1  # the check is not only the greedy case


def test_generate_plumbs_top_p():
  lm = registry.build('transformer_lm', vocab_size=19, num_layers=1, d_model=16, num_heads=2,
                      max_len=16)
  prompt = jax.random.randint(jax.random.key(1), (3, 3), 0, 19)
  params = lm.init(jax.random.key(0), prompt)['params']
  _check_plumbing(decoding.generate, lm, params, prompt)


def test_sample_rnn_plumbs_top_p():
  model = registry.build('lstm_lm', vocab_size=13, embed_dim=8, hidden_size=16)
  prompt = jax.random.randint(jax.random.key(1), (3, 3), 0, 13)
  params = model.init(jax.random.key(0), prompt)['params']
  _check_plumbing(decoding.sample_rnn, model, params, prompt)
