"""Problem ``text_classification``: a label from a text.

The text of ``--text_key`` is tokenised by the run's tokenizer
(``text_inputs.workdir_tokenizer``), right-padded or cut to ``--max_len``,
with a padding mask and ``--label_key``'s label (``tasks.Classification``).
"""

from absl import logging
import numpy as np

from dlresearch import problems, tasks
from dlresearch.config import Config
from dlresearch.data import pipeline, text
from dlresearch.problems import text_inputs as inputs


@problems.register('text_classification')
def text_classification(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Padded (``max_len``) token ids, a padding mask and the label."""
  fields = ('text_key', 'label_key')
  splits = inputs.text_splits(cfg)
  train_src = inputs.open_source(cfg, splits.train)
  train_cols = inputs.read_columns(cfg, train_src, fields)
  tok = inputs.workdir_tokenizer(cfg, workdir, fresh,
                                 lambda: train_cols[cfg.text_key])
  classes = inputs.num_classes(train_src, cfg.label_key,
                               train_cols[cfg.label_key])

  def arrays(cols, name):
    out = text.classification_arrays(cols[cfg.text_key], cols[cfg.label_key],
                                     tok, cfg.max_len)
    logging.info('%s: %d examples, %.1f%% cut at max_len=%d', name,
                 len(out['label']), 100 * np.mean(out['mask'][:, -1]),
                 cfg.max_len)
    return inputs.compact(out, tok.vocab_size)

  def read(split):
    return arrays(inputs.read_columns(cfg, inputs.open_source(cfg, split),
                                      fields), split)

  task = tasks.Classification(input_key='inputs', label_key='label',
                              mask_key='mask', loss=cfg.loss,
                              label_smoothing=cfg.label_smoothing)
  sizes = problems.model_sizes(cfg, vocab_size=tok.vocab_size,
                               num_classes=classes, max_len=cfg.max_len)
  return pipeline.Data(
      arrays(train_cols, 'train'), read(splits.eval), task, sizes,
      tokenizer=tok, eval_split=splits.eval,
      test=read(splits.test) if splits.test else None,
      test_split=splits.test or '')
