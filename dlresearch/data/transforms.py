"""Host-side per-example image transforms in NumPy (and PIL for resizing).

Each transform takes one uint8 [H, W, C] image and, when random, a
`np.random.Generator`, so a pipeline controls the randomness per example.
Resizing is PIL bilinear, which antialiases when shrinking. `normalize` works
on a whole batch and returns float32.
"""

from collections.abc import Sequence
import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_MODES = {3: 'RGB', 4: 'RGBA'}


def _check_image(image: np.ndarray) -> None:
  if not isinstance(image, np.ndarray) or image.ndim != 3:
    raise ValueError(
        'Expected one image as a numpy array [H, W, C], got'
        f' {type(image).__name__} of shape {np.shape(image)}.'
    )
  if image.dtype != np.uint8:
    raise ValueError(f'Expected a uint8 image, got dtype {image.dtype}.')


def _resize(
    image: np.ndarray,
    height: int,
    width: int,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
  """Bilinear resize of `image` or of its `box` (left, top, right, bottom)."""
  channels = image.shape[-1]
  if channels in _PIL_MODES:
    out = Image.fromarray(image, _PIL_MODES[channels]).resize(
        (width, height), Image.Resampling.BILINEAR, box=box
    )
    return np.asarray(out)
  planes = [
      np.asarray(
          Image.fromarray(np.ascontiguousarray(image[..., c]), 'L').resize(
              (width, height), Image.Resampling.BILINEAR, box=box
          )
      )
      for c in range(channels)
  ]
  return np.stack(planes, axis=-1)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> np.ndarray:
  """Inception-style crop: random area and aspect ratio, resized to size².

  Tries 10 times to draw a crop with area `scale` x image area and aspect
  (width / height) log-uniform in `ratio` that fits in the image; otherwise
  takes the largest central crop whose aspect is clipped to `ratio` (as
  torchvision does).

  Returns:
    uint8 [size, size, C].
  """
  _check_image(image)
  height, width = image.shape[:2]
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      break
  else:
    in_ratio = width / height
    if in_ratio < min(ratio):
      w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
      w, h = int(round(height * max(ratio))), height
    else:
      w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
  return _resize(image, size, size, box=(left, top, left + w, top + h))


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors the image left-right with probability 0.5."""
  _check_image(image)
  return image[:, ::-1] if rng.random() < 0.5 else image


def pad_random_crop(
    image: np.ndarray, rng: np.random.Generator, pad: int
) -> np.ndarray:
  """CIFAR-style: zero-pad `pad` pixels per side, random crop of input size."""
  _check_image(image)
  height, width = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  return padded[top:top + height, left:left + width]


def resize_center_crop(
    image: np.ndarray, size: int, crop_fraction: float = 0.875
) -> np.ndarray:
  """Standard ImageNet eval: shorter side to size / crop_fraction, center crop.

  With size 224 and the default fraction the shorter side becomes 256. The
  crop starts at ((H' - size) // 2, (W' - size) // 2) of the resized image.

  Returns:
    uint8 [size, size, C].
  """
  _check_image(image)
  if not 0.0 < crop_fraction <= 1.0:
    raise ValueError(f'crop_fraction must be in (0, 1], got {crop_fraction}.')
  height, width = image.shape[:2]
  short = int(round(size / crop_fraction))
  if height <= width:
    new_h, new_w = short, max(short, int(round(width * short / height)))
  else:
    new_h, new_w = max(short, int(round(height * short / width))), short
  if (new_h, new_w) != (height, width):
    image = _resize(image, new_h, new_w)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top:top + size, left:left + size]


def normalize(
    batch: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
  """uint8 images [..., C] -> float32 (x / 255 - mean) / std per channel."""
  batch = np.asarray(batch)
  if batch.dtype != np.uint8:
    raise ValueError(f'normalize expects uint8 images, got {batch.dtype}.')
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.shape != std.shape or mean.size not in (1, batch.shape[-1]):
    raise ValueError(
        f'mean {mean.shape} and std {std.shape} must have one value or one per'
        f' channel ({batch.shape[-1]}).'
    )
  scale = 1.0 / (255.0 * std)
  return batch.astype(np.float32) * scale - mean / std
