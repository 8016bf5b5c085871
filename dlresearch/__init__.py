"""dlresearch: a JAX functional research framework for deep learning.

From a notebook or a script::

    import dlresearch
    cfg = dlresearch.Config(dataset='digits', model='lenet5', num_steps=300)
    result = dlresearch.train.run(cfg, 'runs/nb')     # final eval metrics
    run = dlresearch.restore('runs/nb')               # model + variables
    logits = run.predict(images)

Presets are importable too: ``from experiments.cnn_imagenet import PRESETS``
from the repository root. Submodules load on first use, so ``import
dlresearch`` is cheap.
"""

import importlib

__version__ = '0.1.0'
__all__ = ['Config', 'restore', 'train']


def __getattr__(name):
  if name == 'Config':
    return importlib.import_module('dlresearch.config').Config
  if name == 'restore':
    return importlib.import_module('dlresearch.inference').restore
  if name == 'train':
    return importlib.import_module('dlresearch.train')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
