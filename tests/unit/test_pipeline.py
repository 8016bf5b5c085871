"""The imagenet2012 path on tfds.testing.mock_data: real decode, crop, flip."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dlresearch import config as config_lib, logging as log_lib, train
from dlresearch import problems
from dlresearch.data import pipeline
from experiments.cnn_imagenet import PRESETS


@pytest.mark.parametrize('preset', ['resnet50_imagenet', 'alexnet_imagenet'])
def test_imagenet_preset_tiny_runs_on_mock_data(tmp_path, preset):
  p = PRESETS[preset]
  cfg = config_lib.override(p.config, {**p.tiny, 'data_dir': str(tmp_path / 'tfds')})
  assert cfg.dataset == 'imagenet2012' and cfg.augment == 'crop_flip'
  with tfds.testing.mock_data(num_examples=24):
    data = problems.build(cfg, str(tmp_path / 'run'))
    assert data.use_grain  # images vary in size: read example by example
    batch = next(pipeline.TrainIterator(data.train, 16, seed=0, threads=2))
    assert batch['image'].shape == (16, 32, 32, 3)
    assert batch['image'].dtype == np.float32
    # ImageNet mean/std normalisation: roughly centred, not in [0, 1].
    assert batch['image'].min() < 0 < batch['image'].max()
    assert batch['label'].shape == (16,) and batch['label'].max() < 1000
    evals = list(pipeline.eval_batches(data.eval, 16))
    assert sum(b['_valid'].sum() for b in evals) == data.eval.num_examples
    assert all(b['image'].shape == (16, 32, 32, 3) for b in evals)
    result = train.run(cfg, str(tmp_path / 'run'))
  lines = log_lib.read_metrics(str(tmp_path / 'run'))
  assert [(l['step'], l['split']) for l in lines] == [(1, 'train'), (2, 'eval'), (2, 'train')]
  assert np.isfinite(lines[0]['loss'])
  assert result['step'] == 2 and 0.0 <= result['top5_accuracy'] <= 1.0


def test_random_crops_and_flips_differ_per_step(tmp_path):
  p = PRESETS['resnet50_imagenet']
  cfg = config_lib.override(p.config, {**p.tiny, 'data_dir': str(tmp_path)})
  with tfds.testing.mock_data(num_examples=16):
    data = problems.build(cfg, str(tmp_path / 'run'))
    first = data.train.get(np.arange(4), [np.random.default_rng(i) for i in range(4)])
    again = data.train.get(np.arange(4), [np.random.default_rng(i) for i in range(4)])
    other = data.train.get(np.arange(4), [np.random.default_rng(i + 9) for i in range(4)])
  np.testing.assert_array_equal(first['image'], again['image'])
  assert not np.allclose(first['image'], other['image'])
