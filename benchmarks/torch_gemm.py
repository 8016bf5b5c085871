"""PyTorch's side of ``benchmarks.kernels``: times ``torch.matmul`` on request.

Run by ``benchmarks.kernels`` in the ``--torch_python`` interpreter (needs
only torch and numpy). Reads one JSON command per line on stdin:
``{"batch", "m", "k", "n", "trans_a", "trans_b", "reps"}``, or for a
convolution ``{"op": "conv", "which": "fwd"|"dX"|"dW", "n", "h", "w", "c",
"o", "k", "stride", "pad", "channels_last", "reps"}`` (``F.conv2d``, or
``aten.convolution_backward`` for one gradient, as autograd calls it);
answers ``{"seconds": [...]}`` (one per rep); ``{"cmd": "quit"}`` ends it.
"""

import json
import sys
import time

import torch


CONV_KEYS = ('n', 'h', 'w', 'c', 'o', 'k', 'stride', 'pad', 'channels_last')


def conv(cmd, cache):
  """Seconds per rep of one convolution pass (``cmd``, module docstring)."""
  key = ('conv', *(cmd[k] for k in CONV_KEYS))
  n, h, w, c, o, k, s, p, last = key[1:]
  if key not in cache:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, c, h, w), generator=g)
    weight = torch.randn((o, c, k, k), generator=g) / (k * k * c) ** 0.5
    with torch.no_grad():
      y = torch.nn.functional.conv2d(x, weight, stride=s, padding=p)
    dy = torch.randn(y.shape, generator=g)
    if last:
      x, weight, dy = (t.contiguous(memory_format=torch.channels_last)
                       for t in (x, weight, dy))
    cache.clear()
    cache[key] = x, weight, dy
  x, weight, dy = cache[key]
  which = cmd['which']
  mask = [which == 'dX', which == 'dW', False]
  secs = []
  with torch.no_grad():
    for _ in range(cmd['reps']):
      t0 = time.perf_counter()
      if which == 'fwd':
        torch.nn.functional.conv2d(x, weight, stride=s, padding=p)
      else:
        torch.ops.aten.convolution_backward(dy, x, weight, None, [s, s], [p, p], [1, 1],
                                            False, [0, 0], 1, mask)
      secs.append(time.perf_counter() - t0)
  return secs


def main():
  print(json.dumps({'torch': torch.__version__, 'threads': torch.get_num_threads()}),
        flush=True)
  cache = {}
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get('cmd') == 'quit':
      break
    if cmd.get('op') == 'conv':
      print(json.dumps({'seconds': conv(cmd, cache)}), flush=True)
      continue
    key = tuple(cmd[k] for k in ('batch', 'm', 'k', 'n', 'trans_a', 'trans_b'))
    if key not in cache:
      b, m, k, n, ta, tb = key
      g = torch.Generator().manual_seed(0)
      a = torch.randn((b, k, m) if ta else (b, m, k), generator=g)
      w = torch.randn((b, n, k) if tb else (b, k, n), generator=g)
      cache = {key: (a.transpose(1, 2) if ta else a, w.transpose(1, 2) if tb else w)}
    a, w = cache[key]
    secs = []
    for _ in range(cmd['reps']):
      t0 = time.perf_counter()
      torch.matmul(a, w)
      secs.append(time.perf_counter() - t0)
    print(json.dumps({'seconds': secs}), flush=True)


if __name__ == '__main__':
  main()
