"""Read a safetensors file into NumPy arrays, checking its header first.

The format: an 8-byte little-endian header length ``N``, ``N`` bytes of
JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}``
(plus an optional ``"__metadata__"`` of strings), then the data buffer, which
the tensors must cover exactly, in any order, without overlapping.

Everything declared is checked against the file before anything is
allocated: the header length against the file (and ``MAX_HEADER``), each
dtype against the known ones, each shape's element count times the dtype's
size against its offsets, the offsets against the buffer, and the tensors
against each other. Each array is then allocated at its checked size and
filled from the file, so memory is bounded by the file's size (twice that
for bfloat16, which is widened to float32 as in ``torch_pickle``). Every
refusal is a one-line ``WeightsError`` naming the file and the reason.
"""

import json
import os
import struct

import numpy as np

from dlresearch.weights.errors import WeightsError

MAX_HEADER = 100_000_000  # bytes; the safetensors library's own limit
_DTYPES = {
    'BOOL': np.dtype('bool'), 'U8': np.dtype('u1'), 'I8': np.dtype('i1'),
    'I16': np.dtype('<i2'), 'U16': np.dtype('<u2'), 'F16': np.dtype('<f2'),
    'BF16': np.dtype('<u2'), 'I32': np.dtype('<i4'), 'U32': np.dtype('<u4'),
    'F32': np.dtype('<f4'), 'F64': np.dtype('<f8'), 'I64': np.dtype('<i8'),
    'U64': np.dtype('<u8'),
}
_MAX_RANK = 32


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _entries(header: dict, buffer: int) -> list[tuple[str, str, tuple, int, int]]:
  """(name, dtype, shape, begin, end) for each tensor, all checked."""
  entries = []
  for name, spec in header.items():
    if name == '__metadata__':
      if not isinstance(spec, dict) or not all(
          isinstance(v, str) for v in spec.values()):
        raise WeightsError('__metadata__ is not a dict of strings')
      continue
    if not isinstance(spec, dict) or set(spec) != {
        'dtype', 'shape', 'data_offsets'}:
      raise WeightsError(f'tensor {name[:100]!r} lacks dtype, shape and '
                         'data_offsets (or has other keys)')
    dtype, shape, offsets = spec['dtype'], spec['shape'], spec['data_offsets']
    if not isinstance(dtype, str) or dtype not in _DTYPES:
      raise WeightsError(f'tensor {name[:100]!r} has the unsupported dtype '
                         f'{str(dtype)[:20]!r}; supported: '
                         f'{", ".join(_DTYPES)}')
    if (not isinstance(shape, list) or len(shape) > _MAX_RANK
        or not all(_is_int(n) and n >= 0 for n in shape)):
      raise WeightsError(f'tensor {name[:100]!r} has a bad shape')
    if (not isinstance(offsets, list) or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= buffer):
      raise WeightsError(f'tensor {name[:100]!r} has data_offsets outside the '
                         f'{buffer}-byte data buffer')
    numel = 1
    for n in shape:
      numel *= n
    if numel * _DTYPES[dtype].itemsize != offsets[1] - offsets[0]:
      raise WeightsError(
          f'tensor {name[:100]!r}: shape {tuple(shape)} of {dtype} takes '
          f'{numel * _DTYPES[dtype].itemsize} bytes, its offsets span '
          f'{offsets[1] - offsets[0]}')
    entries.append((name, dtype, tuple(shape), offsets[0], offsets[1]))
  end = 0
  for name, _, _, begin, stop in sorted(entries, key=lambda e: (e[3], e[4])):
    if begin != end:
      raise WeightsError(
          f'tensor {name[:100]!r} starts at byte {begin} of the data buffer, '
          f'not at {end} where the previous one ended (overlap or gap)')
    end = stop
  if end != buffer:
    raise WeightsError(f'the tensors cover {end} of the {buffer}-byte data '
                       'buffer')
  return entries


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a safetensors file; bfloat16 becomes float32.

  Raises:
    WeightsError: the file is missing, or anything in it is refused.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightsError(f'{path}: no such file')
  try:
    disk = os.path.getsize(path)
    with open(path, 'rb') as f:
      head = f.read(8)
      if len(head) != 8:
        raise WeightsError(f'a file of {disk} bytes has no header length')
      (n,) = struct.unpack('<Q', head)
      if n > min(MAX_HEADER, disk - 8):
        raise WeightsError(f'the header length {n} is more than the '
                           f'{disk - 8} bytes after it (or {MAX_HEADER})')
      header = json.loads(f.read(n))
      if not isinstance(header, dict):
        raise WeightsError('the header is not a JSON object')
      entries = _entries(header, disk - 8 - n)
      out = {}
      for name, dtype, shape, begin, _ in entries:
        array = np.empty(shape, _DTYPES[dtype].newbyteorder('='))
        f.seek(8 + n + begin)
        if f.readinto(memoryview(array.reshape(-1).view(np.uint8))
                      ) != array.nbytes:
          raise WeightsError(f'tensor {name[:100]!r} is cut short')
        if _DTYPES[dtype].byteorder == '<' and not np.little_endian:
          array = array.byteswap()
        if dtype == 'BF16':
          array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array
      return out
  except WeightsError as e:
    message = ' '.join(str(e).splitlines())
    raise WeightsError(f'{path}: not a readable safetensors file ({message})'
                       ) from None
  except (ValueError, RecursionError, UnicodeDecodeError, OSError,
          MemoryError, struct.error) as e:  # json errors are ValueErrors
    reason = ' '.join(f'{type(e).__name__}: {e}'.splitlines())
    raise WeightsError(f'{path}: not a readable safetensors file '
                       f'({reason:.300})') from None
