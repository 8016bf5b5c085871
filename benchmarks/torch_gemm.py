"""PyTorch's side of ``benchmarks.kernels``: times ``torch.matmul`` on request.

Run by ``benchmarks.kernels`` in the ``--torch_python`` interpreter (needs
only torch and numpy). Reads one JSON command per line on stdin:
``{"batch", "m", "k", "n", "trans_a", "trans_b", "reps"}``, answers
``{"seconds": [...]}`` (one per rep); ``{"cmd": "quit"}`` ends it.
"""

import json
import sys
import time

import torch


def main():
  print(json.dumps({'torch': torch.__version__, 'threads': torch.get_num_threads()}),
        flush=True)
  cache = {}
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get('cmd') == 'quit':
      break
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
