"""dlresearch.data.pipeline: data order as a function of (seed, step),
per-example augmentation, eval batches covering every example once, and the
imagenet2012 path on tfds.testing.mock_data (real decode, crop, flip)."""

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
    if cfg.mixup_alpha:  # the recipe's Mixup/CutMix: soft targets
      assert batch['label'].shape == (16, 1000)
      np.testing.assert_allclose(batch['label'].sum(-1), 1.0, rtol=1e-5)
    else:
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


def _digits_like(n=50):
  rng = np.random.default_rng(0)
  return {'image': rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8),
          'label': np.arange(n, dtype=np.int32) % 10}


def test_global_batch_depends_only_on_seed_and_step():
  ds = pipeline.ArrayDataset(_digits_like())
  a = pipeline.TrainIterator(ds, batch_size=8, seed=3)
  batches = [next(a)['label'] for _ in range(9)]
  b = pipeline.TrainIterator(ds, batch_size=8, seed=3, step=5)  # resumed
  np.testing.assert_array_equal(next(b)['label'], batches[5])
  # Each epoch (6 steps of 8 from 50) is a permutation without repeats.
  idx = np.concatenate([pipeline.global_indices(s, num_examples=50, batch_size=8,
                                                seed=3) for s in range(6)])
  assert len(set(idx.tolist())) == 48
  assert not np.array_equal(idx[:8], pipeline.global_indices(
      6, num_examples=50, batch_size=8, seed=3))  # reshuffled next epoch
  # Two processes' slices concatenate to the single-process batch.
  parts = [next(pipeline.TrainIterator(ds, 8, 3, step=4, process_index=p,
                                       process_count=2))['label'] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(parts), batches[4])
  # The grain-threaded path yields the same batches.
  g = pipeline.TrainIterator(ds, batch_size=8, seed=3, step=2, threads=2)
  np.testing.assert_array_equal(next(g)['label'], batches[2])
  assert g.state() == {'step': 3, 'seed': 3, 'batch_size': 8}


def test_augmentation_is_per_example_and_reproducible():
  fn = pipeline.image_example_fn('pad_crop_flip', 0, train=True)
  ds = pipeline.ArrayDataset(_digits_like(), fn, pipeline.image_batch_fn('scale'))
  x1 = next(pipeline.TrainIterator(ds, 8, seed=1, step=3))['image']
  x2 = next(pipeline.TrainIterator(ds, 8, seed=1, step=3))['image']
  plain = next(pipeline.TrainIterator(pipeline.ArrayDataset(_digits_like()), 8,
                                      seed=1, step=3))['image'] / 255.0
  np.testing.assert_array_equal(x1, x2)
  assert x1.dtype == np.float32 and x1.shape == (8, 8, 8, 1)
  assert not np.allclose(x1, plain)


def test_eval_batches_cover_every_example_once():
  ds = pipeline.ArrayDataset(_digits_like(37))
  seen, valid = [], 0.0
  for p in (0, 1):
    for b in pipeline.eval_batches(ds, 16, process_index=p, process_count=2):
      seen.extend(b['label'][b['_valid'] > 0].tolist())
      valid += b['_valid'].sum()
      assert b['image'].shape[0] == 8
  assert valid == 37 and sorted(seen) == sorted((np.arange(37) % 10).tolist())


def test_imagenet_presets_tiny_forms_keep_a_grain_worker():
  """CI runs every preset's --tiny form: those of the presets that read
  with grain worker processes keep at least one, so CI takes that path."""
  from experiments import vit_imagenet  # pylint: disable=import-outside-toplevel
  checked = []
  for presets in (PRESETS, vit_imagenet.PRESETS):
    for name, p in presets.items():
      if p.config.grain_workers:
        tiny = config_lib.override(p.config, p.tiny)
        assert tiny.pipeline == 'grain' and tiny.grain_workers >= 1, name
        checked.append(name)
  assert sorted(checked) == ['alexnet_imagenet', 'resnet50_imagenet',
                             'vit_s16_i1k']


def test_memory_and_grain_paths_give_the_same_augmented_batches(tmp_path):
  """docs/data.md: a split held in memory (batched by index) and the same
  split read example by example through grain give the same batches for
  the same seed and step, augmentation and Mixup/CutMix included."""
  p = PRESETS['quickstart']
  base = config_lib.override(p.config, {
      **p.tiny, 'data_dir': str(tmp_path / 'tfds'), 'augment': 'pad_crop_flip',
      'randaugment_ops': 2, 'randaugment_magnitude': 9.0,
      'random_erase': 0.25, 'mixup_alpha': 0.8, 'cutmix_alpha': 1.0,
      'label_smoothing': 0.1})
  built = {kind: problems.build(base.replace(pipeline=kind),
                                str(tmp_path / kind))
           for kind in ('memory', 'grain')}
  assert isinstance(built['memory'].train, pipeline.ArrayDataset)
  assert isinstance(built['grain'].train, pipeline.SourceDataset)
  assert built['grain'].use_grain and not built['memory'].use_grain
  memory = pipeline.TrainIterator(built['memory'].train, 64, seed=0, step=3)
  grain = pipeline.TrainIterator(built['grain'].train, 64, seed=0, step=3,
                                 threads=2)
  try:
    for _ in range(2):
      a, b = next(memory), next(grain)
      assert a.keys() == b.keys() and a['label'].shape == (64, 10)
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  finally:
    grain.close()
  ea = next(pipeline.eval_batches(built['memory'].eval, 64))
  eb = next(pipeline.eval_batches(built['grain'].eval, 64))
  for k in ea:
    np.testing.assert_array_equal(ea[k], eb[k])
