r"""Probe: XLA's own dot vs a BLAS sgemm through the FFI vs PyTorch, per GEMM.

    python -m benchmarks.kernels --torch_python=/tmp/hfvenv/bin/python
    python -m benchmarks.kernels --workload=gpt_small --libraries=openblas --rounds=5

For every GEMM of the benchmark workloads (benchmarks/workloads.py; the
forward dot and its two backward dots, batched where attention batches
them) it times, interleaved round by round on this host: XLA's
``lax.dot_general`` under ``jax.jit``; the native FFI target
(``dlresearch/kernels/_native/gemm.cc``) with each ``--libraries`` BLAS
(``openblas``: scipy-openblas32; ``mkl``: the ``mkl`` wheel), each loaded
into its own copy of the extension, called under ``jax.jit``; and
``torch.matmul`` in a ``--torch_python`` subprocess (benchmarks/torch_gemm.py;
column left empty without one). A round times ``reps`` calls of each
(about 20 ms of work) and keeps their median; the table gives each
contender's median GFLOP/s over the rounds and the load average. Operands
are stored as the dot reads them (``ta``/``tb``: the operand is stored
transposed), the layout the backward pass hands over.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import workloads
from dlresearch.kernels import native

flags.DEFINE_list('workload', list(workloads.COMPARED), 'Workloads whose GEMMs to time.')
flags.DEFINE_list('libraries', list(native.LIBRARIES), 'BLAS libraries to try '
                  '(openblas, mkl), each optionally with its thread count '
                  '(openblas:2; default 1); one missing is '
                  'left out with a note.')
flags.DEFINE_integer('rounds', 5, 'Interleaved rounds per shape.')
flags.DEFINE_string('torch_python', '', 'Python with torch for the PyTorch column.')
flags.DEFINE_bool('json', False, 'One JSON object per shape and line.')
FLAGS = flags.FLAGS

# name -> [(label, batch, m, k, n, ta, tb)] forward dots; backward dots derived.
FORWARD = {
    'lenet': [('dense1', 1, 128, 9216, 128, 0, 0), ('dense2', 1, 128, 128, 10, 0, 0)],
    'resnet18_cifar': [('head', 1, 64, 512, 10, 0, 0)],
    'lstm_lm': [('gates/step', 1, 32, 320, 1024, 0, 0),
                ('gates/all T', 1, 2048, 320, 1024, 0, 0),
                ('head', 1, 2048, 256, 128, 0, 0)],
    'gpt_small': [('qkv/out', 1, 2048, 256, 256, 0, 0), ('mlp_in', 1, 2048, 256, 1024, 0, 0),
                  ('mlp_out', 1, 2048, 1024, 256, 0, 0), ('head', 1, 2048, 256, 512, 0, 0),
                  ('q k^T', 64, 128, 64, 128, 0, 1), ('w v', 64, 128, 128, 64, 0, 0)],
    'nanogpt_char': [('qkv/out', 1, 768, 128, 128, 0, 0), ('mlp_in', 1, 768, 128, 512, 0, 0),
                     ('mlp_out', 1, 768, 512, 128, 0, 0), ('head', 1, 768, 128, 65, 0, 0),
                     ('q k^T', 48, 64, 32, 64, 0, 1), ('w v', 48, 64, 64, 32, 0, 0)],
}


def backward(batch, m, k, n, ta, tb):
  """The two backward dots of C = op(A) op(B), as (batch, m, k, n, ta, tb)."""
  da = (batch, m, n, k, 0, 1 - tb) if not ta else (batch, k, n, m, tb, 1)
  db = (batch, k, m, n, 1 - ta, 0) if not tb else (batch, n, m, k, 1, ta)
  return da, db


def shapes(names):
  for name in names:
    for label, *fwd in FORWARD[name]:
      da, db = backward(*fwd)
      yield name, label, 'fwd', tuple(fwd)
      yield name, label, 'dA', da
      yield name, label, 'dB', db


def operands(batch, m, k, n, ta, tb):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(batch, k, m) if ta else (batch, m, k)).astype(np.float32)
  b = rng.normal(size=(batch, n, k) if tb else (batch, k, n)).astype(np.float32)
  return jnp.asarray(a), jnp.asarray(b)


def xla_fn(ta, tb):
  dims = (((1,) if ta else (2,), (2,) if tb else (1,)), ((0,), (0,)))
  return jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims))


def ffi_fn(target, shape):
  batch, m, _, n, ta, tb = shape
  call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((batch, m, n), jnp.float32))
  return jax.jit(lambda a, b: call(a, b, trans_a=np.int32(ta), trans_b=np.int32(tb)))


def time_reps(f, args, reps):
  secs = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    secs.append(time.perf_counter() - t0)
  return secs


def load_libraries(names):
  """{library: FFI target}, each library in its own copy of the extension."""
  tmp = tempfile.mkdtemp(prefix='dlr_kernels_')
  src = native.built_extension() or native.build(os.path.join(tmp, 'gemm.so'))
  targets = {}
  for col in names:
    lib, _, threads = col.partition(':')
    copy = os.path.join(tmp, f'gemm_{lib}{threads}.so')
    shutil.copy(src, copy)
    try:
      targets[col] = native.load(lib, threads=int(threads) if threads else None,
                                 extension=copy, target=f'dlr_sgemm_{lib}{threads}')
    except native.Unavailable as e:
      print(f'{col}: left out ({e})', file=sys.stderr)
  return targets


def main(argv):
  del argv
  for name in FLAGS.workload:
    if name not in FORWARD:
      raise SystemExit(f'unknown --workload={name!r}; choose from {", ".join(FORWARD)}')
  targets = load_libraries(FLAGS.libraries)
  torch = None
  if FLAGS.torch_python:
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_gemm.py')
    torch = subprocess.Popen([FLAGS.torch_python, worker], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    torch_info = json.loads(torch.stdout.readline())
  cols = ['xla', *targets, *(['torch'] if torch else [])]
  info = workloads.machine()
  print(f'{info["cpu"]}, {info["cpu_count"]} cores, jax {info["jax"]}, torch '
        f'{torch_info["torch"] if torch else "-"}; load {os.getloadavg()[0]:.1f}; '
        f'GFLOP/s, median of {FLAGS.rounds} interleaved rounds', flush=True)
  if not FLAGS.json:
    print('| workload | dot | shape (batch m k n ta tb) | ' + ' | '.join(cols) + ' | load |')
    print('|---|---|---|' + '---:|' * (len(cols) + 1))
  for name, label, which, shape in shapes(FLAGS.workload):
    batch, m, k, n, ta, tb = shape
    flop = 2 * batch * m * k * n
    reps = int(min(50, max(3, 0.02 / (flop / 100e9))))
    args = operands(*shape)
    fns = {'xla': xla_fn(ta, tb), **{lib: ffi_fn(t, shape) for lib, t in targets.items()}}
    want = np.asarray(fns['xla'](*args))
    for lib in targets:
      got = np.asarray(fns[lib](*args))
      np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.sqrt(k))
    times = {c: [] for c in cols}
    load0 = os.getloadavg()[0]
    for _ in range(FLAGS.rounds + 1):  # the first round warms up
      for c in cols:
        if c == 'torch':
          torch.stdin.write(json.dumps(dict(batch=batch, m=m, k=k, n=n, trans_a=ta,
                                            trans_b=tb, reps=reps)) + '\n')
          torch.stdin.flush()
          secs = json.loads(torch.stdout.readline())['seconds']
        else:
          secs = time_reps(fns[c], args, reps)
        times[c].append(statistics.median(secs))
        time.sleep(0.02)
    gf = {c: flop / statistics.median(t[1:]) / 1e9 for c, t in times.items()}
    load = f'{load0:.1f}-{os.getloadavg()[0]:.1f}'
    if FLAGS.json:
      print(json.dumps({'workload': name, 'dot': f'{label} {which}', 'shape': shape,
                        'gflops_per_sec': {c: round(v, 1) for c, v in gf.items()},
                        'load_avg_1m': load}), flush=True)
    else:
      print(f'| {name} | {label} {which} | {" ".join(map(str, shape))} | '
            + ' | '.join(f'{gf[c]:.0f}' for c in cols) + f' | {load} |', flush=True)
  if torch is not None:
    torch.stdin.write(json.dumps({'cmd': 'quit'}) + '\n')
    torch.stdin.flush()
    torch.wait(timeout=30)


if __name__ == '__main__':
  app.run(main)
