"""Eval hooks: what an eval adds beyond the task's metrics.

A hook is ``hook(model, state) -> dict``; ``train.run`` calls each at every
eval and adds its keys to the eval line (and to the result of the run).

- ``sample_hook``: a sampled continuation of ``--prompt`` (``sample``).
- ``translation_hook``: decodes the eval split and scores it with sacrebleu
  (``bleu``, ``chrf``, ``exact_match``); writes ``translations.txt``.

Also the decoding helpers they use (``continue_prompt``, ``translate``),
``translation_scores``, and for hooks that score the eval split on the host
(the applications' in ``dlresearch/apps/*/evaluators.py``):
``host_variables`` and ``batched``.
"""

import os
import pathlib
from typing import Callable, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from dlresearch.config import Config, ConfigError
from dlresearch.models import decoding, rnn

TRANSLATIONS_FILE = 'translations.txt'


def host_params(state):
  """This process's full copy of ``state.params`` as NumPy arrays.

  For the jit layout (global arrays, replicated or sharded) and the pmap
  layout (replicated with a leading device axis: ``state.step`` is 1-D).
  """
  pmapped = state.step.ndim == 1

  def get(x):
    if pmapped:
      return np.asarray(x.addressable_data(0))[0]
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, state.params)


def host_variables(state) -> dict:
  """This process's full copy of the model's variables (params + state),
  for hooks that score the eval split on the host."""
  model_state = host_params(state.replace(params=state.model_state))
  return {'params': host_params(state), **model_state}


def batched(fn: Callable, arrays: tuple[np.ndarray, ...],
            batch_size: int) -> np.ndarray:
  """``fn(*batch)`` over the rows of ``arrays``, concatenated.

  Every call gets ``batch_size`` rows (the last batch is padded with copies
  of row 0 and the padding dropped), so a jitted ``fn`` compiles once.
  """
  n = len(arrays[0])
  out = []
  for start in range(0, n, batch_size):
    part = [a[start:start + batch_size] for a in arrays]
    real = len(part[0])
    if real < batch_size:
      part = [np.concatenate([p, np.repeat(a[:1], batch_size - real, 0)])
              for p, a in zip(part, arrays)]
    out.append(np.asarray(fn(*part))[:real])
  return np.concatenate(out)


def host_step(state) -> int:
  return int(np.asarray(jax.device_get(
      state.step.addressable_data(0))).reshape(-1)[0])


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


def translation_scores(hypotheses: Sequence[str], references: Sequence[str],
                       tokenize: str = '13a') -> dict[str, float]:
  """Corpus BLEU and chrF (sacrebleu) and the fraction of exact matches."""
  import sacrebleu  # pylint: disable=g-import-not-at-top
  hyps, refs = list(hypotheses), [list(references)]
  return {
      'bleu': float(sacrebleu.corpus_bleu(hyps, refs, tokenize=tokenize).score),
      'chrf': float(sacrebleu.corpus_chrf(hyps, refs).score),
      'exact_match': float(np.mean([h == r for h, r in zip(hyps, refs[0])])),
  }


def translate(model, params, tokenizer, inputs: np.ndarray,
              inputs_mask: np.ndarray, max_len: int, batch_size: int,
              beam_size: int = 1) -> list[str]:
  """Greedy (``beam_size=1``) or beam-search translations of id rows."""
  params = jax.device_put(params, jax.local_devices()[0])
  out = []
  for start in range(0, len(inputs), batch_size):
    src = np.asarray(inputs[start:start + batch_size], np.int32)
    mask = np.asarray(inputs_mask[start:start + batch_size], bool)
    real = len(src)
    if real < batch_size:  # Pad with copies of row 0: one compiled shape.
      src = np.concatenate([src, np.repeat(src[:1], batch_size - real, 0)])
      mask = np.concatenate([mask, np.repeat(mask[:1], batch_size - real, 0)])
    kw = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
              src_mask=mask, pad_id=tokenizer.pad_id)
    if beam_size > 1:
      ids = decoding.beam_search(model, params, src, max_len,
                                 beam_size=beam_size, **kw)[0][:, 0]
    else:
      ids = decoding.greedy_decode(model, params, src, max_len, **kw)
    ids = np.asarray(ids)[:real]
    out += [tokenizer.decode(row, stop_at_eos=True) for row in ids]
  return out


def translation_hook(cfg: Config, workdir: str, tokenizer, arrays: dict,
                     sources: Sequence[str], references: Sequence[str]
                     ) -> Callable:
  """Eval hook: decodes the eval split (its first ``--bleu_examples``).

  ``arrays`` are the eval split's id arrays (``inputs``, ``inputs_mask``);
  ``sources``/``references`` its raw text.

  Adds ``bleu`` (sacrebleu, ``--bleu_tokenize``), ``chrf`` and
  ``exact_match``; process 0 writes ``source / reference / hypothesis``
  triples to ``WORKDIR/translations.txt``.
  """
  from sacrebleu.metrics import bleu  # pylint: disable=g-import-not-at-top
  if cfg.bleu_tokenize not in bleu.BLEU.TOKENIZERS:
    raise ConfigError('bleu_tokenize', 'must be one of '
                      f'{", ".join(bleu.BLEU.TOKENIZERS)} (got '
                      f'{cfg.bleu_tokenize!r})')
  count = len(references)
  if cfg.bleu_examples:
    count = min(count, cfg.bleu_examples)
  inputs = arrays['inputs'][:count]
  inputs_mask = arrays['inputs_mask'][:count]
  sources, references = sources[:count], references[:count]
  batch_size = cfg.eval_batch_size or cfg.batch_size

  def hook(model, state):
    hyps = translate(model, host_params(state), tokenizer, inputs, inputs_mask,
                     cfg.max_len, batch_size, cfg.beam_size)
    if jax.process_index() == 0:
      path = pathlib.Path(workdir) / TRANSLATIONS_FILE
      tmp = path.with_suffix('.tmp')
      tmp.write_text(''.join(f'{s}\n{r}\n{h}\n\n' for s, r, h in
                             zip(sources, references, hyps)), encoding='utf-8')
      os.replace(tmp, path)
    return translation_scores(hyps, references, cfg.bleu_tokenize)

  return hook
