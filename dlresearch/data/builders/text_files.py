"""`text_files`: a generic builder over your own UTF-8 ``*.txt`` files.

Point the TFDS manual dir at a directory (default
``~/.cache/dlresearch/raw/text_files``)::

  builder = tfds.builder('text_files', data_dir=DATA_DIR)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=TEXT_DIR))
  source = tfds.data_source('text_files', data_dir=DATA_DIR)

One example per file: ``text`` (tfds Text; reads back as UTF-8 bytes) and
``filename`` (path relative to the directory). Split rule:

- If the directory holds ``train.txt`` (and optionally ``valid.txt`` or
  ``validation.txt``, and ``test.txt``), those files are the splits
  ``train``, ``validation`` and ``test``, and nothing else is read.
- Otherwise every ``*.txt`` under it (recursively) is assigned by the sha256
  of its relative path: bucket ``int(sha256) % 100`` below 80 is ``train``,
  below 90 ``validation``, else ``test``. A file keeps its split when others
  are added or removed. Splits with no file are left out; ``train`` must
  not be empty.

The prepared data lives in ``DATA_DIR/text_files/1.0.0``: prepare different
corpora into different data dirs.
"""

import hashlib
import pathlib

import tensorflow_datasets as tfds

from dlresearch.data import fetch

EXPLICIT_FILES = {'train': ('train.txt',),
                  'validation': ('valid.txt', 'validation.txt'),
                  'test': ('test.txt',)}


def assign_split(relative_path: str) -> str:
  """The hashed split of a file (used when there is no ``train.txt``)."""
  bucket = int(hashlib.sha256(relative_path.encode('utf-8')).hexdigest(),
               16) % 100
  if bucket < 80:
    return 'train'
  return 'validation' if bucket < 90 else 'test'


def find_splits(directory: pathlib.Path) -> dict[str, list[str]]:
  """Split name -> relative paths of its files, by the rule above."""
  if not directory.is_dir():
    raise FileNotFoundError(f'Text directory {directory} does not exist.')
  if (directory / 'train.txt').is_file():
    splits = {}
    for split, names in EXPLICIT_FILES.items():
      present = [n for n in names if (directory / n).is_file()]
      if len(present) > 1:
        raise ValueError(f'{directory} has both {present}: keep one.')
      if present:
        splits[split] = present
    return splits
  splits = {'train': [], 'validation': [], 'test': []}
  for path in sorted(directory.rglob('*.txt')):
    if path.is_file():
      rel = path.relative_to(directory).as_posix()
      splits[assign_split(rel)].append(rel)
  if not splits['train']:
    raise ValueError(
        f'No *.txt file of {directory} falls in train (found '
        f'{sum(map(len, splits.values()))} files). Add files, or name them '
        'train.txt / valid.txt / test.txt.')
  return {k: v for k, v in splits.items() if v}


class TextFiles(fetch.LocalSourceMixin, tfds.core.GeneratorBasedBuilder):
  """Local UTF-8 text files, one example per file."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put UTF-8 *.txt files (or train.txt, valid.txt, test.txt) in a directory
  and pass it as DownloadConfig(manual_dir=DIR).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'filename': tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    directory = pathlib.Path(dl_manager.manual_dir)
    return {split: self._generate_examples(directory, files)
            for split, files in find_splits(directory).items()}

  def _generate_examples(self, directory, files):
    for rel in files:
      try:
        text = (directory / rel).read_text(encoding='utf-8')
      except UnicodeDecodeError as e:
        raise ValueError(f'{directory / rel} is not UTF-8 text: {e}') from e
      yield rel, {'text': text, 'filename': rel}
