"""The classification kind gives every split (the test split evaluated at the
end included) the same input transforms."""

import numpy as np

from dlresearch.config import Config
from dlresearch import problems
from dlresearch.data import pipeline


def test_channel_repeat_and_pixel_permutation_reach_the_test_split(
    tmp_path_factory):
  cfg = Config(dataset='digits', data_dir=str(tmp_path_factory.mktemp('tfds')),
               eval_split='test[:20]', image_channels=3, shuffle_spatial=True)
  data = problems.build(cfg, str(tmp_path_factory.mktemp('run')))
  assert data.test_split == 'test' and data.eval_split == 'test[:20]'

  def first(dataset, n=20):
    return next(pipeline.eval_batches(dataset, n))

  ev, te = first(data.eval), first(data.test)
  assert ev['image'].shape[-1] == te['image'].shape[-1] == 3
  # test[:20] is the first 20 examples of test: the same transformed pixels.
  np.testing.assert_array_equal(te['image'], ev['image'])
  np.testing.assert_array_equal(te['label'], ev['label'])
  # ... and they are permuted: not the raw images repeated.
  plain = problems.build(cfg.replace(shuffle_spatial=False),
                      str(tmp_path_factory.mktemp('run2')))
  raw = first(plain.test)['image']
  assert raw.shape == te['image'].shape
  assert not np.array_equal(raw, te['image'])
  np.testing.assert_array_equal(np.sort(raw.reshape(20, -1), 1),
                                np.sort(te['image'].reshape(20, -1), 1))
