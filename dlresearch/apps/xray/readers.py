"""Reader of the X-ray demo's data: 16 pediatric chest X-rays.

Kermany et al. 2018, ``val`` split: 8 normal and 8 bacterial pneumonia,
labelled by file name, read from what ``python -m dlresearch.data.fetch
xray`` cached (``raw.raw_file``).
"""

import io

import numpy as np

from dlresearch.data import raw
from dlresearch.data.raw import PathLike


def xray_label(filename: str) -> int:
  """0 for ``NORMAL*`` files, 1 for ``*_bacteria_*`` / ``*_virus_*``."""
  if filename.startswith('NORMAL'):
    return 0
  if '_bacteria_' in filename or '_virus_' in filename:
    return 1
  raise ValueError(f'no label in file name {filename!r}')


def xray(data_dir: PathLike | None = None):
  """The 16 labelled chest X-rays, sorted by file name.

  Returns:
    ``(images, labels, names)``: a list of uint8 arrays as decoded ([H, W]
    for grayscale, [H, W, 3] for RGB; sizes differ), int32 labels (1 =
    pneumonia), and the file names.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  directory = raw.raw_file('xray', 'SOURCE.json', data_dir).parent
  names = sorted(p.name for p in directory.glob('*.jpeg'))
  if not names:
    raise FileNotFoundError(f'no .jpeg files in {directory}')
  images = []
  for name in names:
    with Image.open(io.BytesIO((directory / name).read_bytes())) as im:
      if im.mode not in ('L', 'RGB'):
        im = im.convert('RGB')
      images.append(np.asarray(im, np.uint8))
  labels = np.array([xray_label(n) for n in names], np.int32)
  return images, labels, names
