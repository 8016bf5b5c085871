"""dlresearch: a JAX functional research framework for deep learning.

From a notebook or a script::

    import dlresearch
    cfg = dlresearch.Config(dataset='digits', model='lenet5', num_steps=300)
    result = dlresearch.train.run(cfg, 'runs/nb')     # final eval metrics
    run = dlresearch.restore('runs/nb')               # model + variables
    logits = run.predict(images)

Presets are importable too: ``from experiments.cnn_imagenet import PRESETS``
from the repository root. Submodules load on first use, so ``import
dlresearch`` is cheap. Importing it sets glibc's malloc to keep freed memory
in the process (``host_memory.py``; opt out with
``DLRESEARCH_KEEP_HOST_MEMORY=0``): import dlresearch before jax runs
anything, or the setting only partly applies.
"""

import importlib

from dlresearch import host_memory

# Before jax starts its CPU backend: XLA:CPU's per-step buffers reused, not
# faulted in again every step (host_memory.py; 1.04-1.20x on the CPU benchmarks).
host_memory.keep_freed_memory()

__version__ = '0.1.0'
__all__ = ['Config', 'restore', 'train']


def __getattr__(name):
  if name == 'Config':
    return importlib.import_module('dlresearch.config').Config
  if name == 'restore':
    return importlib.import_module('dlresearch.tools.inference').restore
  if name == 'train':
    return importlib.import_module('dlresearch.train')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
