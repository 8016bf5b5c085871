"""host_memory: glibc keeps XLA:CPU's freed buffers, so steps stop faulting pages in."""

import json
import os
import platform
import subprocess
import sys

import pytest

from dlresearch import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A fresh process: import dlresearch (which applies the setting), then run a
# jitted op whose 64 MiB output is allocated, written and freed each call;
# print whether the setting applied and the median page faults of the last
# 20 calls (the heap settles within the first few: more on a loaded machine).
PROBE = r'''
import json, resource
import dlresearch
import jax, jax.numpy as jnp
x = jnp.ones((4096, 4096), jnp.float32)
f = jax.jit(lambda x: x * 2.0)
faults = []
for _ in range(40):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  y = f(x)
  y.block_until_ready()
  del y
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": dlresearch.host_memory.applied, "faults": sorted(faults[-20:])[10]}))
'''


def probe(**env_changes) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in host_memory._USER_SETTINGS + (host_memory.ENV, 'GLIBC_TUNABLES')}
  env.update(env_changes)
  env['JAX_PLATFORMS'] = 'cpu'
  out = subprocess.run([sys.executable, '-c', PROBE], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


# host_memory tunes glibc's malloc and, by design, leaves other C libraries
# (macOS, musl) alone: there is no setting to observe.
GLIBC = platform.libc_ver()[0] == 'glibc'


@pytest.mark.skipif(not GLIBC, reason="host_memory only tunes glibc's malloc; "
                    'with another C library it applies nothing')
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
  kept = probe()
  default = probe(**{host_memory.ENV: '0'})
  assert kept['applied'] and not default['applied']
  # 64 MiB = 16,384 pages of 4 KiB: glibc's default maps them afresh each call.
  assert default['faults'] > 8000, default
  assert kept['faults'] < 500, kept


@pytest.mark.skipif(not GLIBC, reason='without glibc the setting never applies, '
                    'so "not applied" would pass without testing the check')
def test_a_user_malloc_setting_wins():
  assert not probe(MALLOC_ARENA_MAX='4')['applied']
  assert not probe(GLIBC_TUNABLES='glibc.malloc.trim_threshold=1000')['applied']


def test_opt_out_and_user_settings_are_recognised():
  assert host_memory._user_tunes_malloc({'MALLOC_MMAP_MAX_': '0'})
  assert host_memory._user_tunes_malloc({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert not host_memory._user_tunes_malloc({'GLIBC_TUNABLES': 'glibc.cpu.hwcaps=-AVX'})
  assert not host_memory._user_tunes_malloc({})
