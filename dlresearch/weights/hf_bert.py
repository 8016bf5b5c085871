"""Hugging Face BERT-family encoders as sentence embedders (sentence-transformers).

``load_encoder(dir)`` reads a model directory (``config.json``,
``model.safetensors``, ``tokenizer.json``, and if present
``sentence_bert_config.json``) into our ``BERT``
(``dlresearch.models.transformer``) with converted weights and the
directory's WordPiece tokenizer. ``Encoder.embed(texts)`` gives
sentence-transformers' embeddings: the final hidden states averaged over
real tokens (attention-mask weighted), then L2-normalised::

  enc = load_encoder(fetch.fetch('minilm_l6'))  # all-MiniLM-L6-v2
  e = enc.embed(['A man plays a guitar.', 'Someone plays an instrument.'])
  similarity = e @ e.T
"""

import functools
import json
import os
import pathlib
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from dlresearch.models.transformer import BERT
from dlresearch.weights import convert
from dlresearch.weights import read
from dlresearch.weights.errors import WeightsError

_ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh',
                'gelu_pytorch_tanh': 'gelu_tanh', 'relu': 'relu'}


def model_from_config(config: dict[str, Any], dtype: Any = jnp.float32) -> BERT:
  """Our ``BERT`` (no head, as HF ``BertModel``) for an HF ``config.json``."""
  if config.get('position_embedding_type', 'absolute') != 'absolute':
    raise WeightsError('only absolute position embeddings are supported; got '
                       f'{config["position_embedding_type"]!r}')
  act = config.get('hidden_act', 'gelu')
  if act not in _ACTIVATIONS:
    raise WeightsError(f'unsupported hidden_act {act!r}; supported: '
                       f'{", ".join(_ACTIVATIONS)}')
  try:
    return BERT(
        num_classes=None,
        vocab_size=config['vocab_size'],
        hidden_size=config['hidden_size'],
        num_layers=config['num_hidden_layers'],
        num_heads=config['num_attention_heads'],
        mlp_dim=config['intermediate_size'],
        max_len=config['max_position_embeddings'],
        type_vocab_size=config.get('type_vocab_size', 2),
        dropout_rate=config.get('hidden_dropout_prob', 0.1),
        attention_dropout_rate=config.get('attention_probs_dropout_prob', 0.1),
        norm_first=False,
        activation=_ACTIVATIONS[act],
        layer_norm_epsilon=config.get('layer_norm_eps', 1e-12),
        dtype=dtype,
    )
  except KeyError as e:
    raise WeightsError(f'config.json lacks {e}') from None


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mask-weighted mean over tokens, L2-normalised (sentence-transformers)."""
  m = jnp.asarray(mask, hidden.dtype)[..., None]
  pooled = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


@functools.partial(jax.jit, static_argnums=0)
def _embed_batch(model, variables, tokens, mask, token_types):
  _, feats = model.apply(variables, tokens, mask=mask,
                         token_type_ids=token_types, return_features=True)
  return mean_pool(feats['sequence_output'], mask)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class Encoder(NamedTuple):
  """A loaded encoder; unpacks as ``(model, variables, tokenizer, config)``."""

  model: BERT
  variables: dict[str, Any]
  tokenizer: tokenizers.Tokenizer
  config: dict[str, Any]

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, ...]:
    """``(tokens, mask, token_types)`` int32 ``[N, T]``, T a multiple of 16."""
    encodings = self.tokenizer.encode_batch(list(texts))
    length = _round_up(max([len(e.ids) for e in encodings] + [1]), 16)
    out = np.zeros((3, len(encodings), length), np.int32)
    for i, e in enumerate(encodings):
      n = len(e.ids)
      out[0, i, :n], out[1, i, :n], out[2, i, :n] = (
          e.ids, e.attention_mask, e.type_ids)
    return out[0], out[1], out[2]

  def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Unit-norm sentence embeddings ``[len(texts), hidden]`` (float32)."""
    if isinstance(texts, str):
      raise TypeError('embed takes a sequence of texts, not one string')
    tokens, mask, types = self.tokenize(texts)
    out = []
    for start in range(0, len(texts), batch_size):
      part = slice(start, start + batch_size)
      n = len(tokens[part])
      rows = _round_up(n, 8)  # few shapes, so few compilations.
      pad = lambda a: np.pad(a[part], ((0, rows - n), (0, 0)))
      emb = _embed_batch(self.model, self.variables, pad(tokens), pad(mask),
                         pad(types))
      out.append(np.asarray(emb[:n], np.float32))
    return np.concatenate(out) if out else np.zeros(
        (0, self.model.hidden_size), np.float32)


def load_encoder(directory: str | os.PathLike) -> Encoder:
  """Loads an HF BERT-family model directory as an ``Encoder``.

  The tokenizer truncates to ``sentence_bert_config.json``'s
  ``max_seq_length`` when present (as sentence-transformers does), else to
  the model's position limit; padding is done here, per batch.
  """
  d = pathlib.Path(directory).expanduser()
  state = read(f'hf:{d}')
  try:
    config = json.loads((d / 'config.json').read_text())
  except ValueError as e:
    raise WeightsError(f'{d / "config.json"}: not valid JSON ({e})') from e
  model = model_from_config(config)
  variables = jax.tree.map(jnp.asarray, convert.bert(state, model))
  if not (d / 'tokenizer.json').is_file():
    raise WeightsError(f'{d}: no tokenizer.json')
  tokenizer = tokenizers.Tokenizer.from_file(str(d / 'tokenizer.json'))
  max_length = config['max_position_embeddings']
  st_config = d / 'sentence_bert_config.json'
  if st_config.is_file():
    max_length = min(max_length,
                     json.loads(st_config.read_text()).get('max_seq_length',
                                                          max_length))
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length)
  return Encoder(model, variables, tokenizer, config)


def embed(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
  """``encoder.embed(texts)``."""
  return encoder.embed(texts)
