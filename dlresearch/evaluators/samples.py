"""Samples: a sampled continuation of ``--prompt`` at every eval.

``sample_hook`` builds the hook ``hook(model, state) -> {'sample': text}``
(a fresh draw per step, seeded by ``--seed`` and the step); the loop runs it
as an Evaluator (``base.FromHook``). ``continue_prompt`` is the decoding
it uses (also ``tools``' generation).
"""

from typing import Callable

import jax
import numpy as np

from dlresearch.config import Config, ConfigError
from dlresearch.evaluators.base import host_params, host_step
from dlresearch.models import decoding, rnn


def continue_prompt(model, params, tokenizer, prompt: str, max_new_tokens: int,
                    rng: jax.Array, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0
                    ) -> tuple[str, np.ndarray]:
  """Samples ``max_new_tokens`` after ``prompt``; returns (text, new ids).

  An RNN LM carries its state (``decoding.sample_rnn``); a Transformer LM
  uses its KV cache (``decoding.generate``). An empty prompt starts after
  ``<eos>``, i.e. at the start of a document. ``top_k``/``top_p`` restrict
  each draw to the k most likely tokens / the nucleus of probability p
  (0 / 1.0: no restriction).
  """
  ids = tokenizer.encode(prompt)
  if not ids.size:
    ids = np.array([tokenizer.eos_id], np.int32)
  sampler = (decoding.sample_rnn if isinstance(model, rnn.RNNLanguageModel)
             else decoding.generate)
  out = sampler(model, params, ids[None], max_new_tokens, rng,
                temperature=temperature, top_k=top_k or None,
                top_p=top_p)
  new = np.asarray(out)[0, ids.size:]
  return tokenizer.decode(new), new


def sample_hook(cfg: Config, tokenizer, max_len: int | None) -> Callable:
  """Eval hook: ``{'sample': prompt + continuation}`` (a fresh draw per step).

  Raises:
    ConfigError: the prompt and ``max_new_tokens`` exceed the model's
      ``max_len`` (checked before training starts).
  """
  max_len = cfg.model_kwargs.get('max_len', max_len)
  prompt_len = max(tokenizer.encode(cfg.prompt).size, 1)
  if max_len and prompt_len + cfg.max_new_tokens > max_len:
    raise ConfigError('max_new_tokens', f'the prompt ({prompt_len} tokens) + '
                      f'{cfg.max_new_tokens} new tokens exceed the model\'s '
                      f'max_len {max_len} (= --seq_len unless --model_kwargs '
                      'sets it); ask for fewer')

  def hook(model, state):
    rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), host_step(state))
    continuation, _ = continue_prompt(model, host_params(state), tokenizer,
                                      cfg.prompt, cfg.max_new_tokens, rng,
                                      cfg.temperature, cfg.top_k, cfg.top_p)
    return {'sample': cfg.prompt + continuation}

  return hook


