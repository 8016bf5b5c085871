"""Problem ``hf_text_classification``: text tokenised for a pretrained encoder.

The text and labels are read as by ``text_classification`` (``--dataset``,
``--text_key``, ``--label_key``), but tokenised by a Hugging Face
``tokenizer.json`` (``--pretrained_tokenizer``; default: the ``hf:DIR`` of
``--init_from``), e.g. MiniLM's WordPiece: ``[CLS] tokens [SEP]``, cut to
``--max_len`` and right-padded with the tokenizer's pad id, plus the padding
mask. The same tokenizer serves a from-scratch run (``--init_from=``), so
both see the same inputs. A copy is kept as ``WORKDIR/hf_tokenizer.json``
(for ``experiments/predict.py``). The model gets ``vocab_size`` and
``num_classes``; its position table keeps its own size.
"""

import os
import pathlib
import shutil

import jax
import numpy as np
import tokenizers

from dlresearch import problems, tasks
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline
from dlresearch.problems import text_inputs as inputs

SAVED_TOKENIZER = 'hf_tokenizer.json'


def tokenizer_path(cfg: Config) -> pathlib.Path:
  """The ``tokenizer.json`` named by the config (see the module docstring)."""
  spec = cfg.pretrained_tokenizer
  if not spec and cfg.init_from.startswith('hf:'):
    spec = cfg.init_from[len('hf:'):]
  if not spec:
    raise ConfigError('pretrained_tokenizer', 'hf_text_classification needs a '
                      'tokenizer.json (or --init_from=hf:DIR)')
  path = pathlib.Path(os.path.expanduser(spec))
  if path.is_dir():
    path = path / 'tokenizer.json'
  if not path.is_file():
    raise ConfigError('pretrained_tokenizer', f'{path} does not exist')
  return path


def load_tokenizer(path: str | os.PathLike, max_len: int) -> tokenizers.Tokenizer:
  """The tokenizer, truncating to ``max_len`` and padding to it."""
  tok = tokenizers.Tokenizer.from_file(str(path))
  tok.enable_truncation(max_len)
  pad_id = tok.padding['pad_id'] if tok.padding else (tok.token_to_id('[PAD]')
                                                       or 0)
  tok.enable_padding(pad_id=pad_id, length=max_len)
  return tok


def encode(tok: tokenizers.Tokenizer, texts) -> dict[str, np.ndarray]:
  """``inputs`` int32 and ``mask`` bool, both ``[len(texts), max_len]``."""
  encs = tok.encode_batch(list(texts))
  return {'inputs': np.asarray([e.ids for e in encs], np.int32),
          'mask': np.asarray([e.attention_mask for e in encs], bool)}


@problems.register('hf_text_classification')
def hf_text_classification(cfg: Config, workdir: str,
                           fresh: bool) -> pipeline.Data:
  """Padded WordPiece ids, the padding mask and the label."""
  del fresh
  path = tokenizer_path(cfg)
  tok = load_tokenizer(path, cfg.max_len)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    shutil.copyfile(path, os.path.join(workdir, SAVED_TOKENIZER))
  fields = ('text_key', 'label_key')

  def arrays(split):
    cols = inputs.read_columns(cfg, inputs.open_source(cfg, split), fields)
    out = encode(tok, cols[cfg.text_key])
    out['label'] = np.asarray(cols[cfg.label_key], np.int32)
    return pipeline.ArrayDataset(out)

  splits = inputs.text_splits(cfg)
  train = arrays(splits.train)
  classes = inputs.num_classes(inputs.open_source(cfg, splits.train),
                               cfg.label_key, train.arrays['label'])
  task = tasks.Classification(input_key='inputs', label_key='label',
                              mask_key='mask', loss=cfg.loss,
                              label_smoothing=cfg.label_smoothing)
  sizes = problems.model_sizes(cfg, vocab_size=tok.get_vocab_size(),
                               num_classes=classes)
  return pipeline.Data(train, arrays(splits.eval), task, sizes,
                       eval_split=splits.eval,
                       test=arrays(splits.test) if splits.test else None,
                       test_split=splits.test or '')
