"""BLEU: decodes the eval split and scores it with sacrebleu.

``translation_hook`` builds the hook ``hook(model, state) -> {'bleu',
'chrf', 'exact_match'}``; process 0 writes ``WORKDIR/translations.txt``.
``translate`` (greedy or beam search over id rows) and
``translation_scores`` are what it uses.
"""

import os
import pathlib
from typing import Callable, Sequence

import jax
import numpy as np

from dlresearch.config import Config, ConfigError
from dlresearch.evaluators.base import host_params
from dlresearch.models import decoding

TRANSLATIONS_FILE = 'translations.txt'
TEST_TRANSLATIONS_FILE = 'test_translations.txt'


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
                     sources: Sequence[str], references: Sequence[str],
                     filename: str = TRANSLATIONS_FILE) -> Callable:
  """Eval hook: decodes a split (its first ``--bleu_examples``).

  ``arrays`` are the split's id arrays (``inputs``, ``inputs_mask``);
  ``sources``/``references`` its raw text.

  Adds ``bleu`` (sacrebleu, ``--bleu_tokenize``), ``chrf`` and
  ``exact_match``; process 0 writes ``source / reference / hypothesis``
  triples to ``WORKDIR/<filename>`` (``translations.txt``; the test split's
  hook ``test_translations.txt``).
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
      path = pathlib.Path(workdir) / filename
      tmp = path.with_suffix('.tmp')
      tmp.write_text(''.join(f'{s}\n{r}\n{h}\n\n' for s, r, h in
                             zip(sources, references, hyps)), encoding='utf-8')
      os.replace(tmp, path)
    return translation_scores(hyps, references, cfg.bleu_tokenize)

  return hook
