"""Open an image file a user names, refusing bombs and broken files in one line.

PIL decodes lazily and guards against decompression bombs with a warning
above ``Image.MAX_IMAGE_PIXELS`` (89.5 million pixels) and an error above
twice that. ``read`` treats both as refusals, checks the declared size before
decoding, and turns every decoding failure (unknown format, truncated or
corrupt data) into one ``ImageError`` naming the file and the reason.
"""

import io
import struct
import warnings
import zlib

import numpy as np

MAX_PIXELS = 89_478_485  # PIL's own default Image.MAX_IMAGE_PIXELS


class ImageError(ValueError):
  """An image file is missing, not an image, truncated, corrupt or too big."""


def read(path: str, mode: str) -> np.ndarray:
  """Decodes ``path`` converted to PIL ``mode`` as uint8 ``[H, W, C]``.

  Raises:
    ImageError: one line naming the file and why it was refused.
  """
  return _decode(path, mode, path)


def decode(data: bytes, mode: str, name: str) -> np.ndarray:
  """``read`` for an encoded image held in memory; ``name`` is the file it
  came from (named in the ``ImageError``)."""
  return _decode(io.BytesIO(data), mode, name)


def _decode(source, mode: str, path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(source) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
          raise ImageError(f'{path}: refusing a {width}x{height} image (more '
                           f'than {MAX_PIXELS} pixels: a decompression bomb or '
                           'a far larger image than a model takes)')
        image = image.convert(mode)
  except ImageError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageError(f'{path}: refusing a decompression bomb ({e})'
                     .replace('\n', ' ')) from None
  except FileNotFoundError:
    raise ImageError(f'{path}: no such file') from None
  except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
          MemoryError, IndexError, TypeError, KeyError) as e:
    # UnidentifiedImageError is an OSError; truncated data raises OSError.
    reason = ' '.join(f'{e}'.splitlines()) or type(e).__name__
    if not isinstance(source, str):  # PIL names the in-memory file object
      reason = reason.replace(f' {source!r}', '')
    raise ImageError(f'{path}: not a readable image ({reason:.200})') from None
  x = np.asarray(image, np.uint8)
  return x[..., None] if x.ndim == 2 else x
