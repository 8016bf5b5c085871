"""Tests for dlresearch.data.augment: RandAugment ops, colour jitter, random
erasing, Mixup/CutMix soft targets, their flags, and exact resume."""

import json
import os
import pickle

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlresearch
from dlresearch import cli, config as config_lib, tasks, train
from dlresearch.config import ConfigError
from dlresearch.data import augment, pipeline, transforms
from experiments import cnn_imagenet, vit_imagenet

# Ops whose magnitude 0 is the identity (all but autocontrast, equalize).
NO_MAGNITUDE = ('autocontrast', 'equalize')


def _image(height=20, width=24, channels=3, seed=0):
  return np.random.default_rng(seed).integers(
      0, 256, (height, width, channels), dtype=np.uint8)


# ---------------------------------------------------------------- the ops


@pytest.mark.parametrize('name', sorted(augment.OPS))
@pytest.mark.parametrize('channels', [1, 3])
def test_op_is_deterministic_per_rng_with_shape_and_dtype(name, channels):
  op, image = augment.OPS[name], _image(channels=channels)
  a = op(image, 9.0, np.random.default_rng(1))
  b = op(image, 9.0, np.random.default_rng(1))
  assert a.shape == image.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(image, _image(channels=channels))  # unchanged
  if name == 'color' and channels == 1:  # saturation of grey: none
    np.testing.assert_array_equal(a, image)
  elif name not in NO_MAGNITUDE + ('identity',):
    assert not np.array_equal(a, image), f'{name} at magnitude 9 did nothing'


@pytest.mark.parametrize('name', sorted(set(augment.OPS) - set(NO_MAGNITUDE)))
def test_magnitude_zero_is_the_identity(name):
  image = _image()
  for seed in range(4):
    out = augment.OPS[name](image, 0.0, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, image)


def test_autocontrast_and_equalize_stretch_to_full_range():
  image = (_image() // 4 + 60).astype(np.uint8)  # values in [60, 123]
  for name in NO_MAGNITUDE:
    out = augment.OPS[name](image, 5.0, np.random.default_rng(0))
    assert out.min() == 0 and out.max() == 255, name


def test_solarize_and_posterize_at_full_magnitude():
  image = _image()
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(augment.solarize(image, 10.0, rng), 255 - image)
  np.testing.assert_array_equal(augment.posterize(image, 10.0, rng),
                                image & 0xF0)  # 4 bits kept
  half = augment.solarize(image, 5.0, rng)  # threshold 128
  np.testing.assert_array_equal(half, np.where(image >= 128, 255 - image, image))


def test_translate_moves_by_the_fraction_and_fills_grey():
  image = _image(20, 20)
  shift = 9  # 0.45 x 20 at magnitude 10
  for seed in range(6):
    x = augment.translate_x(image, 10.0, np.random.default_rng(seed))
    left = (np.array_equal(x[:, :-shift], image[:, shift:])
            and (x[:, -shift:] == augment.FILL).all())
    right = (np.array_equal(x[:, shift:], image[:, :-shift])
             and (x[:, :shift] == augment.FILL).all())
    assert left or right
    y = augment.translate_y(image, 10.0, np.random.default_rng(seed))
    assert (np.array_equal(y[:-shift], image[shift:])
            or np.array_equal(y[shift:], image[:-shift]))


def test_rotate_by_ninety_at_magnitude_thirty():
  image = _image(16, 16)
  out = augment.rotate(image, 30.0, np.random.default_rng(0))  # 90 degrees
  assert (np.array_equal(out, np.rot90(image, 1))
          or np.array_equal(out, np.rot90(image, -1)))


def test_enhance_factor_follows_magnitude():
  image = _image()
  rng = np.random.default_rng(3)
  sign = -1 if np.random.default_rng(3).random() < 0.5 else 1
  out = augment.brightness(image, 10.0, rng)  # factor 1 +- 0.9
  factor = max(0.1, 1 + sign * 0.9)
  expected = np.clip(image.astype(np.float64) * factor, 0, 255)
  assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


def test_rand_augment_deterministic_and_varies_with_rng():
  image = _image()
  runs = [augment.rand_augment(image, np.random.default_rng(s), 2, 9.0, 0.5)
          for s in (0, 0, 1, 2, 3)]
  np.testing.assert_array_equal(runs[0], runs[1])
  assert any(not np.array_equal(runs[0], r) for r in runs[2:])
  np.testing.assert_array_equal(
      augment.rand_augment(image, np.random.default_rng(0), 0, 9.0), image)
  for seed in range(5):  # magnitude 0: only autocontrast/equalize change it
    out = augment.rand_augment(image, np.random.default_rng(seed), 1, 0.0)
    assert out.shape == image.shape and out.dtype == np.uint8


def test_color_jitter():
  image = _image()
  np.testing.assert_array_equal(
      augment.color_jitter(image, np.random.default_rng(0), 0.0), image)
  a = augment.color_jitter(image, np.random.default_rng(5), 0.4)
  np.testing.assert_array_equal(
      a, augment.color_jitter(image, np.random.default_rng(5), 0.4))
  assert a.shape == image.shape and a.dtype == np.uint8
  assert not np.array_equal(a, image)


def test_random_erase_changes_one_rectangle_of_the_drawn_size():
  image = _image(32, 32)
  np.testing.assert_array_equal(
      augment.random_erase(image, np.random.default_rng(0), 0.0), image)
  for seed in range(5):
    out = augment.random_erase(image, np.random.default_rng(seed), 1.0)
    np.testing.assert_array_equal(
        out, augment.random_erase(image, np.random.default_rng(seed), 1.0))
    rows, cols = np.nonzero((out != image).any(-1))
    assert len(rows), 'nothing erased'
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert h * w <= 32 * 32 / 3 + 32  # the rounding of h and w
    assert h * w >= 0.02 * 32 * 32 / 2


def test_image_train_fn_defaults_keep_crop_flip_draws():
  """No recipe: the same pixels as the crop and flip alone (same draws)."""
  image = _image(40, 50)
  fn = pipeline.image_example_fn('crop_flip', 16, train=True)
  for seed in range(4):
    rng = np.random.default_rng(seed)
    expected = transforms.random_flip(
        transforms.random_resized_crop(image, rng, 16), rng)
    out = fn({'image': image}, np.random.default_rng(seed))['image']
    np.testing.assert_array_equal(out, expected)
  assert pipeline.image_example_fn('none', 0, train=True) is None
  assert pipeline.image_example_fn('none', 0, train=True,
                                   random_erase=0.5) is not None


def test_image_train_fn_pickles_and_runs_the_recipe():
  fn = pipeline.image_example_fn(
      'crop_flip', 16, train=True, crop_scale=(0.5, 1.0),
      crop_ratio=(0.8, 1.25), randaugment_ops=2, randaugment_magnitude=9.0,
      randaugment_magnitude_std=0.5, color_jitter=0.3, random_erase=0.5)
  again = pickle.loads(pickle.dumps(fn))
  image = _image(40, 50)
  a = fn({'image': image, 'label': 3}, np.random.default_rng(7))
  b = again({'image': image, 'label': 3}, np.random.default_rng(7))
  np.testing.assert_array_equal(a['image'], b['image'])
  assert a['image'].shape == (16, 16, 3) and a['label'] == 3


# ---------------------------------------------------------------- Mixup/CutMix


def _batch(n=8, size=6, classes=5, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(n, size, size, 3)).astype(np.float32),
          'label': rng.integers(0, classes, n)}


def test_soft_targets_rows_sum_to_one():
  t = augment.soft_targets(np.array([0, 3, 4]), 5, 0.1)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  assert t[1, 3] == pytest.approx(0.9 + 0.02) and t[1, 0] == pytest.approx(0.02)
  np.testing.assert_array_equal(augment.soft_targets(np.array([2]), 4),
                                [[0, 0, 1, 0]])


def test_mixup_image_and_targets_follow_the_formula():
  mix = augment.Mix(5, mixup_alpha=0.8, label_smoothing=0.1)
  batch = _batch()
  out = mix(batch, np.random.default_rng(11))
  lam, box = mix.draw(np.random.default_rng(11), 6, 6)
  assert box is None and 0 < lam < 1
  partner = [1, 0, 3, 2, 5, 4, 7, 6]
  x = batch['image']
  np.testing.assert_array_equal(
      out['image'], x * np.float32(lam) + x[partner] * np.float32(1 - lam))
  t = augment.soft_targets(batch['label'], 5, 0.1)
  np.testing.assert_allclose(out['label'], lam * t + (1 - lam) * t[partner],
                             rtol=1e-6)
  assert out['label'].dtype == np.float32 and out['label'].shape == (8, 5)
  np.testing.assert_allclose(out['label'].sum(-1), 1.0, rtol=1e-6)


def test_cutmix_pastes_the_partners_box_and_weighs_by_area():
  mix = augment.Mix(5, cutmix_alpha=1.0)
  batch = _batch(size=16)
  for seed in range(6):
    out = mix(batch, np.random.default_rng(seed))
    lam, box = mix.draw(np.random.default_rng(seed), 16, 16)
    top, bottom, left, right = box
    inside = np.zeros((16, 16), bool)
    inside[top:bottom, left:right] = True
    x, partner = batch['image'], np.arange(8) ^ 1
    np.testing.assert_array_equal(out['image'][:, inside], x[partner][:, inside])
    np.testing.assert_array_equal(out['image'][:, ~inside], x[:, ~inside])
    assert lam == pytest.approx(1 - inside.mean())
    np.testing.assert_allclose(out['label'].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out['label'].max(-1),
                               np.where(batch['label'] == batch['label'][partner],
                                        1.0, max(lam, 1 - lam)), rtol=1e-6)


def test_mix_switch_and_probability():
  both = augment.Mix(5, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
  kinds = {both.draw(np.random.default_rng(s), 8, 8)[1] is None
           for s in range(20)}
  assert kinds == {True, False}  # Mixup and CutMix batches
  never = augment.Mix(5, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0,
                      label_smoothing=0.1)
  batch = _batch()
  out = never(batch, np.random.default_rng(0))
  np.testing.assert_array_equal(out['image'], batch['image'])
  np.testing.assert_array_equal(
      out['label'], augment.soft_targets(batch['label'], 5, 0.1))
  with pytest.raises(ValueError, match='even batch'):
    augment.Mix(5, mixup_alpha=1.0)(_batch(n=5), np.random.default_rng(0))


def test_mixed_global_batch_does_not_depend_on_the_process_count():
  rng = np.random.default_rng(0)
  arrays = {'image': rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8),
            'label': rng.integers(0, 10, 64)}
  ds = pipeline.ArrayDataset(
      arrays, pipeline.image_example_fn('flip', 0, True, randaugment_ops=2),
      pipeline.image_batch_fn('scale'),
      augment.Mix(10, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1))
  one = pipeline.TrainIterator(ds, 16, seed=3, step=5)
  parts = [pipeline.TrainIterator(ds, 16, seed=3, step=5, process_index=i,
                                  process_count=2) for i in range(2)]
  for _ in range(3):
    whole, halves = next(one), [next(p) for p in parts]
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          whole[key], np.concatenate([h[key] for h in halves]))
  assert whole['label'].shape == (16, 10)
  # A fresh iterator at step 7 reproduces step 7 (resume).
  np.testing.assert_array_equal(
      next(pipeline.TrainIterator(ds, 16, seed=3, step=7))['image'],
      whole['image'])


@pytest.mark.slow  # starts a grain worker process
def test_grain_worker_process_gives_the_same_augmented_batches():
  rng = np.random.default_rng(1)
  arrays = {'image': rng.integers(0, 256, (64, 12, 12, 3), dtype=np.uint8),
            'label': rng.integers(0, 10, 64)}
  ds = pipeline.ArrayDataset(
      arrays, pipeline.image_example_fn(
          'crop_flip', 8, True, randaugment_ops=2, randaugment_magnitude=9.0,
          randaugment_magnitude_std=0.5, color_jitter=0.4, random_erase=0.5),
      pipeline.image_batch_fn('imagenet'),
      augment.Mix(10, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1))
  here = pipeline.TrainIterator(ds, 16, seed=2, step=3)
  worker = pipeline.TrainIterator(ds, 16, seed=2, step=3, workers=1)
  try:
    for _ in range(3):
      a, b = next(here), next(worker)
      for key in ('image', 'label'):
        np.testing.assert_array_equal(a[key], b[key])
  finally:
    worker.close()


# ---------------------------------------------------------------- soft labels


def test_soft_label_loss_equals_integer_label_loss_for_one_hot():
  logits = jax.random.normal(jax.random.PRNGKey(0), (6, 7)) * 3
  labels = jnp.array([0, 6, 2, 2, 5, 1])
  one_hot = jax.nn.one_hot(labels, 7)
  np.testing.assert_array_equal(tasks.softmax_xent(logits, one_hot),
                                tasks.softmax_xent(logits, labels))
  smoothed = augment.soft_targets(np.asarray(labels), 7, 0.1)
  np.testing.assert_allclose(tasks.softmax_xent(logits, smoothed),
                             tasks.softmax_xent(logits, labels, 0.1), rtol=1e-6)

  class Fixed:  # a model whose logits are given
    def apply(self, variables, x, train=False, rngs=None):
      del variables, x, train, rngs
      return logits

  task = tasks.Classification(label_smoothing=0.0)
  image = jnp.zeros((6, 2, 2, 1))
  hard, _ = task(Fixed(), {'params': {}}, {'image': image, 'label': labels},
                 train=True)
  soft, _ = task(Fixed(), {'params': {}}, {'image': image, 'label': one_hot},
                 train=True)
  assert hard.keys() == soft.keys() and 'top5_accuracy' in hard
  for k in hard:
    np.testing.assert_array_equal(hard[k], soft[k])


# ---------------------------------------------------------------- flags, presets


def test_recipe_flags_have_help_and_ranges():
  fv = flags.FlagValues()
  cli.define_flags(cnn_imagenet.PRESETS, 'quickstart', fv)
  for name in ('crop_scale_min', 'crop_ratio_max', 'randaugment_ops',
               'randaugment_magnitude', 'randaugment_magnitude_std',
               'color_jitter', 'random_erase', 'mixup_alpha', 'cutmix_alpha',
               'mix_prob', 'mix_switch_prob'):
    assert fv[name].help, name
  fv(['prog', '--randaugment_ops=2', '--mixup_alpha=0.8', '--cutmix_alpha=1'])
  cfg = cli.resolve(cnn_imagenet.PRESETS, fv)
  assert (cfg.randaugment_ops, cfg.mixup_alpha, cfg.cutmix_alpha) == (2, 0.8, 1)
  base = cnn_imagenet.PRESETS['quickstart'].config
  for bad, flag in ((dict(randaugment_ops=15), 'randaugment_ops'),
                    (dict(randaugment_magnitude=31.0), 'randaugment_magnitude'),
                    (dict(randaugment_magnitude_std=-1.0),
                     'randaugment_magnitude_std'),
                    (dict(crop_scale_min=0.0), 'crop_scale_min'),
                    (dict(crop_ratio_max=0.5), 'crop_ratio_max'),
                    (dict(color_jitter=1.5), 'color_jitter'),
                    (dict(random_erase=2.0), 'random_erase'),
                    (dict(mixup_alpha=-1.0), 'mixup_alpha'),
                    (dict(mix_prob=1.5), 'mix_prob'),
                    (dict(mix_switch_prob=-0.1), 'mix_switch_prob'),
                    (dict(mixup_alpha=0.2, batch_size=63), 'batch_size')):
    with pytest.raises(ConfigError, match=f'--{flag}'):
      config_lib.validate(base.replace(**bad))


def test_presets_carry_the_published_recipes():
  vit = vit_imagenet.PRESETS['vit_s16_i1k'].config
  assert (vit.randaugment_ops, vit.randaugment_magnitude,
          vit.randaugment_magnitude_std) == (2, 9.0, 0.5)
  assert (vit.mixup_alpha, vit.cutmix_alpha, vit.mix_prob,
          vit.mix_switch_prob, vit.label_smoothing, vit.random_erase) == (
              0.8, 1.0, 1.0, 0.5, 0.1, 0.25)
  rn = cnn_imagenet.PRESETS['resnet50_imagenet'].config
  assert (rn.mixup_alpha, rn.cutmix_alpha, rn.label_smoothing,
          rn.random_erase, rn.learning_rate, rn.weight_decay) == (
              0.2, 1.0, 0.1, 0.1, 0.5, 2e-5)
  for p in (vit_imagenet.PRESETS['vit_s16_i1k'],
            cnn_imagenet.PRESETS['resnet50_imagenet']):
    tiny = config_lib.override(p.config, p.tiny)
    assert tiny.mixup_alpha and tiny.randaugment_ops  # CI takes the path
    config_lib.validate(tiny)


# ---------------------------------------------------------------- exact resume


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _recipe_cfg(data_dir, num_steps):
  p = cnn_imagenet.PRESETS['quickstart']
  return config_lib.override(p.config, {
      **p.tiny, 'data_dir': data_dir, 'num_steps': num_steps,
      'schedule': 'constant', 'log_every': 1, 'checkpoint_every': 3,
      'eval_every': 0, 'augment': 'pad_crop_flip', 'randaugment_ops': 2,
      'randaugment_magnitude': 9.0, 'randaugment_magnitude_std': 0.5,
      'color_jitter': 0.3, 'random_erase': 0.25, 'mixup_alpha': 0.8,
      'cutmix_alpha': 1.0, 'label_smoothing': 0.1})


def _train_lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(l) for l in f]
  return [{k: v for k, v in l.items() if k != 'time'} for l in lines
          if l['split'] == 'train']


def test_training_with_the_recipe_resumes_bit_identically(tmp_path, data_dir):
  whole, halves = str(tmp_path / 'whole'), str(tmp_path / 'halves')
  train.run(_recipe_cfg(data_dir, 6), whole)
  train.run(_recipe_cfg(data_dir, 3), halves)
  train.run(_recipe_cfg(data_dir, 6), halves)
  a, b = _train_lines(whole), _train_lines(halves)
  assert [l['step'] for l in a] == list(range(1, 7))
  assert a == b
  assert all(np.isfinite(l['loss']) for l in a)
  va = dlresearch.restore(whole).variables
  vb = dlresearch.restore(halves).variables
  jax.tree.map(np.testing.assert_array_equal, va, vb)


@pytest.mark.slow  # compiles a ViT and starts a grain worker process
def test_deit_preset_tiny_trains_through_grain_workers(tmp_path):
  """vit_s16_i1k --tiny on mock ImageNet: the whole recipe, pickled into a
  real grain worker process, two steps."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from dlresearch import logging as log_lib, problems  # pylint: disable=import-outside-toplevel
  p = vit_imagenet.PRESETS['vit_s16_i1k']
  cfg = config_lib.override(p.config, {**p.tiny,
                                       'data_dir': str(tmp_path / 'tfds')})
  assert cfg.grain_workers >= 1
  with tfds.testing.mock_data(num_examples=24):
    data = problems.build(cfg, str(tmp_path / 'run'))
    assert data.task.label_smoothing == 0.0  # folded into the targets
    batch = data.train.get(np.arange(4), [np.random.default_rng(i)
                                          for i in range(4)])
    assert batch['image'].shape == (4, 32, 32, 3)
    result = train.run(cfg, str(tmp_path / 'run'))
  lines = log_lib.read_metrics(str(tmp_path / 'run'))
  assert [l['step'] for l in lines if l['split'] == 'train'] == [1, 2]
  assert all(np.isfinite(l['loss']) for l in lines)
  assert result['step'] == 2
