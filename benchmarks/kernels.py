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

Convolutions (``--ops=conv``; ``CONVS``): every convolution of LeNet
(``bench_lenet``) and ResNet-18 (CIFAR stem), NHWC/HWIO as ``nn.Conv``
traces them, its forward (``fwd``), input gradient (``dX``; not for the
first layer, whose input is the batch) and weight gradient (``dW``), ``xN``
where the network has N of that shape. Columns: ``xla``,
``lax.conv_general_dilated`` and its ``jax.vjp`` jitted with the compiler
options the library's steps get on one CPU device
(``parallel.compiler_options``: Eigen convolutions); per library, the
candidate im2col + native GEMM (``im2col_conv``: patches by
``lax.conv_general_dilated_patches``, itself an XLA convolution, then one
sgemm; the input gradient as the im2col of the stride-dilated, padded
output gradient times the flipped kernel); ``torch``: ``F.conv2d`` and
``aten.convolution_backward`` (channels-last for ResNet-18, as
``benchmarks.compare`` runs it). FLOPs are ``2 N Ho Wo O C k^2`` for all
three. Each row checks the candidate's values against XLA's first.

    python -m benchmarks.kernels --ops=conv --torch_python=/tmp/hfvenv/bin/python
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
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from benchmarks import workloads
from dlresearch import parallel
from dlresearch.kernels import native

flags.DEFINE_list('workload', list(workloads.COMPARED), 'Workloads whose GEMMs to time.')
flags.DEFINE_list('libraries', list(native.LIBRARIES), 'BLAS libraries to try '
                  '(openblas, mkl), each optionally with its thread count '
                  '(openblas:2; default 1; one count per library and run); one missing is '
                  'left out with a note.')
flags.DEFINE_integer('rounds', 5, 'Interleaved rounds per shape.')
flags.DEFINE_string('torch_python', '', 'Python with torch for the PyTorch column.')
flags.DEFINE_bool('json', False, 'One JSON object per shape and line.')
flags.DEFINE_list('ops', ['gemm', 'conv'], 'Which rows: gemm (the dots), conv '
                  '(the convolutions of lenet and resnet18_cifar).')
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


# name -> [(label, count, (n, h, w, c, o, k, stride, pad), first)]: the
# convolutions (NHWC input, HWIO kernel, square, symmetric padding); count:
# how many the network has; first: its input is the batch (no dX).
CONVS = {
    'lenet': [('conv1 3x3 1->32', 1, (128, 28, 28, 1, 32, 3, 1, 0), True),
              ('conv2 3x3 32->64', 1, (128, 26, 26, 32, 64, 3, 1, 0), False)],
    'resnet18_cifar': [
        ('stem 3x3 3->64', 1, (64, 32, 32, 3, 64, 3, 1, 1), True),
        ('stage1 3x3 64->64', 4, (64, 32, 32, 64, 64, 3, 1, 1), False),
        ('stage2 3x3/2 64->128', 1, (64, 32, 32, 64, 128, 3, 2, 1), False),
        ('stage2 proj 1x1/2 64->128', 1, (64, 32, 32, 64, 128, 1, 2, 0), False),
        ('stage2 3x3 128->128', 3, (64, 16, 16, 128, 128, 3, 1, 1), False),
        ('stage3 3x3/2 128->256', 1, (64, 16, 16, 128, 256, 3, 2, 1), False),
        ('stage3 proj 1x1/2 128->256', 1, (64, 16, 16, 128, 256, 1, 2, 0), False),
        ('stage3 3x3 256->256', 3, (64, 8, 8, 256, 256, 3, 1, 1), False),
        ('stage4 3x3/2 256->512', 1, (64, 8, 8, 256, 512, 3, 2, 1), False),
        ('stage4 proj 1x1/2 256->512', 1, (64, 8, 8, 256, 512, 1, 2, 0), False),
        ('stage4 3x3 512->512', 3, (64, 4, 4, 512, 512, 3, 1, 1), False),
    ],
}
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_shapes(names):
  for name in names:
    for label, count, spec, first in CONVS.get(name, ()):
      label = f'{label} x{count}' if count > 1 else label
      for which in ('fwd', 'dW') if first else ('fwd', 'dX', 'dW'):
        yield name, label, which, spec


def conv_out(spec) -> tuple[int, int]:
  _, h, w, _, _, k, s, p = spec
  return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


def conv_flop(spec) -> int:
  n, _, _, c, o, k, _, _ = spec
  ho, wo = conv_out(spec)
  return 2 * n * ho * wo * o * c * k * k


def conv_operands(spec):
  """``x [N,H,W,C]``, ``w [k,k,C,O]``, ``g [N,Ho,Wo,O]`` (the output's gradient)."""
  n, h, w, c, o, k, _, _ = spec
  rng = np.random.default_rng(0)
  arrays = [rng.normal(size=(n, h, w, c)), rng.normal(size=(k, k, c, o)) / np.sqrt(k * k * c),
            rng.normal(size=(n, *conv_out(spec), o))]
  return [jnp.asarray(a, jnp.float32) for a in arrays]


def _xla_conv(spec):
  _, _, _, _, _, _, s, p = spec
  return lambda x, w: lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)),
                                               dimension_numbers=_NHWC)


def _gemm2d(target):
  """``op(a) @ op(b)`` for 2-D operands through the FFI ``target``."""
  def mm(a, b, ta=False, tb=False):
    m, n = a.shape[1 if ta else 0], b.shape[0 if tb else 1]
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((1, m, n), jnp.float32))
    return call(a[None], b[None], trans_a=np.int32(ta), trans_b=np.int32(tb))[0]
  return mm


def im2col_conv(spec, which, target):
  """The candidate ``fn(x, w, g)``: im2col + one sgemm through ``target``.

  ``fwd``: ``patches(x) [N Ho Wo, C k k] @ w [C k k, O]``; ``dW``:
  ``patches(x)^T @ g``; ``dX``: ``patches(dilate(g)) [N H W, O k k] @
  flip(w) [O k k, C]`` (the transposed convolution, stride 1, the
  stride-dilated gradient padded by ``k-1-p`` and what is left over).
  Patches are ordered (channel, row, column), as the patches op lays them out.
  """
  n, h, wd, c, o, k, s, p = spec
  ho, wo = conv_out(spec)
  mm = _gemm2d(target)

  def patches(x):
    return lax.conv_general_dilated_patches(x, (k, k), (s, s), ((p, p), (p, p)),
                                            dimension_numbers=_NHWC)

  def fwd(x, w, g):
    del g
    cols = patches(x).reshape(n * ho * wo, c * k * k)
    return mm(cols, w.transpose(2, 0, 1, 3).reshape(c * k * k, o)).reshape(n, ho, wo, o)

  def d_w(x, w, g):
    del w
    cols = patches(x).reshape(n * ho * wo, c * k * k)
    dw = mm(cols, g.reshape(n * ho * wo, o), ta=True)
    return dw.reshape(c, k, k, o).transpose(1, 2, 0, 3)

  def d_x(x, w, g):
    del x
    lo = k - 1 - p
    pads = tuple((lo, size + k - 1 - ((out - 1) * s + 1) - lo)
                 for size, out in ((h, ho), (wd, wo)))
    cols = lax.conv_general_dilated_patches(g, (k, k), (1, 1), pads, lhs_dilation=(s, s),
                                            dimension_numbers=_NHWC)
    flipped = w[::-1, ::-1].transpose(3, 0, 1, 2).reshape(o * k * k, c)
    return mm(cols.reshape(n * h * wd, o * k * k), flipped).reshape(n, h, wd, c)

  return {'fwd': fwd, 'dX': d_x, 'dW': d_w}[which]


def xla_conv_fn(spec, which, options):
  """XLA's convolution ``fn(x, w, g)`` (forward or one gradient), jitted with ``options``."""
  conv = _xla_conv(spec)
  fn = {'fwd': lambda x, w, g: conv(x, w),
        'dX': lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
        'dW': lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]}[which]
  return jax.jit(fn, compiler_options=options)


def step_options() -> dict | None:
  """The compiler options of the library's jitted steps on one CPU device."""
  return parallel.compiler_options(Mesh(np.array(jax.devices('cpu')[:1]), ('data',)))


def conv_fns(spec, which, targets, options):
  """{column: jitted fn(x, w, g)}: XLA's, and im2col + GEMM per library."""
  return {'xla': xla_conv_fn(spec, which, options),
          **{lib: jax.jit(im2col_conv(spec, which, t)) for lib, t in targets.items()}}


def conv_torch_cmd(name, spec, which):
  n, h, w, c, o, k, s, p = spec
  return dict(op='conv', which=which, n=n, h=h, w=w, c=c, o=o, k=k, stride=s, pad=p,
              channels_last=int(name == 'resnet18_cifar'))


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
  # One process loads a BLAS once (one handle for one .so), and its thread
  # count is process-wide: two counts of one library would both run at the
  # last one set. Time each count in its own run.
  counts = {}
  for col in names:
    lib, _, threads = col.partition(':')
    counts.setdefault(lib, set()).add(threads or '1')
  mixed = sorted(lib for lib, c in counts.items() if len(c) > 1)
  if mixed:
    raise SystemExit(f'--libraries: {", ".join(mixed)} given with several thread '
                     'counts; a BLAS\'s thread count is process-wide, so time each '
                     'count in its own run')
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


def measure(fns, args, flop, rounds, torch=None, torch_cmd=None) -> dict:
  """{column: GFLOP/s}: the median over ``rounds`` interleaved rounds (after
  one warm-up round) of each round's median call; ``torch`` answers
  ``torch_cmd`` (benchmarks/torch_gemm.py) when given."""
  reps = int(min(50, max(3, 0.02 / (flop / 100e9))))
  cols = [*fns, *(['torch'] if torch else [])]
  times = {c: [] for c in cols}
  for _ in range(rounds + 1):  # the first round warms up
    for c in cols:
      if c == 'torch':
        torch.stdin.write(json.dumps(dict(torch_cmd, reps=reps)) + '\n')
        torch.stdin.flush()
        secs = json.loads(torch.stdout.readline())['seconds']
      else:
        secs = time_reps(fns[c], args, reps)
      times[c].append(statistics.median(secs))
      time.sleep(0.02)
  return {c: flop / statistics.median(t[1:]) / 1e9 for c, t in times.items()}


def gemm_row(shape, targets, rounds, torch=None) -> dict:
  """One GEMM shape: values checked against XLA's, then ``measure``."""
  batch, m, k, n, ta, tb = shape
  args = operands(*shape)
  fns = {'xla': xla_fn(ta, tb), **{lib: ffi_fn(t, shape) for lib, t in targets.items()}}
  want = np.asarray(fns['xla'](*args))
  for lib in targets:
    got = np.asarray(fns[lib](*args))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.sqrt(k))
  return measure(fns, args, 2 * batch * m * k * n, rounds, torch,
                 dict(batch=batch, m=m, k=k, n=n, trans_a=ta, trans_b=tb))


def conv_row(name, spec, which, targets, rounds, torch=None, options=None) -> dict:
  """One convolution and pass: the candidate's values checked against XLA's,
  then ``measure``; ``options``: XLA's compiler options (``step_options()``)."""
  args = conv_operands(spec)
  fns = conv_fns(spec, which, targets, options)
  want = np.asarray(fns['xla'](*args))
  depth = spec[3] * spec[5] ** 2 if which != 'dX' else spec[4] * spec[5] ** 2
  for lib in targets:
    got = np.asarray(fns[lib](*args))
    assert got.shape == want.shape, (name, which, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.sqrt(depth))
  return measure(fns, args, conv_flop(spec), rounds, torch,
                 conv_torch_cmd(name, spec, which))


def rows(names, ops):
  """(kind, workload, label, shape): the GEMMs, then the convolutions."""
  if 'gemm' in ops:
    for name, label, which, shape in shapes(names):
      yield 'gemm', name, f'{label} {which}', shape
  if 'conv' in ops:
    for name, label, which, spec in conv_shapes(names):
      yield 'conv', name, f'{label} {which}', (spec, which)


HEADERS = {'gemm': ('dot', 'shape (batch m k n ta tb)'),
           'conv': ('conv', 'shape (n h w c o k stride pad)')}


def main(argv):
  del argv
  for name in FLAGS.workload:
    if name not in FORWARD:
      raise SystemExit(f'unknown --workload={name!r}; choose from {", ".join(FORWARD)}')
  for op in FLAGS.ops:
    if op not in HEADERS:
      raise SystemExit(f'unknown --ops={op!r}; choose from {", ".join(HEADERS)}')
  targets = load_libraries(FLAGS.libraries)
  options = step_options()
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
        f'GFLOP/s, median of {FLAGS.rounds} interleaved rounds; convolutions: XLA '
        f'with {options}, the libraries as im2col + GEMM', flush=True)
  kind_now = None
  for kind, name, label, shape in rows(FLAGS.workload, FLAGS.ops):
    if kind != kind_now and not FLAGS.json:
      what, layout = HEADERS[kind]
      print(f'\n| workload | {what} | {layout} | ' + ' | '.join(cols) + ' | load |')
      print('|---|---|---|' + '---:|' * (len(cols) + 1))
    kind_now = kind
    load0 = os.getloadavg()[0]
    if kind == 'gemm':
      gf = gemm_row(shape, targets, FLAGS.rounds, torch)
    else:
      gf = conv_row(name, *shape, targets, FLAGS.rounds, torch, options)
      shape = shape[0]
    load = f'{load0:.1f}-{os.getloadavg()[0]:.1f}'
    if FLAGS.json:
      print(json.dumps({'workload': name, HEADERS[kind][0]: label, 'shape': shape,
                        'gflops_per_sec': {c: round(v, 1) for c, v in gf.items()},
                        'load_avg_1m': load}), flush=True)
    else:
      print(f'| {name} | {label} | {" ".join(map(str, shape))} | '
            + ' | '.join(f'{gf[c]:.0f}' for c in cols) + f' | {load} |', flush=True)
  if torch is not None:
    torch.stdin.write(json.dumps({'cmd': 'quit'}) + '\n')
    torch.stdin.flush()
    torch.wait(timeout=30)


if __name__ == '__main__':
  app.run(main)
