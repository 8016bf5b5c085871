"""Hostile weights files: each is loaded with the right values or refused.

Files are written here in torch's own formats (no torch needed: a pickler
that emits torch's globals and persistent ids, as ``torch.save`` does) and
as safetensors, then mutated with deterministic seeds, alongside the crafted
classes of issue 20 (BUILD on the reader's records, shared allow-listed
objects, billion laughs, cycles, deep nesting, declared sizes the file does
not hold, zero strides, zip bombs, bad safetensors headers).

Every file is read in a forked child under a memory limit
(``RLIMIT_AS``: its address space at fork plus ``_HEADROOM``) and a time
limit, which reports per file: loaded (with its arrays), refused (a
``WeightsError``, one line naming the file), or anything else (another
exception, or the child dying: a crash, a hang, memory past the limit).
Only the first two may happen.
"""

import collections
import io
import json
import os
import pickle
import random
import resource
import select
import signal
import struct
import time
import traceback
import zipfile
import zlib

import numpy as np
import pytest

from dlresearch import weights
from dlresearch.weights import torch_pickle

_HEADROOM = 768 << 20  # bytes of address space a child may add
_P = pickle  # opcodes below are pickle's own constants


# ---------------------------------------------------- writing torch files --


class _Global:
  """Pickles as the global ``module.name``."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):
    raise AssertionError('never called when writing')


class _Storage:

  def __init__(self, key, array, kind='FloatStorage'):
    self.key, self.array, self.kind = key, np.ascontiguousarray(array), kind


class _Tensor:

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
    if not isinstance(obj, _Storage):
      return None
    pid = ('storage', _Global('torch', obj.kind), obj.key, 'cpu',
           obj.array.size)
    return pid + (None,) if self.legacy else pid


def _torch_pickle(state, legacy=False):
  buf = io.BytesIO()
  _TorchPickler(buf, legacy).dump(state)
  return buf.getvalue()


def _zip_bytes(pickled, storages, compress=zipfile.ZIP_STORED):
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    z.writestr('archive/data.pkl', pickled)
    z.writestr('archive/byteorder', 'little')
    for s in storages:
      z.writestr(zipfile.ZipInfo(f'archive/data/{s.key}'), s.array.tobytes(),
                 compress_type=compress)
    z.writestr('archive/version', '3\n')
  return buf.getvalue()


def _legacy_bytes(pickled, storages):
  head = b''.join(pickle.dumps(h, protocol=2) for h in (
      0x1950A86A20F9469CFC6C, 1001,
      {'protocol_version': 1001, 'little_endian': True}))
  keys = pickle.dumps([s.key for s in storages], protocol=2)
  data = b''.join(struct.pack('<q', s.array.size) + s.array.tobytes()
                  for s in storages)
  return head + pickled + keys + data


def _state_dict(seed):
  """A torch-like state dict (with _metadata, set by BUILD) and its values."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(3, 4)).astype(np.float32)
  b = rng.normal(size=4).astype(np.float32)
  steps = np.arange(5, dtype=np.int64)
  s_w, s_b, s_n = (_Storage('0', w), _Storage('1', b),
                   _Storage('2', steps, 'LongStorage'))
  state = collections.OrderedDict([
      ('fc.weight', _Tensor(s_w, 0, (3, 4), (4, 1))),
      ('fc.weight_t', _Tensor(s_w, 0, (4, 3), (1, 4))),
      ('fc.bias', _Tensor(s_b, 0, (4,), (1,))),
      ('bn.num_batches_tracked', _Tensor(s_n, 2, (), ())),
  ])
  state._metadata = collections.OrderedDict(  # pylint: disable=protected-access
      [('', {'version': 1}), ('fc', {'version': 1})])
  expected = {'fc.weight': w, 'fc.weight_t': w.T, 'fc.bias': b,
              'bn.num_batches_tracked': steps[2]}
  return state, [s_w, s_b, s_n], expected


def _safetensors_bytes(tensors, header=None, length=None):
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


def _crafted():
  """(name, format, bytes, expected values or None for 'must be refused')."""
  cases = []
  one = np.array([1.5], np.float32)
  small = np.arange(6, dtype=np.float32)

  def torch_case(name, pickled, storages, expected=None, legacy=False):
    data = (_legacy_bytes(pickled, storages) if legacy
            else _zip_bytes(pickled, storages))
    cases.append((name + ('-legacy' if legacy else ''), 'torch', data,
                  expected))

  for legacy in (False, True):
    s = _Storage('0', small)
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
        ('w', _tensor_ops('0', 2**30, 0, (2**30,), (1,)))), [_Storage(
            '0', one)], legacy=legacy)
    torch_case('storage-numel-2**62', _dict_of(
        ('w', _tensor_ops('0', 2**62, 0, (1,), (1,)))), [_Storage('0', one)],
               legacy=legacy)
    torch_case('zero-stride-expansion', _dict_of(
        ('w', _tensor_ops('0', 1, 0, (50_000, 50_000), (0, 0)))),
               [_Storage('0', one)], legacy=legacy)
    torch_case('element-count-overflow', _dict_of(
        ('w', _tensor_ops('0', 1, 0, (2**31,) * 4, (0,) * 4))),
               [_Storage('0', one)], legacy=legacy)
    torch_case('stride-past-storage', _dict_of(
        ('w', _tensor_ops('0', 6, 0, (2, 3), (4, 1)))), [_Storage('0', small)],
               legacy=legacy)
    torch_case('negative-stride-before-storage', _dict_of(
        ('w', _tensor_ops('0', 6, 1, (3,), (-1,)))), [_Storage('0', small)],
               legacy=legacy)
    torch_case('negative-offset', _dict_of(
        ('w', _tensor_ops('0', 6, -1, (3,), (1,)))), [_Storage('0', small)],
               legacy=legacy)
    # Zero and negative strides that stay inside the storage are loaded.
    torch_case('zero-stride-inside', _dict_of(
        ('w', _tensor_ops('0', 6, 2, (3, 2), (0, 1)))), [_Storage('0', small)],
               {'w': np.broadcast_to(small[2:4], (3, 2))}, legacy=legacy)
    torch_case('negative-stride-inside', _dict_of(
        ('w', _tensor_ops('0', 6, 5, (2, 3), (-3, -1)))),
               [_Storage('0', small)], {'w': small[::-1].reshape(2, 3)},
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
  state, storages, _ = _state_dict(0)
  data = bytearray(_legacy_bytes(_torch_pickle(state, True), storages))
  pos = data.rfind(struct.pack('<q', storages[-1].array.size))
  data[pos:pos + 8] = struct.pack('<q', 2**40)
  cases.append(('legacy-storage-header-2**40', 'torch', bytes(data), None))
  # Zip: a bomb (deflated zeros) and a flipped byte in a storage (CRC).
  bomb = _Storage('0', np.zeros(16 << 20, np.float32))
  cases.append(('zip-bomb', 'torch', _zip_bytes(_torch_pickle(
      {'w': _Tensor(bomb, 0, (16 << 20,), (1,))}), [bomb],
      zipfile.ZIP_DEFLATED), None))
  data = bytearray(_zip_bytes(_torch_pickle(state), storages))
  pos = data.find(storages[0].array.tobytes())
  data[pos] ^= 0x40
  cases.append(('zip-bad-crc', 'torch', bytes(data), None))
  # The stored size in the central directory larger than the entry.
  data = bytearray(_zip_bytes(_torch_pickle(state), storages))
  cd = data.find(b'archive/data/0', data.find(b'PK\x01\x02')) - 46
  data[cd + 20:cd + 28] = struct.pack('<II', 2**31, 2**31)
  cases.append(('zip-central-directory-sizes', 'torch', bytes(data), None))

  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  b = np.arange(4, dtype=np.int64)

  def st_case(name, header=None, length=None, tensors=None):
    cases.append((name, 'safetensors', _safetensors_bytes(
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
  st_case('st-gap', lambda h: h['b'].update(data_offsets=[32, 56]))
  st_case('st-not-a-dict', lambda h: h.update(a=[1, 2]))
  data = b'[' * 100_000 + b']' * 100_000
  cases.append(('st-deep-json', 'safetensors',
                struct.pack('<Q', len(data)) + data, None))
  return cases


# ---------------------------------------------------------- the mutations --


def _seeds():
  """(name, format, bytes, expected) of valid files."""
  state, storages, expected = _state_dict(0)
  st = {'a': np.arange(6, dtype=np.float32).reshape(2, 3),
        'b': np.arange(4, dtype=np.int64), 'c': np.float16([1.5, -2.0])}
  return [
      ('zip', 'torch', _zip_bytes(_torch_pickle(state), storages), expected),
      ('legacy', 'torch', _legacy_bytes(_torch_pickle(state, True), storages),
       expected),
      ('safetensors', 'safetensors', _safetensors_bytes(st), st),
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
  return _zip_bytes(_mutate(_torch_pickle(state), rng), storages)


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
  return _safetensors_bytes({'a': a, 'b': b}, header)


def _fuzz_cases(n, seed):
  rng = random.Random(seed)
  seeds = _seeds()
  state, storages, _ = _state_dict(0)
  cases = []
  for i in range(n):
    kind = i % 5
    if kind == 3:
      data, fmt = _mutate_zip_pickle(state, storages, rng), 'torch'
    elif kind == 4:
      data, fmt = _mutate_st_header(rng), 'safetensors'
    else:
      _, fmt, base, _ = seeds[kind]
      data = _mutate(base, rng)
    cases.append((f'fuzz-{seed}-{i}', fmt, data, 'any'))
  return cases


# ------------------------------------------------------ the forked reader --


def _vm_size():
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmSize:'):
        return int(line.split()[1]) * 1024
  raise AssertionError('no VmSize')


def _child(paths, write_fd):
  limit = _vm_size() + _HEADROOM
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  out = os.fdopen(write_fd, 'w', buffering=1)
  for i, (fmt, path) in enumerate(paths):
    out.write(json.dumps({'start': i}) + '\n')
    t0 = time.monotonic()
    try:
      sd = weights.read(f'{fmt}:{path}')
      result = {'outcome': 'loaded', 'arrays': {
          k: [list(v.shape), str(v.dtype), v.astype(np.float64).ravel()[:64]
              .tolist() if v.size else []] for k, v in sd.items()},
                'nbytes': int(sum(v.nbytes for v in sd.values()))}
    except weights.WeightsError as e:
      result = {'outcome': 'refused', 'message': str(e)}
    except BaseException as e:  # pylint: disable=broad-exception-caught
      result = {'outcome': 'other', 'message': ''.join(
          traceback.format_exception_only(e))[-2000:]}
    result.update(i=i, seconds=time.monotonic() - t0)
    out.write(json.dumps(result) + '\n')
  out.close()


def _read_all(tmp_path, cases, timeout):
  """Reads every case in one forked child; a result per case, or a death."""
  paths = []
  for n, (name, fmt, data, _) in enumerate(cases):
    suffix = '.safetensors' if fmt == 'safetensors' else '.pth'
    p = tmp_path / f'{n:04d}{suffix}'
    p.write_bytes(data)
    paths.append((fmt, str(p)))
  read_fd, write_fd = os.pipe()
  pid = os.fork()
  if pid == 0:  # the child never returns into pytest
    code = 0
    try:
      os.close(read_fd)
      _child(paths, write_fd)
    except BaseException:  # pylint: disable=broad-exception-caught
      code = 3
    os._exit(code)  # pylint: disable=protected-access
  os.close(write_fd)
  buf, deadline, dead = b'', time.monotonic() + timeout, None
  with os.fdopen(read_fd, 'rb') as f:
    while True:
      left = deadline - time.monotonic()
      if left <= 0:
        os.kill(pid, signal.SIGKILL)
        dead = 'timed out (a hang)'
        break
      ready, _, _ = select.select([f], [], [], left)
      if ready:
        chunk = os.read(f.fileno(), 1 << 16)
        if not chunk:
          break
        buf += chunk
  _, status = os.waitpid(pid, 0)
  if dead is None and status != 0:
    dead = (f'died by signal {os.WTERMSIG(status)}' if os.WIFSIGNALED(status)
            else f'exited {os.WEXITSTATUS(status)}')
  results, started = {}, None
  for line in buf.decode().splitlines():
    record = json.loads(line)
    if 'start' in record:
      started = record['start']
    else:
      results[record['i']] = record
  return [paths[i][1] for i in range(len(cases))], results, dead, started


def _check(cases, paths, results, dead, started, per_case_s=5.0):
  problems = []
  if dead:
    name = cases[started][0] if started is not None else '?'
    problems.append(f'the reader {dead} while reading {name}')
  for i, (name, fmt, data, expected) in enumerate(cases):
    r = results.get(i)
    if r is None:
      continue
    if r['outcome'] == 'other':
      problems.append(f'{name}: {r["message"]}')
      continue
    if r['seconds'] > per_case_s:
      problems.append(f'{name}: took {r["seconds"]:.1f} s')
    if r['outcome'] == 'refused':
      message = r['message']
      if '\n' in message or paths[i] not in message:
        problems.append(f'{name}: refusal not one line naming the file: '
                        f'{message!r:.300}')
      if 'MemoryError' in message:
        problems.append(f'{name}: refused only by running out of memory')
      if isinstance(expected, dict):
        problems.append(f'{name}: a valid file was refused: {message:.300}')
      continue
    # Loaded.
    if r['nbytes'] > torch_pickle.DEFAULT_MAX_EXPANSION * len(data) + 64:
      problems.append(f'{name}: {r["nbytes"]} bytes loaded from a file of '
                      f'{len(data)}')
    if expected is None:
      problems.append(f'{name}: loaded, should have been refused')
    elif isinstance(expected, dict):
      arrays = r['arrays']
      if set(arrays) != set(expected):
        problems.append(f'{name}: loaded keys {sorted(arrays)}')
        continue
      for k, want in expected.items():
        shape, _, values = arrays[k]
        want = np.asarray(want)
        if (tuple(shape) != want.shape or not np.array_equal(
            values, want.astype(np.float64).ravel()[:64])):
          problems.append(f'{name}: {k} loaded as {shape} {values[:8]}')
  assert not problems, '\n'.join(problems[:40])


def _run(tmp_path, cases, timeout):
  paths, results, dead, started = _read_all(tmp_path, cases, timeout)
  _check(cases, paths, results, dead, started)
  return paths, results


# ---------------------------------------------------------------- tests --


def test_valid_files_load_with_their_values(tmp_path):
  _, results = _run(tmp_path, _seeds(), timeout=60)
  assert [r['outcome'] for r in results.values()] == ['loaded'] * 3


def test_crafted_files_are_refused_in_one_line(tmp_path):
  cases = _crafted()
  paths, results = _run(tmp_path, cases, timeout=120)
  outcomes = {name: results[i]['outcome'] for i, (name, *_) in
              enumerate(cases)}
  loaded = {name for name, _, _, expected in cases if expected is not None}
  assert loaded == {name for name, o in outcomes.items() if o == 'loaded'}
  assert len(loaded) == 4 and len(outcomes) - len(loaded) >= 50
  messages = {name: results[i].get('message', '') for i, (name, *_) in
              enumerate(cases)}
  assert 'expands to more than' in messages['billion-laughs']
  assert 'contains itself' in messages['self-containing-dict']
  assert 'nests more than' in messages['100k-nested-lists-legacy']
  assert 'sets the state of' in messages['build-on-tensor-record']
  assert 'reaches past its storage' in messages['stride-past-storage']
  assert 'DLRESEARCH_WEIGHTS_MAX_EXPANSION' in messages[
      'zero-stride-expansion']
  assert 'CRC' in messages['zip-bad-crc']
  assert 'overlap or gap' in messages['st-overlap']
  del paths


def test_a_refused_file_does_not_change_how_the_next_is_read(tmp_path):
  state, storages, expected = _state_dict(0)
  clean = tmp_path / 'clean.pth'
  clean.write_bytes(_zip_bytes(_torch_pickle(state), storages))
  before = weights.read(f'torch:{clean}')
  for name, fmt, data, want in _crafted():
    if fmt == 'torch' and name.startswith('build-on-'):
      p = tmp_path / f'{name}.pth'
      p.write_bytes(data)
      with pytest.raises(weights.WeightsError, match='sets the state of'):
        weights.read(f'torch:{p}')
  after = weights.read(f'torch:{clean}')
  assert set(after) == set(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(before[k], v)
    np.testing.assert_array_equal(after[k], v)
    assert after[k].dtype == np.asarray(v).dtype


def test_expansion_cap_override(tmp_path, monkeypatch):
  # Ten views of one storage: 10x the storage's bytes, over the default 4x.
  big = _Storage('0', np.arange(4096, dtype=np.float32))
  state = {f'v{i}': _Tensor(big, 0, (4096,), (1,)) for i in range(10)}
  p = tmp_path / 'views.pth'
  p.write_bytes(_zip_bytes(_torch_pickle(state), [big]))
  with pytest.raises(weights.WeightsError, match='over '
                     'DLRESEARCH_WEIGHTS_MAX_EXPANSION') as info:
    weights.read(f'torch:{p}')
  assert '\n' not in str(info.value) and str(p) in str(info.value)
  sd = weights.read(f'torch:{p}', max_expansion=20)
  np.testing.assert_array_equal(sd['v9'], np.arange(4096, dtype=np.float32))
  monkeypatch.setenv('DLRESEARCH_WEIGHTS_MAX_EXPANSION', '20')
  assert len(weights.read(f'torch:{p}')) == 10
  monkeypatch.setenv('DLRESEARCH_WEIGHTS_MAX_EXPANSION', 'lots')
  with pytest.raises(weights.WeightsError, match='expected a positive'):
    weights.read(f'torch:{p}')


def test_fuzzed_files_load_or_are_refused(tmp_path):
  cases = _fuzz_cases(600, seed=0)
  t0 = time.monotonic()
  _, results = _run(tmp_path, cases, timeout=120)
  outcomes = collections.Counter(r['outcome'] for r in results.values())
  assert len(results) == 600 and outcomes['refused'] > 100, outcomes
  assert time.monotonic() - t0 < 120


@pytest.mark.slow
@pytest.mark.parametrize('seed', [1, 2, 3])
def test_fuzzed_files_load_or_are_refused_slow(tmp_path, seed):
  cases = _fuzz_cases(5000, seed=seed)
  _, results = _run(tmp_path, cases, timeout=600)
  assert len(results) == 5000
