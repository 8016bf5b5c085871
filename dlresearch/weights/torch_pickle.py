"""Read PyTorch state dicts (``torch.save`` files) without torch, and safely.

A ``.pt``/``.pth`` file is a pickle, and a pickle can name any Python
callable for the loader to call. ``load_state_dict`` runs the pickle on a
small interpreter of its own (the standard library's pure-Python opcode
handlers, with the dangerous ones removed or replaced) that builds plain
values only:

- The only globals a file may name are the few that tensors and state dicts
  are made of (``collections.OrderedDict``, ``torch._utils``'s
  ``_rebuild_tensor*``/``_rebuild_parameter*``, the ``torch.*Storage`` types,
  ``torch.Size`` and the ``torch`` dtypes), each mapped to a small function
  or frozen record here; torch is never imported. Any other global
  (``os.system``, ``builtins.eval``, ...) raises ``UnsafeWeightsError`` the
  moment the interpreter meets it, before it could be called.
- ``REDUCE`` calls only those functions, with the argument types they take;
  ``BUILD`` (which would set attributes) is ignored on a dict, the one place
  torch writes it (a state dict's ``_metadata``), and refused elsewhere;
  ``NEWOBJ``, ``INST``, ``OBJ``, the extension registry and out-of-band
  buffers are refused. Dict and set keys are scalars or flat tuples.
- The object it built is then walked without recursion: more than
  ``MAX_DEPTH`` levels, a container that contains itself, or more expanded
  nodes than the pickle's size allows (shared references multiplying, the
  "billion laughs" pattern) are refused.
- Every storage's element count and every tensor's offset, size and stride
  are checked against the bytes the file really holds, with exact integer
  arithmetic, before anything is allocated; zero and negative strides are
  accepted where every element stays inside the storage. Zip members are
  checked against the central directory (sizes, and their CRC when read).
- The total bytes the tensors expand to may be at most ``max_expansion``
  times the file's size on disk (default ``DEFAULT_MAX_EXPANSION``;
  override with the ``max_expansion`` argument or the
  ``DLRESEARCH_WEIGHTS_MAX_EXPANSION`` environment variable).

Every refusal is a ``WeightsError`` (``UnsafeWeightsError`` for a global)
whose one-line message names the file and the reason.

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
import math
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from dlresearch.weights.errors import UnsafeWeightsError, WeightsError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Tensors may expand to at most this many times the file's size on disk
# (views of one storage, bfloat16 widened to float32); see load_object.
DEFAULT_MAX_EXPANSION = 4.0
EXPANSION_ENV = 'DLRESEARCH_WEIGHTS_MAX_EXPANSION'
MAX_DEPTH = 100  # nesting of dicts/lists/tuples in the pickled object
_MAX_RANK = 32
_MAX_INT = 2**62  # any size, stride, offset or element count

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


def _out_itemsize(name: str) -> int:
  return 4 if name == 'bfloat16' else _raw_dtype(name).itemsize


def _describe(value: Any) -> str:
  """A short description that never recurses into the value."""
  if value is None or isinstance(value, (bool, int, float)):
    return f'{value!r:.60}'
  if isinstance(value, (str, bytes)):
    return f'{value[:60]!r}'
  return f'a {type(value).__name__}'


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


# The interpreter's own records are frozen with slots, and BUILD is refused on
# them, so a file cannot change them after they were checked.
@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
  dtype: str  # a key of _TORCH_DTYPES' values, e.g. 'float32', 'bfloat16'.


@dataclasses.dataclass(frozen=True, slots=True)
class _DType:
  name: str


@dataclasses.dataclass(eq=False, slots=True)
class _Storage:
  """A storage named by the pickle; its bytes are attached after checking."""

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


def _ints(value: Any, what: str, low: int) -> tuple[int, ...]:
  if (not isinstance(value, (tuple, list)) or len(value) > _MAX_RANK
      or not all(_is_int(v) and low <= v < _MAX_INT for v in value)):
    raise WeightsError(f'bad tensor {what} {_describe(value)}')
  return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args,
                    dtype: str | None = None):
  if (isinstance(storage, tuple) and len(storage) == 2
      and isinstance(storage[0], _Storage)):  # legacy storage view
    storage, view_offset = storage
  else:
    view_offset = 0
  if (not isinstance(storage, _Storage) or not _is_int(storage_offset)
      or not 0 <= storage_offset < _MAX_INT or not _is_int(view_offset)
      or not 0 <= view_offset < _MAX_INT):
    raise WeightsError(f'bad tensor storage {_describe(storage)} at offset '
                       f'{_describe(storage_offset)}')
  size = _ints(size, 'size', 0)
  stride = _ints(stride, 'stride', -_MAX_INT)
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
    raise WeightsError(f'bad tensor dtype {_describe(dtype)}')
  return _rebuild_tensor(storage, storage_offset, size, stride,
                         dtype=dtype.name)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None,
                       state=None):
  del requires_grad, backward_hooks, state
  if not isinstance(data, _LazyTensor):
    raise WeightsError(f'a parameter of {_describe(data)}, not a tensor')
  return data


def _ordered_dict(*args):
  if args:  # torch writes OrderedDict() and adds the items with SETITEMS.
    raise WeightsError('OrderedDict called with arguments')
  return collections.OrderedDict()


def _size(*args):
  if len(args) != 1:
    raise WeightsError('torch.Size called with other than one argument')
  return _ints(args[0], 'size', 0)


_CALLABLE = {
    ('collections', 'OrderedDict'): _ordered_dict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch', 'Size'): _size,
}
_CALLABLES = frozenset(_CALLABLE.values())


def _find_global(module: str, name: str) -> Any:
  """The value a global names, or None; records are built fresh each time."""
  if (module, name) in _CALLABLE:
    return _CALLABLE[module, name]
  if module == 'torch' and name in _STORAGE_DTYPES:
    return _StorageType(_STORAGE_DTYPES[name])
  if module == 'torch' and name in _TORCH_DTYPES:
    return _DType(_TORCH_DTYPES[name])
  return None


_SCALARS = (str, bytes, int, float, bool, type(None))


def _check_key(key: Any) -> None:
  # Hashing a deeply nested tuple recurses in C; keys stay flat.
  if isinstance(key, tuple):
    if all(isinstance(k, _SCALARS) for k in key):
      return
  elif isinstance(key, _SCALARS):
    return
  raise WeightsError(f'a dict or set key of {_describe(key)}, not a string, '
                     'number or flat tuple of those')


_P = pickle._Unpickler  # pylint: disable=protected-access
_OP = {name: op[0] for name, op in vars(pickle).items()
       if name.isupper() and isinstance(op, bytes) and len(op) == 1}
_PLAIN_OPS = (
    'PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT '
    'BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT STRING BINSTRING '
    'SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 BINBYTES '
    'SHORT_BINBYTES BINBYTES8 TUPLE EMPTY_TUPLE TUPLE1 TUPLE2 TUPLE3 '
    'EMPTY_LIST LIST APPEND APPENDS EMPTY_DICT EMPTY_SET GET BINGET '
    'LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE PERSID BINPERSID GLOBAL '
    'STACK_GLOBAL').split()


class _Interpreter(_P):
  """The pure-Python unpickler with only the opcodes a weights file needs."""

  dispatch = {_OP[name]: _P.dispatch[_OP[name]] for name in _PLAIN_OPS}

  def __init__(self, file: BinaryIO, path: str,
               storages: dict[str, '_Storage'] | None = None):
    super().__init__(file, encoding='latin1')
    self._path = path
    self.storages: dict[str, _Storage] = {} if storages is None else storages

  def find_class(self, module: str, name: str) -> Any:
    value = _find_global(module, name)
    if value is None:
      raise UnsafeWeightsError(
          f'{self._path}: refusing to load: the pickle names the global '
          f'{module:.100}.{name:.100}, which is not one of the '
          'tensor-building functions a weights file may use (it could run '
          'code); nothing from the file was run')
    return value

  def persistent_load(self, pid: Any) -> Any:
    # ('storage', storage_type, key, location, numel[, view_metadata])
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6)
        or pid[0] != 'storage' or not isinstance(pid[1], _StorageType)
        or not isinstance(pid[2], str) or not _is_int(pid[4])
        or not 0 <= pid[4] < _MAX_INT):
      raise WeightsError(f'unexpected persistent id {_describe(pid)}')
    storage_type, key, numel = pid[1], pid[2], pid[4]
    storage = self.storages.get(key)
    if storage is None:
      storage = self.storages[key] = _Storage(key, storage_type.dtype, numel)
    elif (storage.dtype, storage.numel) != (storage_type.dtype, numel):
      raise WeightsError(f'storage {key:.100} is named with two dtypes or '
                         'sizes')
    view = pid[5] if len(pid) == 6 else None
    if view is not None:  # legacy view: (view_key, offset, view_size)
      if (not isinstance(view, tuple) or len(view) != 3
          or not _is_int(view[1]) or not 0 <= view[1] < _MAX_INT):
        raise WeightsError(f'bad storage view {_describe(view)}')
      return (storage, view[1])
    return storage

  def load_reduce(self):
    args = self.stack.pop()
    func = self.stack[-1]
    if not isinstance(args, tuple) or not any(func is f for f in _CALLABLES):
      raise WeightsError(f'the pickle calls {_describe(func)}, which is not '
                         'a tensor-building function')
    self.stack[-1] = func(*args)

  def load_build(self):
    self.stack.pop()  # the state
    if not isinstance(self.stack[-1], dict):
      raise WeightsError('the pickle sets the state of '
                         f'{_describe(self.stack[-1])} (BUILD), which a '
                         "weights file does only on a state dict; refused")
    # A state dict's attributes (torch's _metadata) are not needed: ignored.

  def load_dict(self):
    items = self.pop_mark()
    self.append({})
    self._set(self.stack[-1], list(zip(items[::2], items[1::2])))

  def load_setitem(self):
    value = self.stack.pop()
    key = self.stack.pop()
    self._set(self.stack[-1], [(key, value)])

  def load_setitems(self):
    items = self.pop_mark()
    self._set(self.stack[-1], list(zip(items[::2], items[1::2])))

  @staticmethod
  def _set(target, pairs):
    if not isinstance(target, dict):
      raise WeightsError(f'the pickle sets items of {_describe(target)}')
    for key, value in pairs:
      _check_key(key)
      target[key] = value

  def load_additems(self):
    items = self.pop_mark()
    if not isinstance(self.stack[-1], set):
      raise WeightsError(f'the pickle adds items to {_describe(self.stack[-1])}')
    for item in items:
      _check_key(item)
    self.stack[-1].update(items)

  def load_frozenset(self):
    items = self.pop_mark()
    for item in items:
      _check_key(item)
    self.append(frozenset(items))

  def load_append(self):
    value = self.stack.pop()
    self._extend(self.stack[-1], [value])

  def load_appends(self):
    items = self.pop_mark()
    self._extend(self.stack[-1], items)

  @staticmethod
  def _extend(target, items):
    if not isinstance(target, list):
      raise WeightsError(f'the pickle appends to {_describe(target)}')
    target.extend(items)

  dispatch[_OP['REDUCE']] = load_reduce
  dispatch[_OP['BUILD']] = load_build
  dispatch[_OP['DICT']] = load_dict
  dispatch[_OP['SETITEM']] = load_setitem
  dispatch[_OP['SETITEMS']] = load_setitems
  dispatch[_OP['ADDITEMS']] = load_additems
  dispatch[_OP['FROZENSET']] = load_frozenset
  dispatch[_OP['APPEND']] = load_append
  dispatch[_OP['APPENDS']] = load_appends

  def load(self) -> Any:
    try:
      return super().load()
    except KeyError as e:  # dispatch: an opcode this interpreter refuses
      if e.args and isinstance(e.args[0], int):
        raise WeightsError(
            f'the pickle uses the opcode {bytes([e.args[0]])!r}, which a '
            'weights file does not need') from None
      raise


class _Bounded:
  """A file whose reads never ask for more bytes than remain in it.

  A pickle declares string lengths; reading ``n`` bytes from a buffered file
  allocates ``n`` first, so a few bytes could otherwise demand gigabytes.
  """

  def __init__(self, f: BinaryIO, size: int):
    self._f, self._size = f, size

  def read(self, n: int = -1) -> bytes:
    left = max(0, self._size - self._f.tell())
    return self._f.read(left if n is None or n < 0 else min(n, left))

  def readline(self) -> bytes:
    return self._f.readline(max(0, min(1 << 20, self._size - self._f.tell())))


def _unpickle(file: BinaryIO, path: str,
              storages: dict[str, _Storage] | None = None) -> Any:
  return _Interpreter(file, path, storages).load()


def _walk(obj: Any, budget: int, path: str) -> list[_LazyTensor]:
  """Checks depth, cycles and expanded size without recursion; the tensors."""
  tensors = []
  nodes = 0
  on_path: set[int] = set()
  stack: list[tuple[Any, int, bool]] = [(obj, 0, False)]
  while stack:
    value, depth, leaving = stack.pop()
    if leaving:
      on_path.discard(id(value))
      continue
    nodes += 1
    if nodes > budget:
      raise WeightsError(
          f'{path}: the pickle expands to more than {budget} objects (shared '
          'references multiplying); refused')
    if isinstance(value, _LazyTensor):
      tensors.append(value)
    elif isinstance(value, (dict, list, tuple, set, frozenset)):
      if depth >= MAX_DEPTH:
        raise WeightsError(f'{path}: the pickle nests more than {MAX_DEPTH} '
                           'levels deep; refused')
      if id(value) in on_path:
        raise WeightsError(f'{path}: the pickle holds a container that '
                           'contains itself; refused')
      on_path.add(id(value))
      stack.append((value, depth, True))
      children = value.values() if isinstance(value, dict) else value
      stack.extend((child, depth + 1, False) for child in children)
    elif not isinstance(value, _SCALARS + (_DType, _StorageType)):
      raise WeightsError(f'{path}: the pickle holds {_describe(value)} '
                         'outside a tensor')
  return tensors


def expansion_limit(value: float | None = None) -> float:
  """The expansion cap: ``value``, else the environment variable, else 4."""
  if value is None:
    text = os.environ.get(EXPANSION_ENV)
    if text is None:
      return DEFAULT_MAX_EXPANSION
    try:
      value = float(text)
    except ValueError:
      value = -1.0
    if not 0 < value < math.inf:
      raise WeightsError(f'{EXPANSION_ENV}={text!r:.60}: expected a positive '
                         'number (how many times its size on disk a weights '
                         'file may expand to)')
  if not 0 < value < math.inf:
    raise WeightsError(f'max_expansion={value!r}: expected a positive number')
  return float(value)


def _over_cap(path: str, what: str, cap: int) -> str:
  return (f'{path}: {what} more than {cap} bytes, the cap of '
          f'{EXPANSION_ENV} (default {DEFAULT_MAX_EXPANSION:g}) times the '
          "file's size on disk; refused (raise it for a genuinely larger "
          'checkpoint)')


def _check_tensors(tensors: list[_LazyTensor], cap: int, path: str) -> None:
  """Bounds and total size of every tensor, from the declared storages."""
  total = 0
  for t in tensors:
    numel = 1
    for n in t.size:
      numel *= n
    if t.dtype not in _TORCH_DTYPES.values():
      raise WeightsError(f'{path}: bad tensor dtype {t.dtype!r:.60}')
    if numel:
      low = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride)
                           if s < 0)
      high = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride)
                            if s > 0)
      if low < 0 or high >= t.storage.numel:
        raise WeightsError(
            f'{path}: a tensor of size {t.size}, stride {t.stride} at offset '
            f'{t.offset} reaches past its storage of {t.storage.numel} '
            'elements')
      if _raw_dtype(t.dtype).itemsize != _raw_dtype(t.storage.dtype).itemsize:
        raise WeightsError(f'{path}: a {t.dtype} tensor on a '
                           f'{t.storage.dtype} storage')
    total += numel * _out_itemsize(t.dtype)
    if total > cap:
      raise WeightsError(_over_cap(path, 'its tensors would take', cap))


def _check_storages(storages: dict[str, _Storage], cap: int,
                    path: str) -> None:
  total = 0
  for storage in storages.values():
    if storage.dtype not in _TORCH_DTYPES.values():
      raise WeightsError(f'{path}: bad storage {storage.key!r:.100}')
    total += storage.numel * _raw_dtype(storage.dtype).itemsize
    if total > cap:
      raise WeightsError(_over_cap(path, 'its storages declare', cap))


def _materialize(t: _LazyTensor) -> np.ndarray:
  data = t.storage.data
  numel = int(np.prod(t.size, dtype=np.int64))
  if numel == 0:
    out = np.zeros(t.size, data.dtype)
  else:
    contiguous = tuple(int(np.prod(t.size[i + 1:])) for i in range(len(t.size)))
    if all(s == c for n, s, c in zip(t.size, t.stride, contiguous) if n > 1):
      out = data[t.offset:t.offset + numel].reshape(t.size).copy()
    else:  # _check_tensors kept every element inside data
      out = np.lib.stride_tricks.as_strided(
          data[t.offset:], shape=t.size,
          strides=tuple(s * data.itemsize for s in t.stride),
          writeable=False).copy()
  if t.dtype == 'bfloat16':
    return (out.astype(np.uint32) << 16).view(np.float32)
  return out.astype(out.dtype.newbyteorder('='))


def _replace_lazy(obj: Any) -> Any:
  # Recursion is bounded: _walk refused anything deeper than MAX_DEPTH.
  if isinstance(obj, _LazyTensor):
    return _materialize(obj)
  if isinstance(obj, dict):
    return {k: _replace_lazy(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_replace_lazy(v) for v in obj)
  if isinstance(obj, (_DType, _StorageType)):
    return getattr(obj, 'name', None) or obj.dtype
  return obj


def _storage_array(storage: _Storage, raw: bytes, path: str,
                   big_endian: bool = False) -> np.ndarray:
  dtype = _raw_dtype(storage.dtype)
  if big_endian:
    dtype = dtype.newbyteorder('>')
  if len(raw) < storage.numel * dtype.itemsize:
    raise WeightsError(
        f'{path}: storage {storage.key:.100} holds {len(raw)} bytes, fewer '
        f'than {storage.numel} x {dtype.itemsize}')
  return np.frombuffer(raw, dtype, count=storage.numel)


def _checked_members(z: zipfile.ZipFile, disk: int, path: str) -> dict:
  members = {}
  for info in z.infolist():
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
      raise WeightsError(f'{path}: zip member {info.filename:.100} uses '
                         f'compression {info.compress_type}')
    if (info.header_offset + info.compress_size > disk
        or (info.compress_type == zipfile.ZIP_STORED
            and info.compress_size != info.file_size)):
      raise WeightsError(
          f'{path}: zip member {info.filename:.100} declares sizes '
          f'({info.compress_size} stored, {info.file_size} read) that the '
          f'file of {disk} bytes cannot hold')
    members[info.filename] = info
  return members


def _load_zip(path: str, cap: int) -> Any:
  disk = os.path.getsize(path)
  with zipfile.ZipFile(path) as z:
    members = _checked_members(z, disk, path)
    pkls = [n for n in members if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pkls) != 1:
      raise WeightsError(f'{path}: a torch zip file holds one <dir>/data.pkl; '
                         f'found {pkls[:3] or "none"}')
    prefix = pkls[0][:-len('data.pkl')]
    if members[pkls[0]].file_size > cap:
      raise WeightsError(_over_cap(path, 'its pickle declares', cap))
    order = prefix + 'byteorder'
    big_endian = (order in members and members[order].file_size < 16
                  and z.read(order).strip() == b'big')
    pickled = z.read(pkls[0])  # zipfile checks the CRC
    storages: dict[str, _Storage] = {}
    obj = _unpickle(io.BytesIO(pickled), path, storages)
    tensors = _walk(obj, 2 * len(pickled) + 10_000, path)
    _check_storages(storages, cap, path)
    for key, storage in storages.items():
      member = members.get(f'{prefix}data/{key}')
      nbytes = storage.numel * _raw_dtype(storage.dtype).itemsize
      if member is None:
        raise WeightsError(f'{path}: storage {prefix}data/{key:.100} is '
                           'missing')
      if member.file_size != nbytes:
        raise WeightsError(
            f'{path}: storage {key:.100} holds {member.file_size} bytes, the '
            f'pickle says {storage.numel} x {_raw_dtype(storage.dtype).itemsize}')
    _check_tensors(tensors, cap, path)
    for key, storage in storages.items():
      storage.data = _storage_array(storage, z.read(f'{prefix}data/{key}'),
                                    path, big_endian)
  return _replace_lazy(obj)


def _load_legacy(path: str, cap: int) -> Any:
  disk = os.path.getsize(path)
  with open(path, 'rb') as raw:
    f = _Bounded(raw, disk)
    tell = raw.tell

    def load_one(storages=None):
      start = tell()
      value = _unpickle(f, path, storages)
      _walk(value, 2 * (tell() - start) + 10_000, path)
      return value

    if not _is_int(magic := load_one()) or magic != _LEGACY_MAGIC:
      raise WeightsError(f'{path}: not a torch file (no zip archive and no '
                         'legacy magic number)')
    if not _is_int(proto := load_one()) or proto != _LEGACY_PROTOCOL:
      raise WeightsError(f'{path}: unsupported legacy torch protocol')
    sys_info = load_one()
    big_endian = isinstance(sys_info, dict) and not sys_info.get(
        'little_endian', True)
    storages: dict[str, _Storage] = {}
    start = tell()
    obj = _unpickle(f, path, storages)
    tensors = _walk(obj, 2 * (tell() - start) + 10_000, path)
    keys = load_one()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise WeightsError(f'{path}: bad legacy storage key list')
    if sorted(keys) != sorted(storages):
      raise WeightsError(f'{path}: the storage key list does not match the '
                         'storages the pickle names')
    _check_storages(storages, cap, path)
    _check_tensors(tensors, cap, path)
    for key in keys:
      storage = storages[key]
      head = f.read(8)
      if len(head) != 8:
        raise WeightsError(f'{path}: the file ends before storage {key:.100}')
      (numel,) = struct.unpack('<q', head)
      if numel != storage.numel:
        raise WeightsError(f'{path}: storage {key:.100} has {numel} elements, '
                           f'the pickle said {storage.numel}')
      nbytes = numel * _raw_dtype(storage.dtype).itemsize
      if nbytes > disk - tell():
        raise WeightsError(f'{path}: storage {key:.100} needs {nbytes} bytes, '
                           f'the file has {disk - tell()} left')
      storage.data = _storage_array(storage, f.read(nbytes), path, big_endian)
  return _replace_lazy(obj)


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  for key, value in obj.items():
    name = f'{prefix}{key}'
    if isinstance(value, np.ndarray):
      out[name] = value
    elif isinstance(value, dict):
      _flatten(value, name + '.', out)


def load_object(path: str | os.PathLike,
                max_expansion: float | None = None) -> Any:
  """Unpickles a torch file safely; tensors become NumPy arrays.

  Args:
    path: the ``.pt``/``.pth``/``.bin`` file.
    max_expansion: the most bytes its tensors may take, as a multiple of the
      file's size on disk; None reads ``DLRESEARCH_WEIGHTS_MAX_EXPANSION``,
      else ``DEFAULT_MAX_EXPANSION`` (4).

  Raises:
    UnsafeWeightsError: the file names a global outside the allow-list.
    WeightsError: anything else refused (see the module docstring); one line
      naming the file and the reason.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightsError(f'{path}: no such file')
  cap = int(expansion_limit(max_expansion) * os.path.getsize(path))
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path, cap)
    return _load_legacy(path, cap)
  except WeightsError as e:
    message = ' '.join(str(e).splitlines())
    if not message.startswith(path):
      message = f'{path}: {message}'
    raise type(e)(message) from None
  except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile,
          OSError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, RecursionError, MemoryError, OverflowError,
          UnicodeDecodeError, NotImplementedError) as e:
    reason = f'{type(e).__name__}: {e}'.replace('\n', ' ')
    raise WeightsError(f'{path}: not a readable torch file ({reason:.300})'
                       ) from None


def load_state_dict(path: str | os.PathLike,
                    max_expansion: float | None = None
                    ) -> dict[str, np.ndarray]:
  """Reads a torch state dict: ``{name: np.ndarray}`` in torch's layout.

  Nested dicts (e.g. ``{'state_dict': {...}}``) are flattened with ``'.'``;
  entries that are not tensors are dropped. bfloat16 becomes float32.

  Raises:
    UnsafeWeightsError: the file names a global outside the allow-list.
    WeightsError: the file is missing, not a torch file, or holds no tensors.
  """
  obj = load_object(path, max_expansion)
  if not isinstance(obj, dict):
    raise WeightsError(f'{os.fspath(path)}: holds a {type(obj).__name__}, '
                       'not a state dict')
  out: dict[str, np.ndarray] = {}
  _flatten(obj, '', out)
  if not out:
    raise WeightsError(f'{os.fspath(path)}: holds no tensors')
  return out
