"""Tests for dlresearch.data.text: tokenizers, packing, padding, arrays."""

import json

import numpy as np
import pytest

from dlresearch.data import text

CORPUS = [
    'To be, or not to be, that is the question:\n',
    'Whether tis nobler in the mind to suffer\n',
    'The slings and arrows of outrageous fortune,\n',
    'Or to take arms against a sea of troubles\n',
] * 3


def test_char_tokenizer_round_trip_and_ids():
  tok = text.CharTokenizer.build(['héllo', 'wörld\n', 'hello'])
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  chars = sorted(set('héllowörld\ne'))
  assert tok.chars == chars
  assert tok.vocab_size == 4 + len(chars)
  ids = tok.encode('hello')
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(
      ids, [4 + chars.index(c) for c in 'hello'])
  assert tok.decode(tok.encode('wörld\nhéllo')) == 'wörld\nhéllo'
  # Unseen characters map to unk and decode to the replacement character.
  np.testing.assert_array_equal(tok.encode('hz'), [4 + chars.index('h'), 1])
  assert tok.decode(tok.encode('hz')) == 'h\ufffd'
  # pad/bos/eos decode to nothing; stop_at_eos cuts at the first eos.
  ids = [2] + list(tok.encode('he')) + [3] + list(tok.encode('l')) + [0, 0]
  assert tok.decode(ids) == 'hel'
  assert tok.decode(ids, stop_at_eos=True) == 'he'
  with pytest.raises(ValueError, match='Ids must lie'):
    tok.decode([tok.vocab_size])


def test_char_tokenizer_save_load(tmp_path):
  tok = text.CharTokenizer.build(CORPUS)
  path = tok.save(tmp_path / 'sub' / 'chars.json')
  assert json.loads(path.read_text())['chars'] == tok.chars
  for loaded in (text.CharTokenizer.load(path), text.load_tokenizer(path)):
    assert isinstance(loaded, text.CharTokenizer)
    assert loaded.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(loaded.encode(CORPUS[0]),
                                  tok.encode(CORPUS[0]))
  (tmp_path / 'other.json').write_text('{"format": "x"}')
  with pytest.raises(ValueError, match='not a CharTokenizer'):
    text.CharTokenizer.load(tmp_path / 'other.json')


@pytest.mark.parametrize('kind,vocab_size', [('bpe', 300), ('unigram', 60)])
def test_subword_tokenizer_train_save_load(tmp_path, kind, vocab_size):
  tok = text.train_subword_tokenizer(CORPUS, vocab_size, tmp_path / 'tok',
                                     kind=kind)
  assert (tmp_path / 'tok' / 'tokenizer.json').is_file()
  assert 4 < tok.vocab_size <= vocab_size
  loaded = text.load_tokenizer(tmp_path / 'tok')
  assert isinstance(loaded, text.SubwordTokenizer)
  assert (loaded.pad_id, loaded.unk_id, loaded.bos_id, loaded.eos_id) == (
      0, 1, 2, 3)
  assert loaded.tokenizer.id_to_token(0) == '<pad>'
  assert loaded.tokenizer.id_to_token(3) == '<eos>'
  sentence = 'Or to take arms against a sea of troubles'
  ids = loaded.encode(sentence)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, tok.encode(sentence))
  # Subwords merge characters: fewer ids than characters, no special ids.
  assert 0 < ids.size < len(sentence)
  assert ids.min() >= 4
  assert loaded.decode(ids) == sentence
  batch = loaded.encode_batch([sentence, 'the mind'])
  np.testing.assert_array_equal(batch[0], ids)
  assert loaded.decode([2, *batch[1], 3, 0]) == 'the mind'


def test_byte_level_bpe_round_trips_unseen_text(tmp_path):
  tok = text.train_subword_tokenizer(CORPUS, 280, tmp_path)
  odd = '  Ünïcödé ✓\tand\n\nspaces  '
  ids = tok.encode(odd)
  assert text.UNK_ID not in ids
  assert tok.decode(ids) == odd


def test_subword_tokenizer_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match='vocab_size >= 260'):
    text.train_subword_tokenizer(CORPUS, 100, None)
  with pytest.raises(ValueError, match="kind must be 'bpe' or 'unigram'"):
    text.train_subword_tokenizer(CORPUS, 300, None, kind='wordpiece')
  with pytest.raises(FileNotFoundError, match='No tokenizer file'):
    text.SubwordTokenizer.load(tmp_path)


def test_pack_lm_shift():
  stream = np.arange(23)
  out = text.pack_lm(stream, seq_len=5)
  assert out['inputs'].shape == out['targets'].shape == (4, 5)
  assert out['inputs'].dtype == np.int32
  np.testing.assert_array_equal(out['inputs'][1], [5, 6, 7, 8, 9])
  np.testing.assert_array_equal(out['targets'][1], [6, 7, 8, 9, 10])
  np.testing.assert_array_equal(out['targets'][:, :-1], out['inputs'][:, 1:])
  np.testing.assert_array_equal(out['targets'][:-1, -1], out['inputs'][1:, 0])
  # 21 tokens fill 4 rows of 5 plus the final target exactly.
  assert text.pack_lm(np.arange(21), 5)['inputs'].shape == (4, 5)
  assert text.pack_lm(np.arange(20), 5)['inputs'].shape == (3, 5)
  with pytest.raises(ValueError, match='too few'):
    text.pack_lm(np.arange(5), 5)
  with pytest.raises(ValueError, match='1-D'):
    text.pack_lm(np.zeros((2, 8)), 3)


def test_pad_batch_mask_and_truncation():
  ids, mask = text.pad_batch([np.array([5, 6, 7]), np.array([8]),
                              np.array([], np.int32), np.arange(10, 16)],
                             max_len=4, pad_id=0)
  np.testing.assert_array_equal(
      ids, [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0], [10, 11, 12, 13]])
  np.testing.assert_array_equal(mask.sum(1), [3, 1, 0, 4])
  assert mask.dtype == bool and ids.dtype == np.int32
  np.testing.assert_array_equal(mask, ids != 0)


def test_bucket_by_length():
  lengths = [3, 12, 5, 30, 7, 11, 2, 25, 9, 40]
  batches = text.bucket_by_length(lengths, batch_size=2, boundaries=[8, 20])
  # Buckets: <8 -> [0, 2, 4, 6]; 8..19 -> [1, 5, 8]; >=20 -> [3, 7, 9].
  assert [b.tolist() for b in batches] == [[0, 2], [4, 6], [1, 5], [8],
                                           [3, 7], [9]]
  dropped = text.bucket_by_length(lengths, 2, [8, 20], drop_remainder=True)
  assert [b.tolist() for b in dropped] == [[0, 2], [4, 6], [1, 5], [3, 7]]
  rng = np.random.default_rng(0)
  shuffled = text.bucket_by_length(lengths, 2, [8, 20], rng=rng)
  assert sorted(np.concatenate(shuffled).tolist()) == list(range(10))
  bucket_of = lambda i: int(np.searchsorted([8, 20], lengths[i], 'right'))
  for b in shuffled:
    assert len({bucket_of(i) for i in b}) == 1
  again = text.bucket_by_length(lengths, 2, [8, 20],
                                rng=np.random.default_rng(0))
  assert [b.tolist() for b in again] == [b.tolist() for b in shuffled]


def test_lm_arrays_joins_documents_with_eos():
  tok = text.CharTokenizer.build(['abc'])
  out = text.lm_arrays(['ab', 'cab'], tok, seq_len=3)
  a, b, c, eos = (*tok.encode('abc'), tok.eos_id)
  # Stream: a b <eos> c a b <eos> -> 2 rows of 3.
  np.testing.assert_array_equal(out['inputs'], [[a, b, eos], [c, a, b]])
  np.testing.assert_array_equal(out['targets'], [[b, eos, c], [a, b, eos]])


def test_classification_arrays():
  tok = text.CharTokenizer.build(['good bad'])
  out = text.classification_arrays(['good', 'bad movie'], [1, 0], tok,
                                   max_len=5)
  assert set(out) == {'inputs', 'mask', 'label'}
  assert out['inputs'].shape == out['mask'].shape == (2, 5)
  np.testing.assert_array_equal(out['mask'].sum(1), [4, 5])
  assert tok.decode(out['inputs'][1]) == 'bad \ufffd'  # 'm' is unseen.
  np.testing.assert_array_equal(out['label'], [1, 0])
  with pytest.raises(ValueError, match='2 texts but 1 labels'):
    text.classification_arrays(['a', 'b'], [1], tok, 4)


def test_translation_arrays_alignment():
  src_tok = text.CharTokenizer.build(['one two'])
  tgt_tok = text.CharTokenizer.build(['eins zwei'])
  out = text.translation_arrays(['one', 'two'], ['eins', 'zwei'], src_tok,
                                max_len=6, target_tokenizer=tgt_tok,
                                max_target_len=4)
  assert out['inputs'].shape == (2, 6) and out['targets'].shape == (2, 4)
  o, n, e = src_tok.encode('one')
  np.testing.assert_array_equal(out['inputs'][0], [o, n, e, 3, 0, 0])
  np.testing.assert_array_equal(out['inputs_mask'][0], [1, 1, 1, 1, 0, 0])
  # Target 'eins' is 4 long: truncated alike in targets_in and targets.
  e, i, n, s = tgt_tok.encode('eins')
  np.testing.assert_array_equal(out['targets_in'][0], [2, e, i, n])
  np.testing.assert_array_equal(out['targets'][0], [e, i, n, s])
  np.testing.assert_array_equal(out['targets_in'][:, 1:],
                                out['targets'][:, :-1])
  assert out['targets_mask'].all()
  short = text.translation_arrays(['one'], ['eins'], src_tok, max_len=8,
                                  target_tokenizer=tgt_tok)
  np.testing.assert_array_equal(short['targets_in'][0],
                                [2, e, i, n, s, 0, 0, 0])
  np.testing.assert_array_equal(short['targets'][0], [e, i, n, s, 3, 0, 0, 0])
  np.testing.assert_array_equal(short['targets_mask'][0],
                                [1, 1, 1, 1, 1, 0, 0, 0])
  assert tgt_tok.decode(short['targets'][0], stop_at_eos=True) == 'eins'


def test_read_column_plain_sequence():
  source = [{'text': 'ä'.encode(), 'label': 1}, {'text': b'b', 'label': 0}]
  assert text.read_column(source, 'text') == ['ä', 'b']
  np.testing.assert_array_equal(text.read_column(source, 'label'), [1, 0])
  with pytest.raises(KeyError, match='the source has'):
    text.read_column(source, 'missing')
