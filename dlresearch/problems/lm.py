"""Problem ``lm``: next-token prediction on packed rows of text.

The documents of ``--text_key`` are tokenised (the run's tokenizer,
``text_inputs.workdir_tokenizer``), each ended by ``<eos>``, and packed into
rows of ``--seq_len`` tokens (``tasks.LanguageModel``; ``bits_per_char``
with the char tokenizer, else ``bits_per_token``). ``--sample`` adds a
sampled continuation to each eval.
"""

from dlresearch import problems, tasks
from dlresearch.evaluators import samples
from dlresearch.config import Config
from dlresearch.data import pipeline, text
from dlresearch.problems import text_inputs as inputs


@problems.register('lm')
def lm(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Packed next-token rows; ``bits_per_char`` with the char tokenizer."""
  splits = inputs.text_splits(cfg)
  train_src = inputs.open_source(cfg, splits.train)
  train_texts = inputs.read_columns(cfg, train_src, ['text_key'])[cfg.text_key]
  tok = inputs.workdir_tokenizer(cfg, workdir, fresh, lambda: train_texts)

  def rows(split):
    source = inputs.open_source(cfg, split)
    texts = inputs.read_columns(cfg, source, ['text_key'])[cfg.text_key]
    return inputs.compact(text.lm_arrays(texts, tok, cfg.seq_len),
                          tok.vocab_size)

  train = inputs.compact(text.lm_arrays(train_texts, tok, cfg.seq_len),
                         tok.vocab_size)
  evals = rows(splits.eval)
  bits = 'bits_per_char' if cfg.tokenizer == 'char' else 'bits_per_token'
  task = tasks.LanguageModel(bits_name=bits, label_smoothing=cfg.label_smoothing)
  sizes = problems.model_sizes(cfg, vocab_size=tok.vocab_size,
                               max_len=cfg.seq_len)
  data = pipeline.Data(train, evals, task, sizes, tokenizer=tok,
                       eval_split=splits.eval,
                       test=rows(splits.test) if splits.test else None,
                       test_split=splits.test or '')
  if cfg.sample:
    data.eval_hooks.append(samples.sample_hook(cfg, tok, sizes.get('max_len')))
  return data
