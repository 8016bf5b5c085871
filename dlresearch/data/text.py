"""Text: tokenizers and the NumPy arrays that sequence models train on.

Two tokenizers share one interface (``Tokenizer``): ``CharTokenizer`` (one
id per character seen in a corpus) and ``SubwordTokenizer`` (a BPE or
Unigram model trained with the ``tokenizers`` package). Both reserve the same
special ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3. ``encode``
never adds special tokens; the array builders below add them where a task
needs them.

Array builders turn lists of strings into dicts of NumPy arrays for
``pipeline.ArrayDataset``:

- ``lm_arrays``: documents joined by ``<eos>`` into one stream, cut into
  rows; ``targets`` is ``inputs`` shifted left by one token.
- ``classification_arrays``: ``inputs`` padded/truncated to ``max_len``, a
  boolean ``mask`` (True on real tokens) and ``label``.
- ``translation_arrays``: encoder ``inputs`` (source + ``<eos>``), decoder
  ``targets_in`` (``<bos>`` + target) and ``targets`` (target + ``<eos>``),
  so ``targets_in[:, t + 1] == targets[:, t]``; each with a mask.

Texts read from TFDS Text features arrive as UTF-8 bytes; ``read_column``
reads one feature of a split and decodes them.

A run keeps its tokenizer in the workdir (``workdir_tokenizer``:
``char_tokenizer.json`` or ``tokenizer.json``), so token ids never change
under a checkpoint.
"""

import bisect
import json
import os
import pathlib
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

PAD, UNK, BOS, EOS = '<pad>', '<unk>', '<bos>', '<eos>'
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SUBWORD_FILE = 'tokenizer.json'
CHAR_FILE = 'char_tokenizer.json'
_CHAR_FORMAT = 'dlresearch.CharTokenizer'
_UNK_CHAR = '\ufffd'


class Tokenizer(Protocol):
  """What models and array builders need from a tokenizer."""

  vocab_size: int
  pad_id: int
  unk_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> np.ndarray:
    """int32 ids of ``text``, without special tokens."""

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """``encode`` of each text."""

  def decode(self, ids: Sequence[int] | np.ndarray,
             stop_at_eos: bool = False) -> str:
    """Text of ``ids``; pad/bos/eos are dropped (or cut at the first eos)."""

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes the tokenizer; returns the file written."""


class _SpecialIds:
  pad_id = PAD_ID
  unk_id = UNK_ID
  bos_id = BOS_ID
  eos_id = EOS_ID


def _cut(ids: Sequence[int] | np.ndarray, stop_at_eos: bool) -> np.ndarray:
  """1-D ids without pad/bos/eos (and without what follows the first eos)."""
  ids = np.asarray(ids, dtype=np.int64).reshape(-1)
  if stop_at_eos:
    hits = np.flatnonzero(ids == EOS_ID)
    if hits.size:
      ids = ids[:hits[0]]
  return ids[(ids != PAD_ID) & (ids != BOS_ID) & (ids != EOS_ID)]


def _codepoints(text: str) -> np.ndarray:
  return np.frombuffer(text.encode('utf-32-le', 'surrogatepass'),
                       dtype=np.uint32)


class CharTokenizer(_SpecialIds):
  """One id per character seen in a corpus; unseen characters map to unk.

  Ids: the 4 special tokens, then the characters in code point order.
  """

  def __init__(self, chars: Iterable[str]):
    chars = sorted(set(chars))
    if any(len(c) != 1 for c in chars):
      raise ValueError('CharTokenizer chars must be single characters.')
    self.chars = chars
    self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)
    # Decoded text of each id: specials other than unk decode to nothing.
    self._table = np.array(['', _UNK_CHAR, '', ''] + chars, dtype=object)
    self.vocab_size = len(SPECIAL_TOKENS) + len(chars)

  @classmethod
  def build(cls, texts: Iterable[str]) -> 'CharTokenizer':
    """A tokenizer with an id for every character in ``texts``."""
    codes = [np.unique(_codepoints(t)) for t in texts]
    if not codes:
      raise ValueError('CharTokenizer.build needs at least one text.')
    return cls(chr(c) for c in np.unique(np.concatenate(codes)))

  def encode(self, text: str) -> np.ndarray:
    codes = _codepoints(text)
    if not self._codes.size:
      return np.full(codes.shape, UNK_ID, np.int32)
    pos = np.searchsorted(self._codes, codes)
    pos_c = np.minimum(pos, self._codes.size - 1)
    known = self._codes[pos_c] == codes
    return np.where(known, pos_c + len(SPECIAL_TOKENS), UNK_ID).astype(
        np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Sequence[int] | np.ndarray,
             stop_at_eos: bool = False) -> str:
    ids = _cut(ids, stop_at_eos)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f'Ids must lie in [0, {self.vocab_size}).')
    return ''.join(self._table[ids])

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes the tokenizer as JSON to the file ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {'format': _CHAR_FORMAT, 'special_tokens': list(SPECIAL_TOKENS),
         'chars': self.chars}, ensure_ascii=False))
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> 'CharTokenizer':
    data = json.loads(pathlib.Path(path).read_text())
    if data.get('format') != _CHAR_FORMAT:
      raise ValueError(f'{path} is not a CharTokenizer file.')
    if tuple(data['special_tokens']) != SPECIAL_TOKENS:
      raise ValueError(f'{path} has special tokens {data["special_tokens"]}, '
                       f'expected {list(SPECIAL_TOKENS)}.')
    return cls(data['chars'])


class SubwordTokenizer(_SpecialIds):
  """A ``tokenizers.Tokenizer`` with dlresearch's special ids."""

  def __init__(self, tokenizer: Any):
    for token, want in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS))):
      got = tokenizer.token_to_id(token)
      if got != want:
        raise ValueError(f'Tokenizer maps {token} to {got}, expected {want}; '
                         'train it with train_subword_tokenizer.')
    self.tokenizer = tokenizer
    self.vocab_size = tokenizer.get_vocab_size()

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(
        self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encs]

  def decode(self, ids: Sequence[int] | np.ndarray,
             stop_at_eos: bool = False) -> str:
    return self.tokenizer.decode(_cut(ids, stop_at_eos).tolist(),
                                 skip_special_tokens=False)

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes ``path/tokenizer.json`` (``path`` is a directory)."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    self.tokenizer.save(str(path / SUBWORD_FILE))
    return path / SUBWORD_FILE

  @classmethod
  def load(cls, path: str | os.PathLike) -> 'SubwordTokenizer':
    """Loads ``path/tokenizer.json`` (or ``path`` if it is the file)."""
    path = pathlib.Path(path)
    if path.is_dir():
      path = path / SUBWORD_FILE
    if not path.is_file():
      raise FileNotFoundError(f'No tokenizer file at {path}.')
    return cls(tokenizers.Tokenizer.from_file(str(path)))


def train_subword_tokenizer(texts: Iterable[str], vocab_size: int,
                            path: str | os.PathLike | None = None,
                            kind: str = 'bpe') -> SubwordTokenizer:
  """Trains a subword tokenizer on ``texts`` and saves it under ``path``.

  Args:
    texts: the training corpus.
    vocab_size: the vocabulary size, special tokens included.
    path: directory for ``tokenizer.json``; None skips saving.
    kind: ``'bpe'``: byte-level BPE (any text round-trips exactly, no unk;
      vocab_size must be at least 260 = 4 specials + 256 bytes), or
      ``'unigram'``: Unigram LM over words split at whitespace (Metaspace,
      as in SentencePiece; runs of spaces are not kept exactly).

  Returns:
    The trained tokenizer.
  """
  specials = list(SPECIAL_TOKENS)
  if kind == 'bpe':
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(alphabet):
      raise ValueError(f'Byte-level BPE needs vocab_size >= '
                       f'{len(specials) + len(alphabet)}; got {vocab_size}.')
    tok = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=alphabet, show_progress=False)
  elif kind == 'unigram':
    if vocab_size <= len(specials):
      raise ValueError(f'vocab_size must exceed {len(specials)}; got '
                       f'{vocab_size}.')
    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=UNK,
        show_progress=False)
  else:
    raise ValueError(f"kind must be 'bpe' or 'unigram'; got {kind!r}.")
  tok.train_from_iterator(texts, trainer=trainer)
  result = SubwordTokenizer(tok)
  if path is not None:
    result.save(path)
  return result


def load_tokenizer(path: str | os.PathLike) -> CharTokenizer | SubwordTokenizer:
  """Loads either tokenizer from what its ``save`` wrote."""
  path = pathlib.Path(path)
  if path.is_dir() or path.name == SUBWORD_FILE:
    return SubwordTokenizer.load(path)
  return CharTokenizer.load(path)


def pack_lm(token_ids: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  """Cuts a 1-D token stream into next-token rows.

  Returns ``inputs`` and ``targets`` of shape ``[N, seq_len]`` with
  ``N = (len(token_ids) - 1) // seq_len`` and
  ``targets[i, t] == token_ids[i * seq_len + t + 1]``; the tail that does not
  fill a row is dropped.
  """
  token_ids = np.asarray(token_ids)
  if token_ids.ndim != 1:
    raise ValueError(f'token_ids must be 1-D; got shape {token_ids.shape}.')
  if seq_len < 1:
    raise ValueError(f'seq_len must be positive; got {seq_len}.')
  n = (token_ids.size - 1) // seq_len
  if n < 1:
    raise ValueError(f'{token_ids.size} tokens are too few for one row of '
                     f'seq_len={seq_len} (need {seq_len + 1}).')
  stop = n * seq_len
  return {'inputs': token_ids[:stop].reshape(n, seq_len).astype(np.int32),
          'targets': token_ids[1:stop + 1].reshape(n, seq_len).astype(
              np.int32)}


def pad_batch(sequences: Sequence[np.ndarray], max_len: int,
              pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads (and truncates) sequences to ``[B, max_len]``.

  Returns int32 ids and a bool mask that is True on real tokens.
  """
  if max_len < 1:
    raise ValueError(f'max_len must be positive; got {max_len}.')
  ids = np.full((len(sequences), max_len), pad_id, np.int32)
  mask = np.zeros((len(sequences), max_len), bool)
  for i, seq in enumerate(sequences):
    seq = np.asarray(seq)[:max_len]
    ids[i, :seq.size] = seq
    mask[i, :seq.size] = True
  return ids, mask


def bucket_by_length(lengths: Sequence[int], batch_size: int,
                     boundaries: Sequence[int],
                     rng: np.random.Generator | None = None,
                     drop_remainder: bool = False) -> list[np.ndarray]:
  """Batches of indices whose lengths fall in the same bucket.

  Bucket ``k`` holds lengths in ``[boundaries[k-1], boundaries[k])`` (the
  first from 0, the last unbounded). With ``rng``, indices are shuffled within
  buckets and the batches are shuffled; without, both keep index order. A
  bucket's last partial batch is kept unless ``drop_remainder``.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive; got {batch_size}.')
  if list(boundaries) != sorted(boundaries):
    raise ValueError(f'boundaries must be increasing; got {boundaries}.')
  buckets = [[] for _ in range(len(boundaries) + 1)]
  for i, length in enumerate(lengths):
    buckets[bisect.bisect_right(boundaries, length)].append(i)
  batches = []
  for bucket in buckets:
    idx = np.asarray(bucket, np.int64)
    if rng is not None:
      idx = rng.permutation(idx)
    for start in range(0, idx.size, batch_size):
      chunk = idx[start:start + batch_size]
      if chunk.size == batch_size or (chunk.size and not drop_remainder):
        batches.append(chunk)
  if rng is not None:
    batches = [batches[i] for i in rng.permutation(len(batches))]
  return batches


def lm_arrays(texts: Sequence[str], tokenizer: Tokenizer, seq_len: int,
              add_eos: bool = True) -> dict[str, np.ndarray]:
  """``pack_lm`` over the texts' tokens, each text followed by ``<eos>``."""
  parts = []
  for ids in tokenizer.encode_batch(list(texts)):
    parts.append(ids)
    if add_eos:
      parts.append(np.array([tokenizer.eos_id], np.int32))
  if not parts:
    raise ValueError('lm_arrays needs at least one text.')
  return pack_lm(np.concatenate(parts), seq_len)


def classification_arrays(texts: Sequence[str], labels: Sequence[int],
                          tokenizer: Tokenizer,
                          max_len: int) -> dict[str, np.ndarray]:
  """``inputs`` [B, max_len], ``mask`` [B, max_len] and ``label`` [B]."""
  if len(texts) != len(labels):
    raise ValueError(f'{len(texts)} texts but {len(labels)} labels.')
  inputs, mask = pad_batch(tokenizer.encode_batch(list(texts)), max_len,
                           tokenizer.pad_id)
  return {'inputs': inputs, 'mask': mask,
          'label': np.asarray(labels, np.int32)}


def translation_arrays(
    src_texts: Sequence[str], tgt_texts: Sequence[str], tokenizer: Tokenizer,
    max_len: int, target_tokenizer: Tokenizer | None = None,
    max_target_len: int | None = None) -> dict[str, np.ndarray]:
  """Encoder/decoder arrays for teacher-forced sequence-to-sequence training.

  Args:
    src_texts: source sentences.
    tgt_texts: target sentences, aligned with ``src_texts``.
    tokenizer: tokenizer of the source (and of the target by default).
    max_len: source length; also the target length by default.
    target_tokenizer: tokenizer of the target, if different.
    max_target_len: target length, if different.

  Returns:
    ``inputs``, ``inputs_mask`` [B, max_len]: source + eos.
    ``targets_in``, ``targets``, ``targets_mask`` [B, max_target_len]:
    bos + target and target + eos (truncated alike, so they stay aligned);
    the mask is True on real ``targets`` tokens.
  """
  if len(src_texts) != len(tgt_texts):
    raise ValueError(f'{len(src_texts)} source but {len(tgt_texts)} target '
                     'texts.')
  tgt_tok = target_tokenizer or tokenizer
  max_target_len = max_target_len or max_len
  eos = np.array([tokenizer.eos_id], np.int32)
  src = [np.concatenate([s, eos]) for s in tokenizer.encode_batch(
      list(src_texts))]
  tgt = tgt_tok.encode_batch(list(tgt_texts))
  bos_t = np.array([tgt_tok.bos_id], np.int32)
  eos_t = np.array([tgt_tok.eos_id], np.int32)
  inputs, inputs_mask = pad_batch(src, max_len, tokenizer.pad_id)
  targets_in, _ = pad_batch([np.concatenate([bos_t, t]) for t in tgt],
                            max_target_len, tgt_tok.pad_id)
  targets, targets_mask = pad_batch([np.concatenate([t, eos_t]) for t in tgt],
                                    max_target_len, tgt_tok.pad_id)
  return {'inputs': inputs, 'inputs_mask': inputs_mask,
          'targets_in': targets_in, 'targets': targets,
          'targets_mask': targets_mask}


def _read_scalar_feature(source: Any, key: str) -> list[Any] | None:
  """Fast path of ``read_column`` for a tfds ArrayRecord source.

  Parses only ``key`` out of the raw records (about 10x faster than decoding
  whole examples). Returns None where it does not apply: a non-tfds source,
  custom decoders, or a feature that is not a scalar Text/ClassLabel/Scalar.
  """
  info = getattr(source, 'dataset_info', None)
  raw = getattr(source, 'data_source', None)
  if info is None or raw is None or getattr(source, 'decoders', None):
    return None
  # tfds is imported here only: the rest of this module does not need it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets import proto  # pylint: disable=g-import-not-at-top
  if (getattr(source, 'deserialize_method', None)
      != tfds.decode.DeserializeMethod.DESERIALIZE_AND_DECODE):
    return None
  features = info.features
  if key not in features:
    raise KeyError(f'No feature {key!r}; the source has {sorted(features)}.')
  feature = features[key]
  simple = (tfds.features.Text, tfds.features.ClassLabel,
            tfds.features.Scalar)
  exact_type = type(feature) in simple  # Not subclasses (e.g. Sequence).
  if (not exact_type or feature.shape != ()
      or getattr(feature, 'encoder', None) is not None):
    return None
  try:
    records = raw.__getitems__(list(range(len(raw))))
  except TypeError:  # e.g. tfds.testing.mock_data's sources: use the slow path
    return None
  values = []
  for record in records:
    example = proto.tf_example_pb2.Example.FromString(record)
    value = example.features.feature[key]
    values.append(getattr(value, value.WhichOneof('kind')).value[0])
  return values


def read_column(source: Any, key: str,
                chunk: int = 4096) -> list[str] | np.ndarray:
  """Feature ``key`` of every example of a random-access source.

  ``source`` is e.g. ``tfds.data_source(name, split=...)`` or any sequence of
  dicts. Bytes (tfds Text) are decoded as UTF-8 into a list of str; other
  values are stacked into a NumPy array.
  """
  values = _read_scalar_feature(source, key)
  if values is None:
    values = []
    n = len(source)
    for start in range(0, n, chunk):
      keys = list(range(start, min(start + chunk, n)))
      try:
        examples = source.__getitems__(keys)
      except (AttributeError, TypeError):  # no batch read (or mock_data's)
        examples = [source[i] for i in keys]
      try:
        values.extend(ex[key] for ex in examples)
      except KeyError as e:
        raise KeyError(f'No feature {key!r}; the source has '
                       f'{sorted(examples[0])}.') from e
  if values and isinstance(values[0], bytes):
    return [v.decode('utf-8') for v in values]
  if values and isinstance(values[0], str):
    return list(values)
  return np.asarray(values)


# ---------------------------------------------------------------------------
# The tokenizer a run keeps in its workdir.


def tokenizer_file(directory: str | os.PathLike, kind: str) -> pathlib.Path:
  """Where a workdir keeps a tokenizer of ``kind`` (char, bpe, unigram)."""
  return pathlib.Path(directory) / (CHAR_FILE if kind == 'char' else SUBWORD_FILE)


def saved_kind(path: pathlib.Path) -> str:
  """The kind (char, bpe, unigram) of a saved tokenizer."""
  tok = load_tokenizer(path)
  if isinstance(tok, CharTokenizer):
    return 'char'
  return 'unigram' if type(tok.tokenizer.model).__name__ == 'Unigram' else 'bpe'


def find_saved_tokenizer(path: str | os.PathLike) -> pathlib.Path | None:
  """A saved tokenizer in ``path`` or up to two directories above it.

  (``path`` may be a workdir, its checkpoints/ or one checkpoint step.)
  """
  path = pathlib.Path(os.path.expanduser(str(path))).absolute()
  for directory in (path, path.parent, path.parent.parent):
    for name in (CHAR_FILE, SUBWORD_FILE):
      if (directory / name).is_file():
        return directory / name
  return None


def build_tokenizer(kind: str, vocab_size: int, texts: Sequence[str]):
  """A fresh tokenizer of ``kind`` trained on ``texts``."""
  if kind == 'char':
    return CharTokenizer.build(texts)
  return train_subword_tokenizer(texts, vocab_size, kind=kind)


def _write_atomic(tok, path: pathlib.Path) -> None:
  tmp = path.parent / (path.name + '.tmp')
  if isinstance(tok, CharTokenizer):
    tok.save(tmp)
  else:
    tok.tokenizer.save(str(tmp))
  os.replace(tmp, path)
