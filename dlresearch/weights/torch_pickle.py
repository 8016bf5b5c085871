"""Read PyTorch state dicts (``torch.save`` files) without torch, and safely.

A ``.pt``/``.pth`` file is a pickle, and a pickle can name any Python
callable for the loader to call. ``load_state_dict`` unpickles with an
allow-list: the only globals a file may name are the few that tensors and
state dicts are made of (``collections.OrderedDict``, ``torch._utils``'s
``_rebuild_tensor*``/``_rebuild_parameter*``, the ``torch.*Storage`` types,
``torch.Size`` and the ``torch`` dtypes), each mapped to a small function
here that builds NumPy arrays; torch is never imported. Any other global
(``os.system``, ``builtins.eval``, ...) raises ``UnsafeWeightsError`` at the
moment the unpickler meets it, before it could be called.

Both of torch's on-disk formats are read:

- zip (``torch.save``'s default since 1.6): ``<dir>/data.pkl`` is the
  pickle, its persistent ids name storages stored as ``<dir>/data/<key>``.
- legacy (``_use_new_zipfile_serialization=False``, and older files): five
  pickles in a row -- the magic number, the protocol version, system info,
  the object itself, then the list of storage keys -- followed by each
  storage's bytes, prefixed by its element count as a little-endian int64.
"""

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from dlresearch.weights.errors import UnsafeWeightsError, WeightsError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Storage class -> element dtype (bfloat16 is read as uint16, then widened).
_STORAGE_DTYPES = {
    'FloatStorage': 'float32',
    'DoubleStorage': 'float64',
    'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16',
    'LongStorage': 'int64',
    'IntStorage': 'int32',
    'ShortStorage': 'int16',
    'CharStorage': 'int8',
    'ByteStorage': 'uint8',
    'BoolStorage': 'bool',
    'ComplexFloatStorage': 'complex64',
    'ComplexDoubleStorage': 'complex128',
}
# torch dtype attribute names (pickled as globals ``torch.<name>``).
_TORCH_DTYPES = {
    'float32': 'float32', 'float': 'float32', 'float64': 'float64',
    'double': 'float64', 'float16': 'float16', 'half': 'float16',
    'bfloat16': 'bfloat16', 'int64': 'int64', 'long': 'int64',
    'int32': 'int32', 'int': 'int32', 'int16': 'int16', 'short': 'int16',
    'int8': 'int8', 'uint8': 'uint8', 'bool': 'bool',
    'complex64': 'complex64', 'complex128': 'complex128',
}


def _raw_dtype(name: str) -> np.dtype:
  return np.dtype('<u2') if name == 'bfloat16' else np.dtype(name).newbyteorder(
      '<')


# The unpickler's own objects are frozen with slots, so a crafted BUILD opcode
# cannot change them after they were checked.
@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
  dtype: str  # a key of _TORCH_DTYPES' values, e.g. 'float32', 'bfloat16'.


@dataclasses.dataclass(frozen=True, slots=True)
class _DType:
  name: str


@dataclasses.dataclass(eq=False, slots=True)
class _Storage:
  """A storage named by the pickle; its bytes are attached after unpickling."""

  key: str
  dtype: str
  numel: int
  data: np.ndarray | None = None  # 1-D, raw dtype (uint16 for bfloat16).


@dataclasses.dataclass(frozen=True, eq=False, slots=True)
class _LazyTensor:
  storage: _Storage
  offset: int  # in elements of the storage, includes a legacy view's offset.
  size: tuple[int, ...]
  stride: tuple[int, ...]
  dtype: str


def _ints(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, int) and v >= 0 for v in value):
    raise WeightsError(f'bad tensor {what} {value!r}')
  return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args,
                    dtype: str | None = None):
  if isinstance(storage, tuple) and len(storage) == 2:  # legacy storage view
    storage, view_offset = storage
  else:
    view_offset = 0
  if (not isinstance(storage, _Storage) or not isinstance(storage_offset, int)
      or storage_offset < 0 or view_offset < 0):
    raise WeightsError(f'bad tensor storage {storage!r:.200}')
  size = _ints(size, 'size')
  stride = _ints(stride, 'stride')
  if len(size) != len(stride):
    raise WeightsError(f'tensor size {size} and stride {stride} differ in rank')
  return _LazyTensor(storage, view_offset + storage_offset, size, stride,
                     dtype or storage.dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, _DType):
    raise WeightsError(f'bad tensor dtype {dtype!r}')
  return _rebuild_tensor(storage, storage_offset, size, stride,
                         dtype=dtype.name)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None,
                       state=None):
  del requires_grad, backward_hooks, state
  return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
  allowed = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
      ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
      ('torch', 'Size'): tuple,
  }
  for name, dtype in _STORAGE_DTYPES.items():
    allowed['torch', name] = _StorageType(dtype)
  for name, dtype in _TORCH_DTYPES.items():
    allowed['torch', name] = _DType(dtype)
  return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals; storages are lazy."""

  def __init__(self, file: BinaryIO, path: str):
    super().__init__(file)
    self._path = path
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[module, name]
    except KeyError:
      raise UnsafeWeightsError(
          f'{self._path}: refusing to load: the pickle names the global '
          f'{module}.{name}, which is not one of the tensor-building '
          'functions a weights file may use (it could run code); nothing from '
          'the file was run') from None

  def persistent_load(self, pid: Any) -> Any:
    # ('storage', storage_type, key, location, numel[, view_metadata])
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6)
        or pid[0] != 'storage' or not isinstance(pid[1], _StorageType)
        or not isinstance(pid[2], str) or not isinstance(pid[4], int)):
      raise WeightsError(f'{self._path}: unexpected persistent id {pid!r:.200}')
    storage_type, key, numel = pid[1], pid[2], pid[4]
    storage = self.storages.get(key)
    if storage is None:
      storage = self.storages[key] = _Storage(key, storage_type.dtype, numel)
    view = pid[5] if len(pid) == 6 else None
    if view is not None:  # legacy view: (view_key, offset, view_size)
      if (not isinstance(view, tuple) or len(view) != 3
          or not isinstance(view[1], int)):
        raise WeightsError(f'{self._path}: bad storage view {view!r:.200}')
      return (storage, view[1])
    return storage


def _materialize(t: _LazyTensor, path: str) -> np.ndarray:
  data = t.storage.data
  if data is None:
    raise WeightsError(f'{path}: storage {t.storage.key} has no data')
  numel = int(np.prod(t.size, dtype=np.int64))
  if numel == 0:
    out = np.zeros(t.size, data.dtype)
  else:
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= data.size:
      raise WeightsError(
          f'{path}: a tensor of size {t.size}, stride {t.stride} at offset '
          f'{t.offset} reaches past its storage of {data.size} elements')
    contiguous = tuple(int(np.prod(t.size[i + 1:])) for i in range(len(t.size)))
    if all(s == c for n, s, c in zip(t.size, t.stride, contiguous) if n > 1):
      out = data[t.offset:t.offset + numel].reshape(t.size).copy()
    else:
      base = data[t.offset:]
      out = np.lib.stride_tricks.as_strided(
          base, shape=t.size,
          strides=tuple(s * data.itemsize for s in t.stride),
          writeable=False).copy()
  if t.dtype == 'bfloat16':
    return (out.astype(np.uint32) << 16).view(np.float32)
  return out.astype(out.dtype.newbyteorder('='))


def _replace_lazy(obj: Any, path: str) -> Any:
  if isinstance(obj, _LazyTensor):
    return _materialize(obj, path)
  if isinstance(obj, dict):
    return {k: _replace_lazy(v, path) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_replace_lazy(v, path) for v in obj)
  return obj


def _storage_array(storage: _Storage, raw: bytes, path: str,
                   big_endian: bool = False) -> np.ndarray:
  if (storage.dtype not in _TORCH_DTYPES.values()
      or not isinstance(storage.numel, int) or storage.numel < 0):
    raise WeightsError(f'{path}: bad storage {storage.key!r:.100}')
  dtype = _raw_dtype(storage.dtype)
  if big_endian:
    dtype = dtype.newbyteorder('>')
  if len(raw) < storage.numel * dtype.itemsize:
    raise WeightsError(
        f'{path}: storage {storage.key} holds {len(raw)} bytes, fewer than '
        f'{storage.numel} x {dtype.itemsize}')
  return np.frombuffer(raw, dtype, count=storage.numel)


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkls = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pkls) != 1:
      raise WeightsError(f'{path}: a torch zip file holds one <dir>/data.pkl; '
                         f'found {pkls or "none"}')
    prefix = pkls[0][:-len('data.pkl')]
    big_endian = (prefix + 'byteorder' in names
                  and z.read(prefix + 'byteorder').strip() == b'big')
    unpickler = _RestrictedUnpickler(io.BytesIO(z.read(pkls[0])), path)
    obj = unpickler.load()
    for key, storage in unpickler.storages.items():
      member = f'{prefix}data/{key}'
      if member not in names:
        raise WeightsError(f'{path}: storage {member} is missing')
      storage.data = _storage_array(storage, z.read(member), path, big_endian)
  return obj


def _load_legacy(path: str) -> Any:
  with open(path, 'rb') as f:
    def load_one():
      return _RestrictedUnpickler(f, path).load()

    if load_one() != _LEGACY_MAGIC:
      raise WeightsError(f'{path}: not a torch file (no zip archive and no '
                         'legacy magic number)')
    if load_one() != _LEGACY_PROTOCOL:
      raise WeightsError(f'{path}: unsupported legacy torch protocol')
    sys_info = load_one()
    big_endian = isinstance(sys_info, dict) and not sys_info.get(
        'little_endian', True)
    unpickler = _RestrictedUnpickler(f, path)
    obj = unpickler.load()
    keys = load_one()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise WeightsError(f'{path}: bad legacy storage key list')
    for key in keys:
      storage = unpickler.storages.get(key)
      if storage is None:
        raise WeightsError(f'{path}: storage {key} was never referenced')
      (numel,) = struct.unpack('<q', f.read(8))
      if numel != storage.numel:
        raise WeightsError(f'{path}: storage {key} has {numel} elements, the '
                           f'pickle said {storage.numel}')
      nbytes = numel * _raw_dtype(storage.dtype).itemsize
      storage.data = _storage_array(storage, f.read(nbytes), path, big_endian)
  return obj


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  for key, value in obj.items():
    name = f'{prefix}{key}'
    if isinstance(value, np.ndarray):
      out[name] = value
    elif isinstance(value, dict):
      _flatten(value, name + '.', out)


def load_object(path: str | os.PathLike) -> Any:
  """Unpickles a torch file safely; tensors become NumPy arrays."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightsError(f'{path}: no such file')
  try:
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except WeightsError:
    raise
  except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile,
          OSError, ValueError, TypeError, AttributeError, IndexError,
          KeyError) as e:
    raise WeightsError(f'{path}: not a readable torch file '
                       f'({type(e).__name__}: {e})'.replace('\n', ' ')) from e
  return _replace_lazy(obj, path)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch state dict: ``{name: np.ndarray}`` in torch's layout.

  Nested dicts (e.g. ``{'state_dict': {...}}``) are flattened with ``'.'``;
  entries that are not tensors are dropped. bfloat16 becomes float32.

  Raises:
    UnsafeWeightsError: the file names a global outside the allow-list.
    WeightsError: the file is missing, not a torch file, or holds no tensors.
  """
  obj = load_object(path)
  if not isinstance(obj, dict):
    raise WeightsError(f'{os.fspath(path)}: holds a {type(obj).__name__}, '
                       'not a state dict')
  out: dict[str, np.ndarray] = {}
  _flatten(obj, '', out)
  if not out:
    raise WeightsError(f'{os.fspath(path)}: holds no tensors')
  return out
