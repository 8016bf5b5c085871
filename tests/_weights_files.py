"""Weights files for tests: torch formats without torch, and hostile ones.

``torch_file``-style writers emit torch's own pickles (its globals and
persistent ids, protocol 2, a state dict's ``_metadata`` set by BUILD, as
``torch.save`` writes them) in the zip and the legacy layouts;
``safetensors_bytes`` writes safetensors. ``crafted()`` is every hostile
class of issue 20 as ``(name, format, bytes, expected)`` (expected: the
arrays a valid file holds, or None: must be refused); ``fuzz_cases(n, seed)``
are deterministic mutations of valid files (expected ``'any'``: loaded or
refused, never anything else).
"""

import collections
import io
import json
import pickle
import random
import struct
import zipfile

import numpy as np

_P = pickle  # opcodes below are pickle's own constants


# ---------------------------------------------------- writing torch files --


class _Global:
  """Pickles as the global ``module.name``."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):
    raise AssertionError('never called when writing')


class Storage:

  def __init__(self, key, array, kind='FloatStorage'):
    self.key, self.array, self.kind = key, np.ascontiguousarray(array), kind


class Tensor:

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = (storage, offset, size,
                                                         stride)

  def __reduce__(self):
    return (_Global('torch._utils', '_rebuild_tensor_v2'),
            (self.storage, self.offset, self.size, self.stride, False,
             collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access
  dispatch[_Global] = lambda self, g: self.write(
      pickle.GLOBAL + f'{g.module}\n{g.name}\n'.encode())

  def __init__(self, f, legacy):
    super().__init__(f, protocol=2)
    self.legacy = legacy

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    pid = ('storage', _Global('torch', obj.kind), obj.key, 'cpu',
           obj.array.size)
    return pid + (None,) if self.legacy else pid


def torch_pickle(state, legacy=False):
  buf = io.BytesIO()
  _TorchPickler(buf, legacy).dump(state)
  return buf.getvalue()


def zip_bytes(pickled, storages, compress=zipfile.ZIP_STORED):
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    z.writestr('archive/data.pkl', pickled)
    z.writestr('archive/byteorder', 'little')
    for s in storages:
      z.writestr(zipfile.ZipInfo(f'archive/data/{s.key}'), s.array.tobytes(),
                 compress_type=compress)
    z.writestr('archive/version', '3\n')
  return buf.getvalue()


def legacy_bytes(pickled, storages):
  head = b''.join(pickle.dumps(h, protocol=2) for h in (
      0x1950A86A20F9469CFC6C, 1001,
      {'protocol_version': 1001, 'little_endian': True}))
  keys = pickle.dumps([s.key for s in storages], protocol=2)
  data = b''.join(struct.pack('<q', s.array.size) + s.array.tobytes()
                  for s in storages)
  return head + pickled + keys + data


def state_dict(seed):
  """A torch-like state dict (with _metadata, set by BUILD) and its values."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(3, 4)).astype(np.float32)
  b = rng.normal(size=4).astype(np.float32)
  steps = np.arange(5, dtype=np.int64)
  s_w, s_b, s_n = (Storage('0', w), Storage('1', b),
                   Storage('2', steps, 'LongStorage'))
  state = collections.OrderedDict([
      ('fc.weight', Tensor(s_w, 0, (3, 4), (4, 1))),
      ('fc.weight_t', Tensor(s_w, 0, (4, 3), (1, 4))),
      ('fc.bias', Tensor(s_b, 0, (4,), (1,))),
      ('bn.num_batches_tracked', Tensor(s_n, 2, (), ())),
  ])
  state._metadata = collections.OrderedDict(  # pylint: disable=protected-access
      [('', {'version': 1}), ('fc', {'version': 1})])
  expected = {'fc.weight': w, 'fc.weight_t': w.T, 'fc.bias': b,
              'bn.num_batches_tracked': steps[2]}
  return state, [s_w, s_b, s_n], expected


def safetensors_bytes(tensors, header=None, length=None):
  entries, data, offset = {}, b'', 0
  for name, a in tensors.items():
    raw = np.ascontiguousarray(a).tobytes()
    dtype = {'float32': 'F32', 'int64': 'I64', 'float16': 'F16'}[str(a.dtype)]
    entries[name] = {'dtype': dtype, 'shape': list(a.shape),
                     'data_offsets': [offset, offset + len(raw)]}
    data, offset = data + raw, offset + len(raw)
  if header is not None:
    header(entries)
  text = json.dumps(entries).encode()
  return struct.pack('<Q', len(text) if length is None else length) + text + data


# ------------------------------------------------- crafted pickle opcodes --


def _u(s):
  b = s.encode()
  return _P.BINUNICODE + struct.pack('<I', len(b)) + b


def _global(module, name):
  return _P.GLOBAL + f'{module}\n{name}\n'.encode()


def _tensor_ops(key, numel, offset, size, stride, kind='FloatStorage'):
  """Ops pushing one ``_rebuild_tensor_v2(...)``: any sizes, unchecked."""
  def tup(values):
    return _P.MARK + b''.join(_int(v) for v in values) + _P.TUPLE
  return (_global('torch._utils', '_rebuild_tensor_v2') + _P.MARK
          + _P.MARK + _u('storage') + _global('torch', kind) + _u(key)
          + _u('cpu') + _int(numel) + _P.TUPLE + _P.BINPERSID
          + _int(offset) + tup(size) + tup(stride) + _P.NEWFALSE
          + _global('collections', 'OrderedDict') + _P.EMPTY_TUPLE
          + _P.REDUCE + _P.TUPLE + _P.REDUCE)


def _int(v):
  if 0 <= v < 2**31:
    return _P.BININT + struct.pack('<i', v)
  raw = v.to_bytes((v.bit_length() + 8) // 8, 'little', signed=True)
  return _P.LONG1 + bytes([len(raw)]) + raw


def _dict_of(*pairs):
  return (_P.PROTO + b'\x02' + _P.EMPTY_DICT + _P.MARK
          + b''.join(_u(k) + v for k, v in pairs) + _P.SETITEMS + _P.STOP)


def _billion_laughs(levels=30, width=10):
  ops = _P.EMPTY_LIST + _P.BINPUT + b'\x00' + _P.MARK + _u('lol') * width
  ops += _P.APPENDS
  for i in range(1, levels):
    ops += (_P.POP + _P.EMPTY_LIST + _P.BINPUT + bytes([i]) + _P.MARK
            + (_P.BINGET + bytes([i - 1])) * width + _P.APPENDS)
  return _dict_of(('w', ops + _P.POP + _P.BINGET + bytes([levels - 1])))


def crafted():
  """(name, format, bytes, expected values or None for 'must be refused')."""
  cases = []
  one = np.array([1.5], np.float32)
  small = np.arange(6, dtype=np.float32)

  def torch_case(name, pickled, storages, expected=None, legacy=False):
    data = (legacy_bytes(pickled, storages) if legacy
            else zip_bytes(pickled, storages))
    cases.append((name + ('-legacy' if legacy else ''), 'torch', data,
                  expected))

  for legacy in (False, True):
    s = Storage('0', small)
    tensor = _tensor_ops('0', 6, 0, (2, 3), (3, 1))
    # BUILD on the reader's own tensor record (rewriting its stride).
    build = (_P.EMPTY_DICT + _P.MARK + _u('stride') + _P.MARK + _int(1000)
             + _int(1) + _P.TUPLE + _P.SETITEMS)
    torch_case('build-on-tensor-record', _dict_of(
        ('w', tensor + _P.NONE + build + _P.TUPLE2 + _P.BUILD)), [s],
               legacy=legacy)
    torch_case('build-on-tensor-record-dict-state', _dict_of(
        ('w', tensor + build + _P.BUILD)), [s], legacy=legacy)
    # BUILD on an allow-listed global (would change the next file's reading).
    for glob in (_global('torch', 'FloatStorage'),
                 _global('torch', 'float32'),
                 _global('torch._utils', '_rebuild_tensor_v2'),
                 _global('collections', 'OrderedDict')):
      state = (_P.NONE + _P.EMPTY_DICT + _u('dtype') + _u('float64')
               + _P.SETITEM + _P.TUPLE2)
      torch_case(f'build-on-global-{glob.split()[-1].decode()}', _dict_of(
          ('w', tensor), ('x', glob + state + _P.BUILD)), [s], legacy=legacy)
    torch_case('billion-laughs', _billion_laughs(), [], legacy=legacy)
    torch_case('self-containing-dict', _P.PROTO + b'\x02' + _P.EMPTY_DICT
               + _P.BINPUT + b'\x00' + _u('self') + _P.BINGET + b'\x00'
               + _P.SETITEM + _P.STOP, [], legacy=legacy)
    torch_case('100k-nested-lists', _dict_of(
        ('w', _P.EMPTY_LIST * 100_000 + _P.APPEND * 99_999)), [],
               legacy=legacy)
    torch_case('deep-tuple-key', _P.PROTO + b'\x02' + _P.EMPTY_DICT
               + _P.EMPTY_TUPLE + _P.TUPLE1 * 100_000 + _P.NONE + _P.SETITEM
               + _P.STOP, [], legacy=legacy)
    # Declared sizes the file does not hold.
    torch_case('huge-declared-storage', _dict_of(
        ('w', _tensor_ops('0', 2**30, 0, (2**30,), (1,)))), [Storage(
            '0', one)], legacy=legacy)
    torch_case('storage-numel-2**62', _dict_of(
        ('w', _tensor_ops('0', 2**62, 0, (1,), (1,)))), [Storage('0', one)],
               legacy=legacy)
    torch_case('zero-stride-expansion', _dict_of(
        ('w', _tensor_ops('0', 1, 0, (50_000, 50_000), (0, 0)))),
               [Storage('0', one)], legacy=legacy)
    torch_case('element-count-overflow', _dict_of(
        ('w', _tensor_ops('0', 1, 0, (2**31,) * 4, (0,) * 4))),
               [Storage('0', one)], legacy=legacy)
    torch_case('stride-past-storage', _dict_of(
        ('w', _tensor_ops('0', 6, 0, (2, 3), (4, 1)))), [Storage('0', small)],
               legacy=legacy)
    torch_case('negative-stride-before-storage', _dict_of(
        ('w', _tensor_ops('0', 6, 1, (3,), (-1,)))), [Storage('0', small)],
               legacy=legacy)
    torch_case('negative-offset', _dict_of(
        ('w', _tensor_ops('0', 6, -1, (3,), (1,)))), [Storage('0', small)],
               legacy=legacy)
    # Zero and negative strides that stay inside the storage are loaded.
    torch_case('zero-stride-inside', _dict_of(
        ('w', _tensor_ops('0', 6, 2, (3, 2), (0, 1)))), [Storage('0', small)],
               {'w': np.broadcast_to(small[2:4], (3, 2))}, legacy=legacy)
    torch_case('negative-stride-inside', _dict_of(
        ('w', _tensor_ops('0', 6, 5, (2, 3), (-3, -1)))),
               [Storage('0', small)], {'w': small[::-1].reshape(2, 3)},
               legacy=legacy)
    torch_case('reduce-on-a-string', _dict_of(
        ('w', _u('os') + _P.EMPTY_TUPLE + _P.REDUCE)), [], legacy=legacy)
    torch_case('newobj', _dict_of(
        ('w', _global('collections', 'OrderedDict') + _P.EMPTY_TUPLE
         + _P.NEWOBJ)), [], legacy=legacy)
    torch_case('ordered-dict-with-args', _dict_of(
        ('w', _global('collections', 'OrderedDict') + _P.MARK + _P.EMPTY_LIST
         + _P.TUPLE + _P.REDUCE)), [], legacy=legacy)

  # A legacy file whose storage header declares 2**40 elements: never read.
  state, storages, _ = state_dict(0)
  data = bytearray(legacy_bytes(torch_pickle(state, True), storages))
  pos = data.rfind(struct.pack('<q', storages[-1].array.size))
  data[pos:pos + 8] = struct.pack('<q', 2**40)
  cases.append(('legacy-storage-header-2**40', 'torch', bytes(data), None))
  # Pickle and storage header agree on 2**30 elements; the bytes are absent.
  huge = Storage('0', one)
  data = bytearray(legacy_bytes(_dict_of(
      ('w', _tensor_ops('0', 2**30, 0, (1,), (1,)))), [huge]))
  data[-12:-4] = struct.pack('<q', 2**30)
  cases.append(('legacy-huge-storage-consistent', 'torch', bytes(data), None))
  # Zip: a bomb (deflated zeros) and a flipped byte in a storage (CRC).
  bomb = Storage('0', np.zeros(16 << 20, np.float32))
  cases.append(('zip-bomb', 'torch', zip_bytes(torch_pickle(
      {'w': Tensor(bomb, 0, (16 << 20,), (1,))}), [bomb],
      zipfile.ZIP_DEFLATED), None))
  data = bytearray(zip_bytes(torch_pickle(state), storages))
  pos = data.find(storages[0].array.tobytes())
  data[pos] ^= 0x40
  cases.append(('zip-bad-crc', 'torch', bytes(data), None))
  # The stored size in the central directory larger than the entry.
  data = bytearray(zip_bytes(torch_pickle(state), storages))
  cd = data.find(b'archive/data/0', data.find(b'PK\x01\x02')) - 46
  data[cd + 20:cd + 28] = struct.pack('<II', 2**31, 2**31)
  cases.append(('zip-central-directory-sizes', 'torch', bytes(data), None))

  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  b = np.arange(4, dtype=np.int64)

  def st_case(name, header=None, length=None, tensors=None):
    cases.append((name, 'safetensors', safetensors_bytes(
        tensors or {'a': a, 'b': b}, header, length), None))

  st_case('st-header-length-2**63', length=2**63)
  st_case('st-header-length-past-file', length=10**6)
  st_case('st-offsets-past-buffer',
          lambda h: h['b'].update(data_offsets=[24, 10**9]))
  st_case('st-overlap', lambda h: h['b'].update(data_offsets=[0, 32]))
  st_case('st-dtype-size', lambda h: h['a'].update(dtype='F64'))
  st_case('st-shape-overflow', lambda h: h['a'].update(shape=[2**62, 2**62]))
  st_case('st-negative-shape', lambda h: h['a'].update(shape=[-2, -3]))
  st_case('st-unknown-dtype', lambda h: h['a'].update(dtype='F8_E4M3'))
  st_case('st-gap',
          lambda h: h['a'].update(shape=[2, 2], data_offsets=[0, 16]))
  st_case('st-not-a-dict', lambda h: h.update(a=[1, 2]))
  data = b'[' * 100_000 + b']' * 100_000
  cases.append(('st-deep-json', 'safetensors',
                struct.pack('<Q', len(data)) + data, None))
  return cases


# ---------------------------------------------------------- the mutations --


def seeds():
  """(name, format, bytes, expected) of valid files."""
  state, storages, expected = state_dict(0)
  st = {'a': np.arange(6, dtype=np.float32).reshape(2, 3),
        'b': np.arange(4, dtype=np.int64), 'c': np.float16([1.5, -2.0])}
  return [
      ('zip', 'torch', zip_bytes(torch_pickle(state), storages), expected),
      ('legacy', 'torch', legacy_bytes(torch_pickle(state, True), storages),
       expected),
      ('safetensors', 'safetensors', safetensors_bytes(st), st),
  ]


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 2**31, 2**32 - 1]


def _mutate(data: bytes, rng: random.Random) -> bytes:
  data = bytearray(data)
  for _ in range(rng.choice([1, 1, 2, 4, 8])):
    kind = rng.randrange(6)
    if not data:
      data = bytearray(b'\x80')
    pos = rng.randrange(len(data))
    if kind == 0:
      data[pos] ^= 1 << rng.randrange(8)
    elif kind == 1:
      data[pos] = rng.randrange(256)
    elif kind == 2:
      data[pos:pos + 4] = struct.pack('<I', rng.choice(_INTERESTING))
    elif kind == 3:
      del data[pos:pos + rng.randrange(1, 16)]
    elif kind == 4:
      data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(
          1, 8)))
    else:
      del data[pos:]
  return bytes(data)


def _mutate_zip_pickle(state, storages, rng):
  """A valid zip (right CRCs) around a mutated pickle: reaches the unpickler."""
  return zip_bytes(_mutate(torch_pickle(state), rng), storages)


def _mutate_st_header(rng):
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  b = np.arange(4, dtype=np.int64)

  def header(h):
    entry = h[rng.choice('ab')]
    field = rng.choice(['dtype', 'shape', 'data_offsets'])
    entry[field] = rng.choice([
        'F16', 'F64', 'I8', 'BF16', 'U64', 'X', 7, None, [], [0], [3, 2],
        [0, 0], [24, 56], [0, 2**64], [-1, 24], [2**62, 2], [6], [1, 6],
        {'a': 1}, 'BOOL'])
  return safetensors_bytes({'a': a, 'b': b}, header)


def fuzz_cases(n, seed):
  rng = random.Random(seed)
  valid = seeds()
  state, storages, _ = state_dict(0)
  cases = []
  for i in range(n):
    kind = i % 5
    if kind == 3:
      data, fmt = _mutate_zip_pickle(state, storages, rng), 'torch'
    elif kind == 4:
      data, fmt = _mutate_st_header(rng), 'safetensors'
    else:
      _, fmt, base, _ = valid[kind]
      data = _mutate(base, rng)
    cases.append((f'fuzz-{seed}-{i}', fmt, data, 'any'))
  return cases


def pickles_prefix(path, count=5):
  """The first ``count`` pickles of a file written by torch (legacy layout:
  magic, protocol, system info, the object, the storage keys), without the
  storage bytes that follow."""
  import pickletools  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    for _ in range(count):
      for op, _, _ in pickletools.genops(f):
        if op.name == 'STOP':
          break
    end = f.tell()
    f.seek(0)
    return f.read(end)


def torch_written_cases(path, n, seed):
  """Mutations of the pickles of a file torch wrote (storage bytes left out:
  the reader meets the mutated pickle first, then refuses or loads)."""
  rng = random.Random(seed)
  prefix = pickles_prefix(path)
  return [(f'torch-written-{seed}-{i}', 'torch', _mutate(prefix, rng), 'any')
          for i in range(n)]
