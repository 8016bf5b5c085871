"""Real runs: orbax's routine log lines stay off the console, and the
persistent compilation cache (``--compilation_cache``) fills, is reused by a
fresh process, and is off with ``none``.

The end-to-end tests share three real CLI runs (``experiments.cnn_imagenet
--tiny`` on digits, in subprocesses): A trains 10 steps with checkpoints and
an explicit cache directory; B resumes A's workdir (an orbax restore) to 20
steps with the same cache directory; C evaluates the workdir
(``--eval_only``, another restore) with ``--compilation_cache=none`` while
``JAX_COMPILATION_CACHE_DIR`` and ``HOME`` point at empty directories.
"""

import os
import subprocess
import sys

import pytest

from _orbax_lines import orbax_lines_below_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- real runs ----------------------------------------------------------------


def _cache_entries(directory):
  if not os.path.isdir(directory):
    return set()
  return {n for n in os.listdir(directory) if n.endswith('-cache')}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp('quiet')
  workdir, cache = str(base / 'run'), str(base / 'cache')
  env_cache, home = base / 'env_cache', base / 'home'
  env_cache.mkdir()
  home.mkdir()
  env = {**os.environ, 'PYTHONPATH': ROOT,
         # Every program the runs compile is kept (no compile-time threshold).
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
         'JAX_LOG_COMPILES': '1'}  # cache hits are logged at WARNING
  common = ['--progress=lines', '--model_summary=false', '--plots=false']

  def cli(*args, **extra_env):
    done = subprocess.run(
        [sys.executable, '-m', 'experiments.cnn_imagenet', *args, *common],
        cwd=ROOT, env={**env, **extra_env}, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done

  first = cli('--tiny', f'--workdir={workdir}',
              f'--data_dir={base / "tfds"}', f'--compilation_cache={cache}',
              '--num_steps=10', '--checkpoint_every=5', '--eval_every=5',
              '--schedule=constant')
  after_first = _cache_entries(cache)
  resumed = cli(f'--workdir={workdir}', '--num_steps=20',
                f'--compilation_cache={cache}')
  after_resume = _cache_entries(cache)
  off = cli(f'--workdir={workdir}', '--eval_only', '--compilation_cache=none',
            JAX_COMPILATION_CACHE_DIR=str(env_cache), HOME=str(home))
  return dict(first=first, resumed=resumed, off=off, after_first=after_first,
              after_resume=after_resume, env_cache=str(env_cache),
              home=str(home), workdir=workdir)


def test_orbax_below_error_never_reaches_stderr_of_save_and_restore(runs):
  assert os.listdir(os.path.join(runs['workdir'], 'checkpoints'))
  assert 'resumed from step 10' in runs['resumed'].stderr
  for name in ('first', 'resumed', 'off'):
    stderr = runs[name].stderr
    assert orbax_lines_below_error(stderr) == [], name
    assert 'final eval at step' in runs[name].stdout  # the runs did run


def test_compilation_cache_is_filled_then_reused_by_a_fresh_process(runs):
  names = {n.split('-')[0] for n in runs['after_first']}
  assert {'jit_train_step', 'jit_eval_step'} <= names, names
  # The resumed run (a fresh process) compiles the same train and eval
  # steps: read back from the cache, and nothing new written for them.
  stderr = runs['resumed'].stderr
  assert "Persistent compilation cache hit for 'jit_train_step'" in stderr
  assert "Persistent compilation cache hit for 'jit_eval_step'" in stderr
  new = runs['after_resume'] - runs['after_first']
  assert not {n for n in new if n.startswith(('jit_train_step',
                                              'jit_eval_step'))}, new
  # The first run found nothing to reuse.
  assert 'Persistent compilation cache hit' not in runs['first'].stderr


def test_compilation_cache_none_writes_nothing(runs):
  assert 'final eval at step 20' in runs['off'].stdout
  assert os.listdir(runs['env_cache']) == []
  # Not the default directory either (other libraries' caches may appear).
  assert not os.path.exists(os.path.join(runs['home'], '.cache', 'dlresearch'))
  entries = [f for _, _, fs in os.walk(runs['home']) for f in fs
             if f.startswith('jit_')]
  assert entries == []
  assert 'Persistent compilation cache hit' not in runs['off'].stderr


def test_a_second_run_in_one_process_opens_its_own_cache(tmp_path,
                                                         monkeypatch):
  """A notebook's second ``run`` with another directory (or ``none``) gets
  it, although JAX opened the first directory at the first compile."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dlresearch import train  # pylint: disable=g-import-not-at-top

  before = (jax.config.jax_enable_compilation_cache,
            jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  first, second = str(tmp_path / 'first'), str(tmp_path / 'second')

  def compile_one(scale):  # a program of its own (the scale is a constant)
    f = jax.jit(lambda x: jax.numpy.tanh(x) * scale)
    f(np.ones(8, np.float32)).block_until_ready()

  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  try:
    train.use_compilation_cache(first)
    compile_one(1.5)
    assert os.listdir(first)
    train.use_compilation_cache(second)
    compile_one(2.5)
    assert os.listdir(second)
    train.use_compilation_cache('none')
    kept = sorted(os.listdir(first) + os.listdir(second))
    compile_one(3.5)
    assert sorted(os.listdir(first) + os.listdir(second)) == kept
  finally:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', before[2])
    jax.config.update('jax_compilation_cache_dir', before[1])
    jax.config.update('jax_enable_compilation_cache', before[0])
    from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
    compilation_cache.reset_cache()
