"""Native CPU kernels inside jitted steps, through XLA's FFI (``--cpu_kernels``).

``configure('native')`` loads the extension (``_native/*.cc``, built by
``pip install -e .``) with a BLAS from its wheel (``native.load``:
scipy-openblas32 by default, ``mkl`` when asked) and registers the FFI
target; ``configure('xla')`` leaves XLA's own dots. If the extension or the
BLAS is missing, ``configure('native')`` logs one WARNING and XLA's dots
run: the same results.

``--cpu_kernels=auto`` (the default) chooses per model, from the step
benchmark (docs/speed.md): native for a model without a convolution
(transformers, LSTMs, MLPs: their steps are dots, 1.08-1.19x faster with the
native GEMM; the LSTM LM ~1.5x with its native loops), XLA's dots for one
with a convolution (its time is in XLA's convolutions, which no linked
library beat; native/XLA 0.98 on LeNet):
``assemble`` passes ``'xla'`` when ``has_convolution``, else ``'auto'``, which
the strategy takes as native where it applies, without the WARNING that an
explicit ``native`` on a mesh of several devices gives.

- ``matmul(a, b, trans_a, trans_b)``: ``op(a) @ op(b)`` over leading batch
  axes (equal in ``a`` and ``b``), float32, a ``jax.custom_vjp`` whose two
  backward dots go through the same kernel. Under ``vmap`` the FFI call gets
  the mapped axis as one more batch axis (``vmap_method='broadcast_all'``:
  an unmapped operand is broadcast, i.e. copied, first).
- ``dense(x, kernel)``: ``x [..., K] @ kernel [K, N]`` as one GEMM of
  ``prod(...)`` rows.
- ``interceptor()``: a flax method interceptor (``nn.intercept_methods``)
  that computes every float32 ``nn.Dense``/``nn.DenseGeneral`` (trailing
  contracted axes, no batch dims, no custom ``dot_general``) with ``dense``;
  ``parallel``/the train step install it when ``active()``.
- ``lstm_forward`` / ``lstm_backward``: the LSTM's two time loops as single
  FFI calls (``_native/lstm.cc``: per step and thread one product with
  weights packed once per call and one vectorised pass over the gates, no
  XLA launch between steps); used by
  ``models.rnn.lstm_scan``, which keeps the products over all steps
  (input projection, weight and input gradients) on ``matmul``.
- ``tracing_native()``: inside ``interceptor()`` and ``active()``; the
  models' own matmuls ask it at trace time: the explicit attention's
  ``q k^T`` and ``weights v`` (``models.attention``: heads folded into the
  batch axis, a key/value head's query heads stacked as rows of one GEMM)
  and ``models.rnn.lstm_scan`` (the loops above, else its gate matmuls)
  take the kernels then.

``parallel.JitStrategy`` turns it on (``use_native``) only on a one-device
CPU mesh and then traces its steps inside ``interceptor()``
(``traced_with_native``): XLA's SPMD partitioner does not split a custom
call (on a mesh of several devices it gathers the operands and every device
computes the whole GEMM: right, but no faster), so such meshes, and
``--parallelism=pmap``, keep XLA's dots. Threads: the BLAS runs with one
thread; a large call is cut into parts that the XLA thread reaching it and
XLA's own intra-op pool take from a shared counter (``_native/gemm.cc``), so
a GEMM uses both cores when the pool has a thread free (a threaded BLAS
spins its own threads beside XLA's pool: 12x slower on the nanoGPT step on
2 shared cores); MKL's OpenMP threads are told not to spin after a call
(``KMP_BLOCKTIME=0``).
"""

import contextlib
import functools
import logging
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlresearch.kernels import native

MODES = ('xla', 'native')
_state = {'mode': 'xla', 'target': None, 'warned': False}
_tracing = threading.local()  # .depth: how many interceptor() contexts are open


def configure(mode: str, library: str = 'openblas', extension: str | None = None,
              threads: int | None = None) -> bool:
  """Turns the native GEMM on (``'native'``) or off (``'xla'``).

  Returns whether the native path is loaded. A failure to load logs one
  WARNING (once per process) and leaves XLA's dots. ``extension``: a built
  library other than the installed one (``native.build``); ``threads``: the
  BLAS's thread count (``native.load``; default 1).
  """
  if mode not in MODES:
    raise ValueError(f'cpu_kernels={mode!r}; choose from {", ".join(MODES)}')
  _state['mode'] = mode
  if mode == 'native' and _state['target'] is None:
    try:
      _state['target'] = native.load(library, threads=threads, extension=extension)
    except native.Unavailable as e:
      if not _state['warned']:
        logging.warning('--cpu_kernels=native: %s; using XLA\'s dots (same results)', e)
        _state['warned'] = True
  return loaded()


def loaded() -> bool:
  """The native path is asked for and its FFI target registered."""
  return _state['mode'] == 'native' and _state['target'] is not None


def active() -> bool:
  """The native path applies here: loaded and the CPU backend."""
  return loaded() and jax.default_backend() == 'cpu'


def tracing_native() -> bool:
  """The computation being traced now takes the native GEMM.

  True inside ``interceptor()`` (``traced_with_native``: the strategy chose
  the native path for this step) while ``active()``: the one test the Dense
  interceptor, the explicit attention (``models/attention.py``) and
  ``models.rnn.lstm_scan`` make at trace time. Outside it (``--cpu_kernels=xla``,
  meshes of several devices, pmap) they trace XLA's dots as before.
  """
  return getattr(_tracing, 'depth', 0) > 0 and active()


def _primitives(jaxpr):
  """Every primitive name of ``jaxpr`` and of the jaxprs in its equations."""
  def subjaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
      yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
      yield value
    elif isinstance(value, (tuple, list)):
      for v in value:
        yield from subjaxprs(v)
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name
    for value in eqn.params.values():
      for sub in subjaxprs(value):
        yield from _primitives(sub)


def has_convolution(closed_jaxpr) -> bool:
  """Whether ``closed_jaxpr`` (a model's traced initialisation) convolves.

  ``--cpu_kernels=auto`` takes XLA's dots for such a model (``assemble``).
  """
  return any(name == 'conv_general_dilated'
             for name in _primitives(closed_jaxpr.jaxpr))


def use_native(mesh, quiet: bool = False) -> bool:
  """Loads the native path for ``mesh`` if it is one CPU device; whether it is on.

  Any other mesh keeps XLA's dots, with one WARNING saying so (none when
  ``quiet``: ``--cpu_kernels=auto`` chose native, nobody asked for it).
  """
  devices = list(mesh.devices.flat)
  if len(devices) != 1 or devices[0].platform != 'cpu':
    if quiet:
      return False
    logging.warning('--cpu_kernels=native applies to a one-device CPU mesh; this '
                    'mesh has %d %s device(s): XLA\'s dots', len(devices),
                    devices[0].platform)
    return False
  if configure('native'):
    logging.info('cpu_kernels: the Dense, attention and LSTM matmuls of this run '
                 'take the native GEMM (dlresearch.kernels)')
  return loaded()


def traced_with_native(fn):
  """``fn`` traced with its Dense layers on the native GEMM (for ``jax.jit``)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with interceptor():
      return fn(*args, **kwargs)
  return wrapped


def _ffi(a, b, trans_a: bool, trans_b: bool):
  r = a.ndim
  m = a.shape[r - 1] if trans_a else a.shape[r - 2]
  n = b.shape[r - 2] if trans_b else b.shape[r - 1]
  call = jax.ffi.ffi_call(_state['target'],
                          jax.ShapeDtypeStruct((*a.shape[:-2], m, n), jnp.float32),
                          vmap_method='broadcast_all')
  return call(a, b, trans_a=np.int32(trans_a), trans_b=np.int32(trans_b))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _gemm(a, b, trans_a, trans_b):
  return _ffi(a, b, trans_a, trans_b)


def _gemm_fwd(a, b, trans_a, trans_b):
  return _ffi(a, b, trans_a, trans_b), (a, b)


def _gemm_bwd(trans_a, trans_b, res, g):
  a, b = res
  # C = op(A) op(B); each gradient is stored as its operand is.
  da = (_ffi(g, b, False, not trans_b) if not trans_a else _ffi(b, g, trans_b, True))
  db = (_ffi(a, g, not trans_a, False) if not trans_b else _ffi(g, a, True, trans_a))
  return da, db


_gemm.defvjp(_gemm_fwd, _gemm_bwd)


def _xla(a, b, trans_a, trans_b):
  r = a.ndim
  batch = tuple(range(r - 2))
  dims = (((r - 2,) if trans_a else (r - 1,), (r - 1,) if trans_b else (r - 2,)),
          (batch, batch))
  return jax.lax.dot_general(a, b, dims)


def matmul(a: jax.Array, b: jax.Array, trans_a: bool = False,
           trans_b: bool = False) -> jax.Array:
  """``op(a) @ op(b)`` for float32 ``[batch..., rows, cols]`` operands.

  The native kernel when loaded (its gradients too), else XLA's dot_general;
  2-D operands get a batch axis of one and lose it again.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  if a.ndim != b.ndim or a.ndim < 2 or a.shape[:-2] != b.shape[:-2]:
    raise ValueError(f'matmul: shapes {a.shape} and {b.shape} need equal batch axes')
  if not loaded() or a.dtype != jnp.float32 or b.dtype != jnp.float32:
    return _xla(a, b, trans_a, trans_b)
  if a.ndim == 2:
    return _gemm(a[None], b[None], bool(trans_a), bool(trans_b))[0]
  return _gemm(a, b, bool(trans_a), bool(trans_b))


def lstm_loops() -> bool:
  """The LSTM loop targets are loaded (``lstm_forward``/``lstm_backward``)."""
  return loaded() and native.lstm_loaded()


def _f32(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def lstm_forward(xp: jax.Array, c0: jax.Array, h0: jax.Array, w_h: jax.Array):
  """The LSTM forward loop: ``(hs, cs, gates)``, each ``[T, B, .]``.

  ``xp [T, B, 4H]`` is ``x W_x + b`` (gate order ``i, f, g, o``), ``w_h``
  ``[H, 4H]``; ``gates`` are the activated gates (``lstm_backward``'s
  input). Not differentiable itself: ``models.rnn.lstm_scan`` is the
  ``custom_vjp`` around it. Under ``vmap`` it runs once per mapped index.
  """
  steps, batch, width = xp.shape
  size = width // 4
  call = jax.ffi.ffi_call(native.LSTM_TARGETS[0],
                          (_f32(steps, batch, size), _f32(steps, batch, size),
                           _f32(steps, batch, width)), vmap_method='sequential')
  return call(xp, c0, h0, w_h)


def lstm_backward(d_hs, cs, c0, gates, w_h, d_ct, d_ht):
  """The LSTM backward loop: ``(dz [T, B, 4H], dc0, dh0)``.

  From the output and final-carry gradients and ``lstm_forward``'s ``cs``
  and ``gates``: the pre-activation gate gradients of every step and the
  initial carry's gradients (the weight, bias and input gradients are
  products of ``dz`` over all steps, left to the caller).
  """
  steps, batch, size = d_hs.shape
  call = jax.ffi.ffi_call(native.LSTM_TARGETS[1],
                          (_f32(steps, batch, 4 * size), _f32(batch, size),
                           _f32(batch, size)), vmap_method='sequential')
  return call(d_hs, cs, c0, gates, w_h, d_ct, d_ht)


def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``x [..., K] @ kernel [K, N]``: one GEMM over all leading rows."""
  lead = x.shape[:-1]
  out = matmul(x.reshape(-1, x.shape[-1]), kernel)
  return out.reshape(*lead, kernel.shape[-1])


def _dense_call(module, x):
  """``module(x)`` for an nn.Dense/DenseGeneral through ``dense``, or None."""
  if isinstance(module, nn.DenseGeneral):
    axis = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
    axis = tuple(sorted(a % x.ndim for a in axis))
    if module.batch_dims or axis != tuple(range(x.ndim - len(axis), x.ndim)):
      return None
    features = ((module.features,) if isinstance(module.features, int)
                else tuple(module.features))
  else:
    axis, features = (x.ndim - 1,), (module.features,)
  if module.dot_general is not None or module.dot_general_cls is not None:
    return None
  kernel = module.get_variable('params', 'kernel')
  bias = module.get_variable('params', 'bias') if module.use_bias else None
  if any(v is not None and v.dtype != jnp.float32 for v in (kernel, bias)):
    return None
  if x.dtype != jnp.float32 or module.dtype not in (None, jnp.float32):
    return None
  k = int(np.prod(x.shape[x.ndim - len(axis):]))
  lead = x.shape[:x.ndim - len(axis)]
  y = dense(x.reshape(*lead, k), kernel.reshape(k, -1))
  if bias is not None:
    y = y + bias.reshape(-1)
  return y.reshape(*lead, *features)


def _intercept(next_fun, args, kwargs, context):
  m = context.module
  # Only as the innermost interceptor (next_fun is the layer's own method):
  # an interceptor nested inside this one (LoRA's adapters, which add to the
  # layer's output) must run, so the layer then computes with XLA's dot.
  if (context.method_name == '__call__' and isinstance(m, (nn.Dense, nn.DenseGeneral))
      and next_fun is context.orig_method
      and not m.is_initializing() and m.has_variable('params', 'kernel')
      and tracing_native()):
    x = args[0] if args else kwargs.get('inputs')
    if isinstance(x, jax.Array) or hasattr(x, 'dtype'):
      y = _dense_call(m, jnp.asarray(x))
      if y is not None:
        return y
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def interceptor():
  """A context that routes flax Dense layers through ``dense`` when ``active()``.

  Inside it ``tracing_native()`` tells the models' explicit matmuls
  (attention, ``lstm_scan``) to take the kernel too.
  """
  depth = getattr(_tracing, 'depth', 0)
  _tracing.depth = depth + 1
  try:
    with nn.intercept_methods(_intercept):
      yield
  finally:
    _tracing.depth = depth
