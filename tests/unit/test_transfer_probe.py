"""benchmarks/transfer_probe.py: subsets, preprocessing and frozen features."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import transfer_probe
from dlresearch import problems
from dlresearch.data import subset, transforms
from dlresearch.data.builders import fashion_mnist_local
from dlresearch.models.mobilenet import MobileNetV2


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
  """The probe's train/test splits of 60/12 random Fashion-MNIST-format
  images, read at 32x32 through the finetune preset's eval path."""
  manual = tmp_path_factory.mktemp('fashion_manual')
  rng = np.random.default_rng(0)
  raw = {}
  for split, n in (('train', 60), ('test', 12)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 3 + (np.arange(n) >= n // 2) * 3).astype(np.uint8)
    image_file, label_file = fashion_mnist_local.FILES[split]
    fashion_mnist_local.write_idx(manual / image_file, images)
    fashion_mnist_local.write_idx(manual / label_file, labels)
    raw[split] = (images, labels)
  cfg = transfer_probe.probe_config(
      str(manual), 32, 'torch:unused.pth', 0,
      data_dir=str(tmp_path_factory.mktemp('tfds')))
  return cfg, raw, transfer_probe.load_splits(cfg)


def test_subsets_are_the_num_train_examples_subsets(splits):
  cfg, raw, (train, test, label_key, key) = splits
  assert (train.num_examples, test.num_examples) == (60, 12)
  np.testing.assert_array_equal(train.arrays[label_key].reshape(-1),
                                raw['train'][1])
  for n, seed in ((20, 0), (20, 1), (7, 2)):
    idx = transfer_probe.subset_indices(train, label_key, n, seed)
    np.testing.assert_array_equal(
        idx, subset.stratified_indices(raw['train'][1], n, seed))
    # What `experiments.finetune --num_train_examples=n --seed=seed` trains on.
    lib = problems.build(cfg.replace(num_train_examples=n, seed=seed), '')
    np.testing.assert_array_equal(lib.train.arrays[key],
                                  train.arrays[key][idx])
  assert not np.array_equal(transfer_probe.subset_indices(train, label_key, 20, 0),
                            transfer_probe.subset_indices(train, label_key, 20, 1))


def test_preprocessing_is_the_presets_eval_path(splits):
  _, raw, (train, test, _, key) = splits
  x = test.get(np.array([3]), None)[key]
  assert x.shape == (1, 32, 32, 3) and x.dtype == np.float32
  grey = raw['test'][0][3][..., None]
  rgb = np.repeat(transforms.resize_center_crop(grey, 32), 3, axis=-1)
  want = transforms.normalize(rgb[None], transforms.IMAGENET_MEAN,
                              transforms.IMAGENET_STD)
  np.testing.assert_allclose(x, want, atol=1e-6)
  assert train.get(np.array([0]), None)[key].shape == (1, 32, 32, 3)


def test_features_are_the_pooled_pre_logits_in_eval_mode(splits):
  _, _, (train, _, label_key, key) = splits
  model = MobileNetV2(num_classes=10, width_mult=0.35)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  # Non-trivial running statistics, so that eval mode is visible.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.5 if 'mean' in jax.tree_util.keystr(p) else v,
      variables)
  idx = transfer_probe.subset_indices(train, label_key, 20, 0)
  fn = transfer_probe.feature_fn(model, variables)
  feats = transfer_probe.extract(fn, train, key, idx, batch_size=8)
  assert feats.shape == (20, 1280)
  # Jitted (an eager MobileNetV2 apply is op by op: seconds per call).
  _, direct = jax.jit(functools.partial(model.apply, train=False, return_features=True))(
      variables, train.get(idx, None)[key])
  np.testing.assert_allclose(feats, np.asarray(direct['pre_logits']),
                             rtol=1e-4, atol=1e-5)
  # Eval mode: an image's features do not depend on its batch.
  alone = transfer_probe.extract(fn, train, key, idx[5:6], batch_size=8)
  np.testing.assert_allclose(alone[0], feats[5], rtol=1e-4, atol=1e-5)
  train_mode = jax.jit(functools.partial(
      model.apply, train=True, return_features=True, mutable=['batch_stats']))(
          variables, train.get(idx, None)[key], rngs={'dropout': jax.random.key(1)})[0][1]
  assert not np.allclose(np.asarray(train_mode['pre_logits']), feats,
                         atol=1e-3)


def test_fit_score_fixed_and_cross_validated_c():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 20)
  x = rng.normal(size=(60, 8)) + 4 * np.eye(3, 8)[y]
  y_test = np.repeat(np.arange(3), 10)
  x_test = rng.normal(size=(30, 8)) + 4 * np.eye(3, 8)[y_test]
  acc, c = transfer_probe.fit_score(x, y, x_test, y_test, '1.0')
  assert acc >= 0.9 and c == 1.0
  acc, c = transfer_probe.fit_score(x, y, x_test, y_test, 'cv')
  assert acc >= 0.9 and c in transfer_probe.C_GRID
  # Chance on shuffled labels: the score is the test accuracy, not training.
  acc, _ = transfer_probe.fit_score(x, y, x_test, rng.permutation(y_test), '1.0')
  assert acc < 0.7
