"""``--dataset=image_folder:PATH``: your own images, one sub-folder per class.

Layout (``validation/`` and ``test/`` are optional)::

  PATH/train/<class>/*.jpg|*.jpeg|*.png
  PATH/validation/<class>/...
  PATH/test/<class>/...

The class names are the sub-folders of ``train/``, sorted (label i is the
i-th name); ``validation/`` and ``test/`` may hold only classes that
``train/`` has. Only files ending in .jpg, .jpeg or .png (any case) are
read; other files and hidden ones (``.DS_Store``) are left alone.

Prepared once into ``DATA_DIR/image_folder/<folder name>_<hash of its
absolute path>/1.0.0`` as ArrayRecord with TFDS features (no TensorFlow):
``image`` (``tfds.features.Image``, the file's bytes as they are: no
re-encoding), ``label`` (``ClassLabel`` named by the folders) and
``filename`` (the path under PATH). TFDS shows a progress bar per split.
Images are decoded per example when read (``ImageFolderSource``, in grain's
worker processes when there are some), always to 3 channels (grey images are
repeated, an alpha channel is dropped); sizes vary, so ``--image_size``
resizes them (``pipeline.image_example_fn``).

A file that is not a readable image (corrupt, truncated, a text file named
``.jpg``, a decompression bomb) is **skipped** while preparing: each one is
named in the log (``images.ImageError``'s one line), and their number and
names are kept in the prepared copy's ``dataset_info`` metadata
(``skipped``). A split whose every file is skipped, or a folder without
``train/<class>/`` images, is refused in one line.

The prepared copy records the sha256 of the file list: one line per image
file, ``relative path, size in bytes, mtime in ns``, sorted. Every open
recomputes it (a ``stat`` per file, no reading) and refuses a folder whose
files were added, removed, resized or touched since it was prepared
(``FolderChangedError``, naming what changed and the prepared directory to
delete to prepare it again). An edit that keeps a file's size and mtime is
not seen.
"""

from collections.abc import Iterator
import dataclasses
import hashlib
import os
from typing import Any

import tensorflow_datasets as tfds

from dlresearch.data import images

PREFIX = 'image_folder:'
NAME = 'image_folder'
SPLITS = ('train', 'validation', 'test')
EXTENSIONS = ('.jpg', '.jpeg', '.png')
CHANNELS = 3


class FolderError(ValueError):
  """The folder is missing, empty, or laid out otherwise than documented."""


class FolderChangedError(FolderError):
  """The folder's files changed since it was prepared."""


@dataclasses.dataclass(frozen=True)
class Listing:
  """The image files of a folder: ``splits[split] = [(rel, class), ...]``."""

  root: str  # absolute
  classes: tuple[str, ...]
  splits: dict[str, list[tuple[str, str]]]
  sha256: str  # of the file list (see the module docstring)
  count: int


def folder_of(dataset: str) -> str:
  """PATH of ``image_folder:PATH``, ``~`` expanded, absolute."""
  path = dataset[len(PREFIX):] if dataset.startswith(PREFIX) else ''
  if not path:
    raise FolderError('name the folder, as in image_folder:/path/to/images')
  return os.path.abspath(os.path.expanduser(path))


def _is_image(name: str) -> bool:
  return not name.startswith('.') and name.lower().endswith(EXTENSIONS)


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path)
                if e.is_dir() and not e.name.startswith('.'))


def scan(root: str) -> Listing:
  """The image files under ``root`` by split and class, and their hash."""
  if not os.path.isdir(root):
    raise FolderError(f'image folder {root} does not exist (expected '
                      f'{root}/train/<class>/*.jpg)')
  train = os.path.join(root, 'train')
  if not os.path.isdir(train):
    raise FolderError(f'image folder {root} has no train/ sub-folder (expected '
                      f'{root}/train/<class>/*.jpg, one sub-folder per class)')
  classes = tuple(_subdirs(train))
  if not classes:
    raise FolderError(f'{train} has no class sub-folders (expected '
                      f'{train}/<class>/*.jpg)')
  digest = hashlib.sha256()
  splits, count = {}, 0
  for split in SPLITS:
    directory = os.path.join(root, split)
    if not os.path.isdir(directory):
      continue
    names = _subdirs(directory)
    unknown = sorted(set(names) - set(classes))
    if unknown:
      raise FolderError(f'{directory} has classes that train/ has not: '
                        f'{", ".join(unknown[:5])}; add them to train/ or '
                        'remove them')
    files = []
    for cls in names:
      with os.scandir(os.path.join(directory, cls)) as entries:
        found = sorted((e.name, e.stat()) for e in entries
                       if e.is_file() and _is_image(e.name))
      for name, st in found:
        rel = f'{split}/{cls}/{name}'
        digest.update(f'{rel}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode(
            'utf-8', 'surrogateescape'))
        files.append((rel, cls))
    if files:
      splits[split] = files
      count += len(files)
  if 'train' not in splits:
    raise FolderError(f'{train}/<class>/ holds no .jpg, .jpeg or .png file')
  return Listing(root, classes, splits, digest.hexdigest(), count)


def config_name(root: str) -> str:
  """The prepared copy's directory name: folder name + hash of its path."""
  base = ''.join(c if c.isalnum() else '_' for c in os.path.basename(root))
  return f'{base.lower()[:40] or "root"}_{hashlib.sha256(root.encode()).hexdigest()[:12]}'


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A folder of images, one sub-folder per class (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Encoded bytes as they are, skipped files listed.'}

  def __init__(self, listing: Listing, **kwargs):
    self.listing = listing
    self.skipped: list[str] = []
    super().__init__(config=tfds.core.BuilderConfig(
        name=config_name(listing.root)), **kwargs)

  def _create_builder_config(self, builder_config, version):
    del version  # One config per folder, named by __init__: nothing to look up.
    return builder_config

  def __getstate__(self):
    # Pickled into grain's workers, which read and never prepare: the file
    # list stays behind.
    listing = dataclasses.replace(self.listing, splits={})
    return {'_original_state': {**self._original_state, 'listing': listing}}

  def __setstate__(self, state):
    state = dict(state['_original_state'])
    state.pop('config', None)  # named after the listing's root again
    self.__init__(**state)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Images of {self.listing.root}, one folder per class.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, CHANNELS)),
            'label': tfds.features.ClassLabel(names=self.listing.classes),
            'filename': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            root=self.listing.root, file_list_sha256=self.listing.sha256,
            files=self.listing.count, skipped=self.skipped),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    return {split: self._generate_examples(files)
            for split, files in self.listing.splits.items()}

  def _generate_examples(self, files) -> Iterator[tuple[int, dict[str, Any]]]:
    label = {c: i for i, c in enumerate(self.listing.classes)}
    kept = 0
    for rel, cls in files:
      path = os.path.join(self.listing.root, rel)
      try:
        with open(path, 'rb') as f:
          data = f.read()
        images.decode(data, 'RGB', path)  # refuses what would fail later
      except (images.ImageError, OSError) as e:
        from absl import logging  # pylint: disable=g-import-not-at-top
        logging.warning('skipped %s', str(e) if isinstance(
            e, images.ImageError) else f'{path}: {e}')
        self.skipped.append(rel)
        continue
      kept += 1
      yield kept, {'image': data, 'label': label[cls], 'filename': rel}
    if not kept:
      split = files[0][0].split('/')[0]
      raise FolderError(f'{self.listing.root}/{split}: none of its '
                        f'{len(files)} image files could be read (see the '
                        'skipped files in the log)')


@dataclasses.dataclass
class ImageFolderSource:
  """Random access to a prepared split, images decoded per example.

  ``source[i]`` is ``{'image': uint8 [H, W, 3], 'label', 'filename'}``; a
  record that does not decode raises ``images.ImageError`` naming its file.
  Picklable (grain sends it to its worker processes).
  """

  raw: Any  # the TFDS data source, images left encoded

  def __len__(self) -> int:
    return len(self.raw)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode(self.raw[index])

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    return [decode(ex) for ex in self.raw.__getitems__(list(indices))]

  @property
  def dataset_info(self):
    return self.raw.dataset_info


def decode(example: dict[str, Any]) -> dict[str, Any]:
  """An example read with the image left encoded -> image decoded."""
  name = example['filename']
  name = name.decode('utf-8', 'replace') if isinstance(name, bytes) else name
  return {**example, 'filename': name,
          'image': images.decode(example['image'], 'RGB', name)}


def check_unchanged(builder: ImageFolder, listing: Listing) -> None:
  """``FolderChangedError`` unless the folder is as it was prepared."""
  recorded = dict(builder.info.metadata or {})
  if recorded.get('file_list_sha256') == listing.sha256:
    return
  raise FolderChangedError(
      f'the files of {listing.root} changed since it was prepared into '
      f'{builder.data_dir} ({recorded.get("files")} image files then, '
      f'{listing.count} now; sha256 of the file list '
      f'{str(recorded.get("file_list_sha256"))[:12]}... then, '
      f'{listing.sha256[:12]}... now): delete {builder.data_dir} to prepare '
      'it again, or put the files back')


def skipped(builder: ImageFolder) -> list[str]:
  """The files skipped when ``builder``'s copy was prepared."""
  return list((builder.info.metadata or {}).get('skipped', ()))

