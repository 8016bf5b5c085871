"""Problem ``seq2seq``: translation of ``--source_key`` to ``--target_key``.

One tokenizer is built on both sides of train (``tasks.Seq2Seq``);
training pairs that do not fit ``--max_len`` are dropped; each eval, and
the test line at the end, adds BLEU/chrF/exact match of decoded
translations (``bleu.translation_hook``).
"""

from absl import logging

from dlresearch import problems, tasks
from dlresearch.evaluators import bleu
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline, text
from dlresearch.problems import text_inputs as inputs


@problems.register('seq2seq')
def seq2seq(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Source/target ids; the eval adds BLEU of the decoded translations.

  Training pairs whose source or target (with ``<eos>``) exceeds ``max_len``
  are dropped; eval pairs are kept (truncated), and BLEU is scored against
  the untouched reference text.
  """
  fields = ('source_key', 'target_key')
  splits = inputs.text_splits(cfg)
  train_cols = inputs.read_columns(
      cfg, inputs.open_source(cfg, splits.train), fields)
  tok = inputs.workdir_tokenizer(
      cfg, workdir, fresh,
      lambda: train_cols[cfg.source_key] + train_cols[cfg.target_key])
  n = cfg.max_len

  def decoded(split, filename):
    """A held-out split's ids (kept whole, truncated to ``max_len``) and the
    hook that decodes and scores it, writing ``WORKDIR/<filename>``."""
    cols = inputs.read_columns(cfg, inputs.open_source(cfg, split), fields)
    sources, references = cols[cfg.source_key], cols[cfg.target_key]
    arrays = text.translation_arrays(sources, references, tok, n)
    return (inputs.compact(arrays, tok.vocab_size),
            bleu.translation_hook(cfg, workdir, tok, arrays, sources, references,
                                  filename=filename))

  evals, eval_hook = decoded(splits.eval, bleu.TRANSLATIONS_FILE)
  train = text.translation_arrays(train_cols[cfg.source_key],
                                  train_cols[cfg.target_key], tok, n + 1)
  fits = ~train['inputs_mask'][:, n] & ~train['targets_mask'][:, n]
  logging.info('train: %d of %d pairs fit max_len=%d', fits.sum(), fits.size, n)
  if not fits.any():
    raise ConfigError('max_len', f'no training pair fits in {n} tokens')
  train = {k: v[fits, :n] for k, v in train.items()}
  task = tasks.Seq2Seq(label_smoothing=cfg.label_smoothing)
  sizes = problems.model_sizes(cfg, vocab_size=tok.vocab_size, max_len=n)
  test, test_hook = (decoded(splits.test, bleu.TEST_TRANSLATIONS_FILE)
                     if splits.test else (None, None))
  data = pipeline.Data(inputs.compact(train, tok.vocab_size), evals, task,
                       sizes, tokenizer=tok, eval_split=splits.eval, test=test,
                       test_split=splits.test or '')
  data.eval_hooks.append(eval_hook)
  if test_hook is not None:
    data.test_hooks.append(test_hook)
  return data
