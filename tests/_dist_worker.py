"""One process of a local multi-process JAX group, run by the e2e tests
(tests/e2e/test_process_groups.py, tests/e2e/test_launch.py).

Usage: python tests/_dist_worker.py MODE --coordinator_address=HOST:PORT
  --num_processes=N --process_id=I [--heartbeat_timeout_s=S]
  [--init_timeout_s=S] [--raise_on=ID] [--abort_on=ID]
(the flags launch/local.sh appends).

MODE ``sum``: print one JSON line with the group's view and two global sums,
then exit 0. MODE ``loop``: print ``READY`` after the first collective and
keep running collectives until killed; with ``--raise_on=ID`` process ID
raises an exception after a few iterations instead, with ``--abort_on=ID``
it calls ``distributed.abort`` (status 2).
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dlresearch import distributed


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('mode', choices=('sum', 'loop'))
  parser.add_argument('--coordinator_address', required=True)
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument('--process_id', type=int, required=True)
  parser.add_argument('--heartbeat_timeout_s', type=int, default=60)
  parser.add_argument('--init_timeout_s', type=int, default=60)
  parser.add_argument('--raise_on', type=int, default=-1)
  parser.add_argument('--abort_on', type=int, default=-1)
  args = parser.parse_args()

  distributed.initialize(
      args.coordinator_address, args.num_processes, args.process_id,
      heartbeat_timeout_s=args.heartbeat_timeout_s,
      init_timeout_s=args.init_timeout_s)

  mesh = jax.make_mesh((jax.device_count(),), ('d',))
  sharding = NamedSharding(mesh, P('d'))
  n_local = jax.local_device_count()
  first = n_local * jax.process_index() + 1
  local = (np.arange(first, first + n_local, dtype=np.float32)) ** 2
  x = jax.make_array_from_process_local_data(sharding, local)
  total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
  psum = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, 'd'), mesh=mesh,
                               in_specs=P('d'), out_specs=P()))

  if args.mode == 'sum':
    result = json.dumps({
        'process_index': jax.process_index(),
        'process_count': jax.process_count(),
        'device_count': jax.device_count(),
        'local_device_count': n_local,
        'global_shape': list(x.shape),
        'sum': float(total(x).addressable_data(0)),
        'psum': float(psum(x).addressable_data(0)[0]),
        'is_coordinator': distributed.is_coordinator(),
    })
    os.write(1, (result + '\n').encode())  # one write: stdout may be shared
    return

  psum(x).block_until_ready()
  print('READY', flush=True)
  step = 0
  while True:
    psum(x).block_until_ready()
    step += 1
    if step == 20 and args.process_id == args.raise_on:
      raise RuntimeError(f'deliberate failure in process {args.process_id}')
    if step == 20 and args.process_id == args.abort_on:
      distributed.abort(f'deliberate abort in process {args.process_id}', 2)
    time.sleep(0.01)


if __name__ == '__main__':
  sys.exit(main())
