"""Archive fixtures for the data tests: wheels, .deb files and pinned sources
built in the test, so the real fetch and readers run with no network."""

import dataclasses
import hashlib
import io
import pathlib
import tarfile
import zipfile

from dlresearch.data import fetch


def sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def pin(monkeypatch, name, archive: pathlib.Path, files: dict[str, bytes]):
  monkeypatch.setitem(fetch.SOURCES, name, dataclasses.replace(
      fetch.SOURCES[name], sha256=sha(archive.read_bytes()),
      file_sha256=tuple((k, sha(v)) for k, v in files.items())))


def make_zip(path, files: dict[str, bytes]) -> pathlib.Path:
  with zipfile.ZipFile(path, 'w') as z:
    for name, data in files.items():
      z.writestr(name, data)
  return path


def tar_xz(files: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w:xz') as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def make_deb(path, files: dict[str, bytes]) -> pathlib.Path:
  """A .deb (ar: debian-binary, control.tar.xz, data.tar.xz) with ``files``."""
  members = [('debian-binary', b'2.0\n'),
             ('control.tar.xz', tar_xz({'./control': b'Package: x\n'})),
             ('data.tar.xz', tar_xz({f'./{k}': v for k, v in files.items()}))]
  out = bytearray(b'!<arch>\n')
  for name, data in members:
    out += (f'{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}'
            .encode() + b'`\n')
    out += data + b'\n' * (len(data) % 2)
  path.write_bytes(bytes(out))
  return path
