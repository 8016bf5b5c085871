"""``image_folder:PATH``: scan, prepare once, reuse, skip broken files, refuse changes.

The folder holds real images: scikit-learn's handwritten digits written out
as PNG and JPEG files of different sizes, grey and RGB, plus a broken file.
"""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from dlresearch.data import datasets, images
from dlresearch.data.builders import image_folder


def write_digits(root, per_class=6, test_per_class=2, classes=3, broken=True):
  """Digits 0..classes-1 as PNG/JPEG files of varying sizes; returns the
  pixels of each written PNG by relative path (JPEG is lossy)."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  rng = np.random.default_rng(0)
  written, counts = {}, {}
  for image, label in zip(digits.images, digits.target):
    if label >= classes:
      continue
    n = counts.get(label, 0)
    if n >= per_class + test_per_class:
      continue
    counts[label] = n + 1
    split = 'train' if n < per_class else 'test'
    side = int(rng.integers(10, 40))
    pil = Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).resize(
        (side, side + int(rng.integers(0, 9))))
    if n % 3 == 0:
      pil = pil.convert('RGB')
    ext = 'png' if n % 2 else 'jpg'
    rel = f'{split}/digit_{label}/{n:03d}.{ext}'
    os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
    pil.save(os.path.join(root, rel))
    if ext == 'png':
      written[rel] = np.asarray(pil.convert('RGB'))
  if broken:
    with open(os.path.join(root, 'train', 'digit_0', 'broken.jpg'), 'wb') as f:
      f.write(b'\xff\xd8\xff\xe0 a JPEG header and nothing else')
  with open(os.path.join(root, 'train', 'digit_1', 'notes.txt'), 'w') as f:
    f.write('not read: not an image extension')
  return written


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / 'pictures'
  written = write_digits(root)
  return str(root), written, str(tmp_path / 'tfds')


def test_scan_lists_images_by_split_and_class_and_hashes_the_list(folder):
  root, _, _ = folder
  listing = image_folder.scan(root)
  assert listing.classes == ('digit_0', 'digit_1', 'digit_2')
  assert sorted(listing.splits) == ['test', 'train']
  assert len(listing.splits['train']) == 3 * 6 + 1  # the broken file too
  assert len(listing.splits['test']) == 3 * 2
  assert not any(rel.endswith('.txt') for rel, _ in listing.splits['train'])
  assert image_folder.scan(root).sha256 == listing.sha256  # stable
  os.utime(os.path.join(root, 'train', 'digit_2', '000.jpg'), ns=(1, 1))
  assert image_folder.scan(root).sha256 != listing.sha256  # mtime counts


@pytest.mark.parametrize('layout,message', [
    ({}, 'does not exist'),
    ({'images/a.jpg': b''}, 'has no train/ sub-folder'),
    ({'train/readme.txt': b''}, 'has no class sub-folders'),
    ({'train/cat/readme.txt': b''}, 'holds no .jpg, .jpeg or .png file'),
    ({'train/cat/a.png': b'', 'test/dog/b.png': b''},
     'has classes that train/ has not: dog'),
])
def test_bad_layouts_are_one_line_errors(tmp_path, layout, message):
  root = tmp_path / 'folder'
  for rel, data in layout.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.dataset_info(f'image_folder:{root}', str(tmp_path / 'tfds'))
  assert message in str(e.value) and '\n' not in str(e.value)
  assert str(e.value).startswith(f'--dataset=image_folder:{root}: ')
  assert not (tmp_path / 'tfds').exists()  # nothing prepared


def test_no_path_is_a_one_line_error(tmp_path):
  with pytest.raises(datasets.DatasetNotFoundError, match='name the folder'):
    datasets.dataset_info('image_folder:', str(tmp_path))


def test_prepared_once_decoded_per_example_broken_file_skipped(folder):
  root, written, data_dir = folder
  name = f'image_folder:{root}'
  info = datasets.dataset_info(name, data_dir)
  assert info.num_classes == 3 and info.input_key == 'image'
  assert info.input_shape is None  # sizes vary: --image_size resizes
  assert info.splits == {'train': 18, 'test': 6}  # broken.jpg skipped
  assert datasets.label_names(name, data_dir) == ['digit_0', 'digit_1',
                                                  'digit_2']
  source = datasets.get_source(name, 'train', data_dir)
  seen = {}
  for i in range(len(source)):
    ex = source[i]
    assert ex['image'].dtype == np.uint8 and ex['image'].shape[2] == 3
    assert ex['filename'].startswith('train/digit_')
    assert ex['label'] == int(ex['filename'].split('/')[1][-1])
    seen[ex['filename']] = ex['image']
  assert 'train/digit_0/broken.jpg' not in seen
  assert len({im.shape for im in seen.values()}) > 3  # different sizes
  for rel, pixels in written.items():  # PNGs come back exactly
    if rel.startswith('train/'):
      np.testing.assert_array_equal(seen[rel], pixels)
  builder = datasets._open(name, data_dir, None)  # pylint: disable=protected-access
  meta = builder.info.metadata
  assert meta['skipped'] == ['train/digit_0/broken.jpg']
  assert meta['files'] == 25 and meta['root'] == root
  assert meta['file_list_sha256'] == image_folder.scan(root).sha256
  # Picklable into grain's workers, and reads the same there.
  again = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(again[3]['image'], source[3]['image'])


def test_reused_on_the_next_open(folder, monkeypatch):
  root, _, data_dir = folder
  name = f'image_folder:{root}'
  datasets.dataset_info(name, data_dir)

  def no_second_preparation(*args, **kwargs):
    raise AssertionError('prepared again')

  monkeypatch.setattr(image_folder.ImageFolder, 'download_and_prepare',
                      no_second_preparation)
  assert datasets.dataset_info(name, data_dir).splits['train'] == 18
  assert len(datasets.get_source(name, 'test', data_dir)) == 6


@pytest.mark.parametrize('change', ['add', 'remove', 'rewrite'])
def test_changed_folder_is_refused_in_one_line(folder, change):
  root, _, data_dir = folder
  name = f'image_folder:{root}'
  datasets.dataset_info(name, data_dir)
  target = os.path.join(root, 'train', 'digit_1', '001.png')
  if change == 'add':
    Image.new('RGB', (9, 9)).save(os.path.join(root, 'train', 'digit_1',
                                               'new.png'))
  elif change == 'remove':
    os.remove(target)
  else:
    with open(target, 'ab') as f:
      f.write(b'\0')
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.get_source(name, 'train', data_dir)
  message = str(e.value)
  assert 'changed since it was prepared' in message and '\n' not in message
  prepared = image_folder.ImageFolder(image_folder.scan(root),
                                      data_dir=data_dir).data_dir
  assert f'delete {prepared} to prepare it again' in message


def test_a_corrupt_record_names_its_file(folder, monkeypatch):
  root, _, data_dir = folder
  real = images.decode
  # Stored as it is (as a copy prepared elsewhere, or damaged since).
  monkeypatch.setattr(images, 'decode', lambda data, mode, name: None if
                      name.endswith('broken.jpg') else real(data, mode, name))
  source = datasets.get_source(f'image_folder:{root}', 'train', data_dir)
  monkeypatch.setattr(images, 'decode', real)
  broken = [i for i in range(len(source)) if source.raw[i]['filename'] ==
            b'train/digit_0/broken.jpg']
  assert len(broken) == 1
  with pytest.raises(images.ImageError) as e:
    source[broken[0]]  # pylint: disable=pointless-statement
  assert str(e.value).startswith('train/digit_0/broken.jpg: not a readable '
                                 'image')
  assert '<_io.BytesIO' not in str(e.value)


def test_a_split_of_broken_files_only_is_one_line(tmp_path):
  root = tmp_path / 'folder'
  (root / 'train' / 'cat').mkdir(parents=True)
  Image.new('RGB', (5, 7)).save(root / 'train' / 'cat' / 'ok.png')
  (root / 'test' / 'cat').mkdir(parents=True)
  (root / 'test' / 'cat' / 'a.jpg').write_bytes(b'broken')
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.dataset_info(f'image_folder:{root}', str(tmp_path / 'tfds'))
  assert str(e.value) == (f'--dataset=image_folder:{root}: {root}/test: none '
                          'of its 1 image files could be read (see the '
                          'skipped files in the log)')
