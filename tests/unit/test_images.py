"""dlresearch.data.images.read: pixels as decoded, bombs and broken files in one line."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dlresearch.data import images


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()


def _claimed_size(png, width, height):
  """The PNG with its IHDR claiming ``width`` x ``height`` (CRC fixed)."""
  data = bytearray(png)
  start = 8 + 8  # signature, then IHDR's length and type
  data[start:start + 8] = struct.pack('>II', width, height)
  crc = zlib.crc32(bytes(data[start - 4:start + 13]))
  data[start + 13:start + 17] = struct.pack('>I', crc)
  return bytes(data)


def test_read_gives_the_pixels(tmp_path):
  rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  p = tmp_path / 'a.png'
  p.write_bytes(_png(rgb))
  np.testing.assert_array_equal(images.read(str(p), 'RGB'), rgb)
  grey = images.read(str(p), 'L')
  assert grey.shape == (4, 5, 1) and grey.dtype == np.uint8


@pytest.mark.parametrize('case', ['bomb_20000', 'over_max_pixels', 'truncated',
                                  'not_an_image', 'missing', 'bad_crc'])
def test_bad_images_are_one_line(tmp_path, case):
  png = _png(np.zeros((8, 8, 3), np.uint8))
  p = tmp_path / f'{case}.png'
  if case == 'bomb_20000':  # PIL's DecompressionBombError was a traceback.
    p.write_bytes(_claimed_size(png, 20_000, 20_000))
    want = 'decompression bomb'
  elif case == 'over_max_pixels':  # PIL only warns here; refused too.
    p.write_bytes(_claimed_size(png, 10_000, 9_000))
    want = 'decompression bomb'
  elif case == 'truncated':
    big = _png(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                 np.uint8))
    p.write_bytes(big[:len(big) // 2])
    want = 'not a readable image'
  elif case == 'not_an_image':
    p.write_bytes(b'GIF89a but not really')
    want = 'not a readable image'
  elif case == 'bad_crc':
    data = bytearray(png)
    data[data.find(b'IDAT') + 6] ^= 0xFF
    p.write_bytes(bytes(data))
    want = 'not a readable image'
  else:
    want = 'no such file'
  with pytest.raises(images.ImageError) as info:
    images.read(str(p), 'RGB')
  message = str(info.value)
  assert '\n' not in message and str(p) in message and want in message
  assert isinstance(info.value, ValueError)
