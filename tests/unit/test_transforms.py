"""Tests for dlresearch.data.transforms."""

import numpy as np
from PIL import Image
import pytest

from dlresearch.data import transforms


def _image(height, width, channels=3, seed=0):
  return np.random.default_rng(seed).integers(
      0, 256, (height, width, channels), dtype=np.uint8
  )


def _windows(image, h, w):
  """All h x w windows of `image`, as (top, left) -> window."""
  return {
      (i, j): image[i:i + h, j:j + w]
      for i in range(image.shape[0] - h + 1)
      for j in range(image.shape[1] - w + 1)
  }


@pytest.mark.parametrize('channels', [1, 2, 3, 4])
def test_random_resized_crop_shape_dtype(channels):
  out = transforms.random_resized_crop(
      _image(20, 30, channels), np.random.default_rng(0), size=12
  )
  assert out.shape == (12, 12, channels)
  assert out.dtype == np.uint8


def test_random_resized_crop_deterministic_per_seed():
  image = _image(40, 50)
  a = transforms.random_resized_crop(image, np.random.default_rng(7), 16)
  b = transforms.random_resized_crop(image, np.random.default_rng(7), 16)
  c = transforms.random_resized_crop(image, np.random.default_rng(8), 16)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_random_resized_crop_full_image_when_scale_and_ratio_are_one():
  image = _image(16, 16)
  for seed in range(5):
    rng = np.random.default_rng(seed)
    same = transforms.random_resized_crop(image, rng, 16, (1, 1), (1, 1))
    np.testing.assert_array_equal(same, image)
    half = transforms.random_resized_crop(image, rng, 8, (1, 1), (1, 1))
    expected = np.asarray(
        Image.fromarray(image).resize((8, 8), Image.Resampling.BILINEAR)
    )
    np.testing.assert_array_equal(half, expected)


def test_random_resized_crop_takes_a_window_of_the_drawn_size():
  image = _image(16, 16)
  windows = _windows(image, 8, 8)
  tops_lefts = set()
  for seed in range(8):
    out = transforms.random_resized_crop(
        image, np.random.default_rng(seed), 8, scale=(0.25, 0.25), ratio=(1, 1)
    )
    hits = [k for k, w in windows.items() if np.array_equal(w, out)]
    assert hits, 'output is not an 8x8 window of the input'
    tops_lefts.update(hits)
  assert len(tops_lefts) > 1  # The position is random.


def test_random_resized_crop_falls_back_to_center_crop():
  image = _image(8, 16)
  # An area of twice the image never fits: center crop with aspect 1.
  out = transforms.random_resized_crop(
      image, np.random.default_rng(0), 8, scale=(2, 2), ratio=(1, 1)
  )
  np.testing.assert_array_equal(out, image[:, 4:12])


def test_per_channel_resize_matches_rgb_resize():
  image = _image(20, 24)
  rgb = transforms.random_resized_crop(image, np.random.default_rng(3), 10)
  channels = [
      transforms.random_resized_crop(
          image[..., c:c + 1], np.random.default_rng(3), 10
      )
      for c in range(3)
  ]
  np.testing.assert_array_equal(rgb, np.concatenate(channels, axis=-1))


def test_random_flip_flips_about_half_the_time():
  image = _image(4, 6)
  rng = np.random.default_rng(0)
  flipped = 0
  for _ in range(400):
    out = transforms.random_flip(image, rng)
    assert out.shape == image.shape and out.dtype == np.uint8
    if np.array_equal(out, image[:, ::-1]):
      flipped += 1
      assert out[0, 0, 0] == image[0, -1, 0]
    else:
      np.testing.assert_array_equal(out, image)
  assert 160 < flipped < 240


def test_random_flip_deterministic_per_seed():
  image = _image(4, 6)
  flip = transforms.random_flip
  a = [flip(image, np.random.default_rng(s)) for s in range(8)]
  b = [flip(image, np.random.default_rng(s)) for s in range(8)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_pad_random_crop_is_a_window_of_the_zero_padded_image():
  image = _image(6, 5) | 1  # No zeros inside, so padding is recognisable.
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
  windows = _windows(padded, 6, 5)
  seen = set()
  for seed in range(30):
    out = transforms.pad_random_crop(image, np.random.default_rng(seed), pad=2)
    assert out.shape == image.shape and out.dtype == np.uint8
    hits = [k for k, w in windows.items() if np.array_equal(w, out)]
    assert len(hits) == 1
    seen.add(hits[0])
  assert len(seen) > 5
  assert all(0 <= t <= 4 and 0 <= l <= 4 for t, l in seen)
  np.testing.assert_array_equal(
      transforms.pad_random_crop(image, np.random.default_rng(0), pad=0), image
  )


def test_pad_random_crop_deterministic_per_seed():
  image = _image(6, 6)
  a = transforms.pad_random_crop(image, np.random.default_rng(5), 3)
  b = transforms.pad_random_crop(image, np.random.default_rng(5), 3)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('height,width,top,left', [(8, 8, 2, 2), (8, 16, 2, 6),
                                                   (12, 8, 4, 2)])
def test_resize_center_crop_picks_the_center(height, width, top, left):
  # Shorter side 8 = size / crop_fraction: no resize, only the center crop.
  image = np.arange(height * width * 3, dtype=np.uint8).reshape(
      height, width, 3
  )
  out = transforms.resize_center_crop(image, size=4, crop_fraction=0.5)
  np.testing.assert_array_equal(out, image[top:top + 4, left:left + 4])


def test_resize_center_crop_resizes_shorter_side():
  # A left/right split image: after resizing 100x200 -> 64x128 and cropping
  # 56x56 from the middle, the crop straddles the boundary at column 28.
  image = np.zeros((100, 200, 3), np.uint8)
  image[:, 100:] = 255
  out = transforms.resize_center_crop(image, size=56)
  assert out.shape == (56, 56, 3) and out.dtype == np.uint8
  assert (out[:, :27] == 0).all() and (out[:, 29:] == 255).all()
  resized = np.asarray(
      Image.fromarray(image).resize((128, 64), Image.Resampling.BILINEAR)
  )
  np.testing.assert_array_equal(out, resized[4:60, 36:92])


def test_normalize_arithmetic():
  batch = _image(5, 4, 3)[None].repeat(2, axis=0)
  out = transforms.normalize(
      batch, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
  )
  expected = (batch / 255.0 - np.array(transforms.IMAGENET_MEAN)) / np.array(
      transforms.IMAGENET_STD
  )
  assert out.dtype == np.float32 and out.shape == batch.shape
  np.testing.assert_allclose(out, expected, atol=1e-5)
  white = transforms.normalize(np.full((1, 1, 1, 1), 255, np.uint8), 0.5, 0.25)
  np.testing.assert_allclose(white, 2.0)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='uint8'):
    transforms.random_flip(
        np.zeros((4, 4, 3), np.float32), np.random.default_rng()
    )
  with pytest.raises(ValueError, match=r'\[H, W, C\]'):
    transforms.resize_center_crop(np.zeros((4, 4), np.uint8), 2)
  with pytest.raises(ValueError, match='uint8'):
    transforms.normalize(np.zeros((1, 2, 2, 3)), (0.5,) * 3, (1.0,) * 3)
  with pytest.raises(ValueError, match='one per'):
    transforms.normalize(np.zeros((1, 2, 2, 3), np.uint8), (0.5, 0.5), (1, 1))
