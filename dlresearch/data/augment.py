"""The standard training augmentations: RandAugment, colour jitter, random
erasing (per example) and Mixup / CutMix with soft targets (per batch).

Per-example ops take one uint8 ``[H, W, C]`` image and the example's
``np.random.Generator`` (``pipeline`` draws it from ``(seed, step,
position)``), so a resumed run draws the same numbers. ``Mix`` takes a whole
(normalised, float) batch and a generator drawn from ``(seed, step)``. All of
them are plain functions or frozen dataclasses, so they pickle into grain's
worker processes.

RandAugment (Cubuk et al. 2020) follows timm's ``rand-mM-nN-mstdS-inc1``
(the form DeiT uses): ``num_ops`` ops drawn uniformly with replacement from
``OPS``, each applied with probability 0.5, at magnitude ``M`` on the
paper's 0-10 scale (10 = each op's largest value below; larger magnitudes
extrapolate up to 30), optionally jittered by a normal of std ``S`` per op.
The "increasing" forms are used, so a larger magnitude is always a stronger
change and magnitude 0 leaves the image unchanged (except autocontrast and
equalize, which have no magnitude):

  op          at magnitude 10 (random sign where one applies)
  rotate      30 degrees
  shear_x/y   0.3
  translate   0.45 of the image side (timm's translate_pct)
  solarize    threshold 0 (every pixel inverted); 256 at magnitude 0
  posterize   4 bits kept; 8 at magnitude 0
  color, contrast, brightness, sharpness
              enhancement factor 1 +- 0.9 (at least 0.1)

Geometric ops resample bilinearly (PIL) and fill with grey 128 (as
big_vision / TF's autoaugment). Single-channel images use PIL mode 'L'
(``color`` is then the identity); images with other than 1 or 3 channels
are transformed plane by plane with the same parameters.
"""

import dataclasses
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from dlresearch.data import transforms

MAX_MAGNITUDE = 30.0  # RandAugment magnitudes above 10 extrapolate up to this
FILL = 128  # grey fill of rotate / shear / translate


def _pil_map(image: np.ndarray, fn: Callable[[Image.Image], Image.Image]
             ) -> np.ndarray:
  """``fn`` applied to ``image`` as a PIL image (RGB, or per plane as 'L')."""
  if image.shape[-1] == 3:
    return np.asarray(fn(Image.fromarray(image, 'RGB')))
  planes = [np.asarray(fn(Image.fromarray(np.ascontiguousarray(image[..., c]),
                                          'L')))
            for c in range(image.shape[-1])]
  return np.stack(planes, axis=-1)


def _fill(img: Image.Image):
  return (FILL,) * 3 if img.mode == 'RGB' else FILL


def _signed(value: float, rng: np.random.Generator) -> float:
  return -value if rng.random() < 0.5 else value


def _affine(image: np.ndarray, coeffs: tuple) -> np.ndarray:
  return _pil_map(image, lambda img: img.transform(
      img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR,
      fillcolor=_fill(img)))


def _enhance(kind) -> Callable:
  def op(image, magnitude, rng):
    factor = max(0.1, 1.0 + _signed(0.9 * magnitude / 10, rng))
    return _pil_map(image, lambda img: kind(img).enhance(factor))
  return op


def identity(image, magnitude, rng):
  del magnitude, rng
  return image


def autocontrast(image, magnitude, rng):
  del magnitude, rng
  return _pil_map(image, ImageOps.autocontrast)


def equalize(image, magnitude, rng):
  del magnitude, rng
  return _pil_map(image, ImageOps.equalize)


def rotate(image, magnitude, rng):
  angle = _signed(30.0 * magnitude / 10, rng)
  if not angle:
    return image
  return _pil_map(image, lambda img: img.rotate(
      angle, Image.Resampling.BILINEAR, fillcolor=_fill(img)))


def solarize(image, magnitude, rng):
  del rng
  threshold = 256 - 256 * min(magnitude, 10) / 10
  return np.where(image >= threshold, 255 - image, image).astype(np.uint8)


def posterize(image, magnitude, rng):
  del rng
  bits = int(np.clip(8 - round(4 * magnitude / 10), 1, 8))
  return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def shear_x(image, magnitude, rng):
  s = _signed(0.3 * magnitude / 10, rng)
  return _affine(image, (1, s, 0, 0, 1, 0)) if s else image


def shear_y(image, magnitude, rng):
  s = _signed(0.3 * magnitude / 10, rng)
  return _affine(image, (1, 0, 0, s, 1, 0)) if s else image


def translate_x(image, magnitude, rng):
  pixels = _signed(0.45 * magnitude / 10, rng) * image.shape[1]
  return _affine(image, (1, 0, pixels, 0, 1, 0)) if pixels else image


def translate_y(image, magnitude, rng):
  pixels = _signed(0.45 * magnitude / 10, rng) * image.shape[0]
  return _affine(image, (1, 0, 0, 0, 1, pixels)) if pixels else image


color = _enhance(ImageEnhance.Color)
contrast = _enhance(ImageEnhance.Contrast)
brightness = _enhance(ImageEnhance.Brightness)
sharpness = _enhance(ImageEnhance.Sharpness)

# name -> op(image, magnitude, rng) -> image: RandAugment's 14 ops.
OPS = {'identity': identity, 'autocontrast': autocontrast,
       'equalize': equalize, 'rotate': rotate, 'solarize': solarize,
       'color': color, 'posterize': posterize, 'contrast': contrast,
       'brightness': brightness, 'sharpness': sharpness, 'shear_x': shear_x,
       'shear_y': shear_y, 'translate_x': translate_x,
       'translate_y': translate_y}


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_ops: int,
                 magnitude: float, magnitude_std: float = 0.0,
                 prob: float = 0.5) -> np.ndarray:
  """RandAugment: ``num_ops`` random ops of ``OPS``, each with probability
  ``prob``, at ``magnitude`` (0-10 scale; jittered by ``magnitude_std``)."""
  names = list(OPS)
  for _ in range(num_ops):
    op = OPS[names[int(rng.integers(len(names)))]]
    if rng.random() >= prob:
      continue
    m = magnitude
    if magnitude_std > 0:
      m = float(np.clip(rng.normal(magnitude, magnitude_std), 0, MAX_MAGNITUDE))
    image = op(image, m, rng)
  return image


def color_jitter(image: np.ndarray, rng: np.random.Generator,
                 strength: float) -> np.ndarray:
  """Brightness, contrast and saturation, each by a factor uniform in
  [max(0, 1 - strength), 1 + strength], in random order (torchvision's
  ``ColorJitter(s, s, s)``, timm's ``--color-jitter``)."""
  kinds = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  factors = rng.uniform(max(0.0, 1 - strength), 1 + strength, size=3)
  for i in rng.permutation(3):
    image = _pil_map(image, lambda img, i=i: kinds[i](img).enhance(factors[i]))
  return image


def random_erase(image: np.ndarray, rng: np.random.Generator, prob: float,
                 area: tuple[float, float] = (0.02, 1 / 3),
                 log_aspect: tuple[float, float] = (math.log(0.3),
                                                    math.log(1 / 0.3))
                 ) -> np.ndarray:
  """With probability ``prob``, one rectangle of random pixels (Zhong et al.
  2020; timm ``RandomErasing(mode='pixel')``, here uniform uint8 noise
  before normalisation): area a fraction in ``area`` of the image, aspect
  log-uniform; 10 tries to fit, else unchanged."""
  if rng.random() >= prob:
    return image
  height, width, channels = image.shape
  for _ in range(10):
    target = height * width * rng.uniform(*area)
    aspect = math.exp(rng.uniform(*log_aspect))
    h = int(round(math.sqrt(target * aspect)))
    w = int(round(math.sqrt(target / aspect)))
    if 0 < h < height and 0 < w < width:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      out = np.array(image)
      out[top:top + h, left:left + w] = rng.integers(
          0, 256, (h, w, channels), dtype=np.uint8)
      return out
  return image


# ---------------------------------------------------------------------------
# Per batch: Mixup and CutMix.


def soft_targets(labels: np.ndarray, num_classes: int,
                 label_smoothing: float = 0.0) -> np.ndarray:
  """float32 [B, C]: one-hot ``labels`` smoothed to ``1 - s + s/C`` and
  ``s/C`` (rows sum to 1)."""
  off = label_smoothing / num_classes
  out = np.full((len(labels), num_classes), off, np.float32)
  out[np.arange(len(labels)), np.asarray(labels, np.int64)] = (
      1.0 - label_smoothing + off)
  return out


def cutmix_box(height: int, width: int, lam: float,
               rng: np.random.Generator) -> tuple[int, int, int, int]:
  """A box (top, bottom, left, right) of area about ``(1 - lam)`` of the
  image, centred uniformly and clipped to it (timm ``rand_bbox``)."""
  cut = math.sqrt(1.0 - lam)
  cut_h, cut_w = int(height * cut), int(width * cut)
  cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
  return (int(np.clip(cy - cut_h // 2, 0, height)),
          int(np.clip(cy + cut_h // 2, 0, height)),
          int(np.clip(cx - cut_w // 2, 0, width)),
          int(np.clip(cx + cut_w // 2, 0, width)))


@dataclasses.dataclass(frozen=True)
class Mix:
  """Mixup (Zhang et al. 2018) / CutMix (Yun et al. 2019) of a training
  batch, with label smoothing folded into the soft targets (timm ``Mixup``,
  mode 'batch').

  The examples at positions 2i and 2i + 1 of the batch are partners. With
  probability ``prob`` the batch is mixed: CutMix with probability
  ``switch_prob`` when both are on, else Mixup. One ``lam ~ Beta(a, a)``
  for the whole batch; Mixup gives ``x = lam * x + (1 - lam) * partner``,
  CutMix pastes the partner's ``cutmix_box`` and sets ``lam`` to the kept
  area. The label becomes ``lam * t + (1 - lam) * t_partner`` with ``t``
  the smoothed one-hot targets (``soft_targets``): float32 ``[B, C]`` for
  every batch, mixed or not, so shapes never change. Partners are
  neighbours, so each process mixes within its own rows and a run with a
  different number of processes sees the same global batches.
  """

  num_classes: int
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0
  switch_prob: float = 0.5
  label_smoothing: float = 0.0
  input_key: str = 'image'
  label_key: str = 'label'

  def draw(self, rng: np.random.Generator, height: int, width: int
           ) -> tuple[float, tuple[int, int, int, int] | None]:
    """(lam, CutMix box or None) for one batch."""
    if rng.random() >= self.prob:
      return 1.0, None
    cutmix = self.cutmix_alpha > 0 and (
        self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
    if not cutmix:
      return float(rng.beta(self.mixup_alpha, self.mixup_alpha)), None
    lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
    box = cutmix_box(height, width, lam, rng)
    top, bottom, left, right = box
    return 1.0 - (bottom - top) * (right - left) / (height * width), box

  def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
    x, labels = batch[self.input_key], np.asarray(batch[self.label_key])
    n = len(labels)
    if n % 2:
      raise ValueError(f'Mixup/CutMix pair neighbouring examples: each '
                       f'process needs an even batch, got {n}; use a '
                       '--batch_size divisible by 2 x the process count')
    partner = np.arange(n) ^ 1
    spatial = x.shape[1:3] if x.ndim == 4 else (0, 0)
    if self.cutmix_alpha > 0 and x.ndim != 4:
      raise ValueError(f'CutMix needs images [B, H, W, C], got {x.shape}')
    lam, box = self.draw(rng, *spatial)
    if box is not None:
      top, bottom, left, right = box
      x = np.array(x)
      x[:, top:bottom, left:right] = x[partner, top:bottom, left:right]
    elif lam != 1.0:
      x = (x * np.float32(lam) + x[partner] * np.float32(1.0 - lam)).astype(
          x.dtype)
    t = soft_targets(labels, self.num_classes, self.label_smoothing)
    y = t * np.float32(lam) + t[partner] * np.float32(1.0 - lam)
    return {**batch, self.input_key: x, self.label_key: y}


@dataclasses.dataclass(frozen=True)
class ImageTrainFn:
  """One training example's augmentation chain, a picklable ``ExampleFn``:
  the crop (``augment``), flip, RandAugment, colour jitter, random erasing.

  ``augment``: 'none' (resize + centre crop to ``image_size`` if set),
  'flip', 'pad_crop_flip' (CIFAR), 'crop_flip' (RandomResizedCrop with
  ``crop_scale`` and ``crop_ratio``, then flip). The rng draws of the crop
  and flip come first, so adding later ops never changes them.
  """

  augment: str
  image_size: int
  input_key: str = 'image'
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  randaugment_ops: int = 0
  randaugment_magnitude: float = 0.0
  randaugment_magnitude_std: float = 0.0
  color_jitter: float = 0.0
  random_erase: float = 0.0

  def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
    img = ex[self.input_key]
    if self.augment == 'crop_flip':
      img = transforms.random_resized_crop(
          img, rng, self.image_size or img.shape[0], self.crop_scale,
          self.crop_ratio)
    elif self.image_size:
      img = transforms.resize_center_crop(img, self.image_size)
    if self.augment == 'pad_crop_flip':
      img = transforms.pad_random_crop(img, rng, pad=max(img.shape[0] // 8, 1))
    if self.augment in ('flip', 'crop_flip', 'pad_crop_flip'):
      img = transforms.random_flip(img, rng)
    if self.randaugment_ops:
      img = rand_augment(img, rng, self.randaugment_ops,
                         self.randaugment_magnitude,
                         self.randaugment_magnitude_std)
    if self.color_jitter:
      img = color_jitter(img, rng, self.color_jitter)
    if self.random_erase:
      img = random_erase(img, rng, self.random_erase)
    return {**ex, self.input_key: img}
