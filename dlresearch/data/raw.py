"""Reading the raw files that ``python -m dlresearch.data.fetch NAME`` cached.

``raw_file`` finds one fetched file (default ``~/.cache/dlresearch/raw/NAME``)
and checks it against the pinned sha256 of ``fetch.SOURCES``; readers never
download, and a missing cache raises ``FileNotFoundError`` naming the fetch
command. ``read_r`` parses R serialized data (``.rda``, lazy-load records)
without R. The readers of each application's data live with the
application (``dlresearch/apps/<name>/readers.py``).
"""

import os
import pathlib
import warnings

from dlresearch.data import fetch

PathLike = str | os.PathLike


def raw_file(name: str, filename: str,
             data_dir: PathLike | None = None) -> pathlib.Path:
  """Path of ``filename`` from ``name``'s fetched files, sha256-checked.

  Args:
    name: a key of ``fetch.SOURCES``.
    filename: a file that fetch extracted (base name).
    data_dir: where fetch wrote; default ``~/.cache/dlresearch/raw/NAME``.

  Raises:
    FileNotFoundError: the data was not fetched (the message says how).
    ValueError: the file's sha256 is not the pinned one.
  """
  directory = pathlib.Path(data_dir).expanduser() if data_dir else (
      fetch.default_dest(name))
  path = directory / filename
  if not fetch.fetched(name, directory) or not path.is_file():
    raise FileNotFoundError(
        f'{path} not found: fetch the {name!r} data once with '
        f'`python -m dlresearch.data.fetch {name}'
        f'{" --dest " + str(directory) if data_dir else ""}`.')
  want = dict(fetch.SOURCES[name].file_sha256).get(filename)
  if want is not None:
    got = fetch.sha256_file(path)
    if got != want:
      raise ValueError(f'{path} has sha256 {got}, expected {want}; fetch '
                       f'{name!r} again.')
  return path


def read_r(path_or_bytes):
  """Parses and converts R serialized data with ``rdata`` (no R needed)."""
  import rdata  # pylint: disable=g-import-not-at-top

  with warnings.catch_warnings():
    # Lazy-load records carry no file magic (rdata assumes RDS, rightly);
    # strings without a declared encoding are ASCII factor levels here.
    warnings.filterwarnings('ignore', 'Unknown file type')
    warnings.filterwarnings('ignore', 'Unknown encoding')
    if isinstance(path_or_bytes, bytes):
      parsed = rdata.parser.parse_data(path_or_bytes)
    else:
      parsed = rdata.parser.parse_file(path_or_bytes)
    return rdata.conversion.convert(parsed)
