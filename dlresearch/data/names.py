"""Dataset names checked in a blink: before jax, flax or a dataset is loaded.

``check(name, data_dir)`` accepts what ``datasets.get_source`` can open --
an offline builder, ``image_folder:PATH``, anything prepared in
``data_dir``, a registered TFDS name -- and refuses the rest with one
``ConfigError``: a misspelt name gets "did you mean" (``difflib``), and an
official TFDS dataset that is not prepared (preparing it needs TensorFlow)
gets the offline datasets that stand in for it, then how to prepare it.
Local names cost a directory listing; only a name that is none of them
imports ``tensorflow_datasets`` (about half a second, no jax).
"""

import difflib
import glob
import os

from dlresearch.config import ConfigError

# Builders in dlresearch/data/builders/ that prepare from local files (no
# TensorFlow, no download); ``datasets.OFFLINE_BUILDERS``.
OFFLINE_BUILDERS = ('digits', 'mnist1d', 'fashion_mnist_local', 'shakespeare',
                    'rotten_tomatoes', 'text_files', 'number_words', 'adult',
                    'compas', 'german_credit')
IMAGE_FOLDER = 'image_folder:'

# What each offline builder is, for suggestions.
ABOUT = {
    'fashion_mnist_local': 'Fashion-MNIST, 60k/10k 28x28 grey images, 10 '
                           'classes; fetch its files once (README "Data")',
    'digits': "scikit-learn's 8x8 handwritten digits, 1,437/360 images, "
              'bundled',
    'mnist1d': 'MNIST-1D, 4,000/1,000 sequences of 40, bundled with its package',
    'adult': 'UCI Adult income table (python -m dlresearch.data.fetch adult)',
    'compas': "ProPublica's COMPAS two-year recidivism table, 6,172 rows "
              '(python -m dlresearch.data.fetch compas)',
    'german_credit': 'UCI German credit, 1,000 rows (python -m '
                     'dlresearch.data.fetch german_credit)',
    'shakespeare': 'tiny Shakespeare characters (python -m '
                   'dlresearch.data.fetch shakespeare)',
    'rotten_tomatoes': 'movie-review sentiment (python -m '
                       'dlresearch.data.fetch rotten_tomatoes)',
    'image_folder:PATH': 'your own images, one folder per class',
}

# Official TFDS datasets (their preparation needs TensorFlow) -> the offline
# datasets to try instead, best first.
OFFLINE_INSTEAD = {
    'mnist': ('fashion_mnist_local', 'digits'),
    'fashion_mnist': ('fashion_mnist_local', 'digits'),
    'kmnist': ('fashion_mnist_local', 'digits'),
    'emnist': ('fashion_mnist_local', 'digits'),
    'cifar10': ('fashion_mnist_local', 'image_folder:PATH'),
    'cifar100': ('fashion_mnist_local', 'image_folder:PATH'),
    'imagenet2012': ('image_folder:PATH', 'fashion_mnist_local'),
    'imagenette': ('image_folder:PATH', 'fashion_mnist_local'),
    'tiny_shakespeare': ('shakespeare',),
    'imdb_reviews': ('rotten_tomatoes',),
    'rotten_tomatoes': ('rotten_tomatoes',),
    'glue': ('rotten_tomatoes',),
}
IMAGE_DEFAULT_INSTEAD = ('fashion_mnist_local', 'digits')


class NotPrepared(ValueError):
  """A registered TFDS dataset that is not prepared (the message says how)."""


def base_name(name: str) -> str:
  """``wmt14_translate/de-en:1.0.0`` -> ``wmt14_translate``."""
  return name.split(':')[0].split('/')[0]


def did_you_mean(name: str, candidates, n: int = 3) -> str:
  """``; did you mean a, b?`` for the closest of ``candidates`` (or '')."""
  close = difflib.get_close_matches(name, sorted(set(candidates)), n=n,
                                    cutoff=0.6)
  return f'; did you mean {", ".join(close)}?' if close else ''


def prepared(data_dir: str) -> list[str]:
  """The datasets prepared in ``data_dir`` (a ``dataset_info.json`` inside)."""
  root = glob.escape(os.path.expanduser(data_dir))
  found = glob.glob(os.path.join(root, '*', '*', 'dataset_info.json'))
  found += glob.glob(os.path.join(root, '*', '*', '*', 'dataset_info.json'))
  return sorted({os.path.relpath(p, os.path.expanduser(data_dir)).split(
      os.sep)[0] for p in found})


def _tfds_names() -> list[str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return list(tfds.list_builders(with_community_datasets=False))


def offline_instead(name: str) -> str:
  """``fashion_mnist_local (what it is), digits (...)`` for a TFDS name."""
  picks = OFFLINE_INSTEAD.get(base_name(name), IMAGE_DEFAULT_INSTEAD)
  return ', '.join(f'--dataset={p} ({ABOUT[p]})' for p in picks)


def prepare_instructions(name: str, data_dir: str) -> str:
  """How to prepare a TFDS dataset that needs TensorFlow to build."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  base = base_name(name)
  manual = getattr(tfds.builder_cls(base), 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  config = (
      'download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR), '
      if manual else ''
  )
  text = [
      'Preparing it needs TensorFlow. On a machine with TensorFlow '
      '(pip install tensorflow tensorflow-datasets)'
      + (', put the files below in MANUAL_DIR' if manual else '') + ', run',
      '',
      '  python -c "import tensorflow_datasets as tfds; '
      f"tfds.builder('{name}', data_dir='BUILD_DIR').download_and_prepare("
      f"{config}file_format='array_record')\"",
      '',
      f'then copy BUILD_DIR/{base}/ to {data_dir}/{base}/ (reading needs no '
      'TensorFlow).',
  ]
  if manual:
    text += ['', 'MANUAL_DIR, as the TFDS builder says:', manual.rstrip()]
  return '\n'.join(text)


def not_prepared(name: str, data_dir: str) -> str:
  """A registered TFDS dataset missing from ``data_dir``: offline ones first."""
  return (f'--dataset={name} is not prepared in {data_dir}. Offline datasets '
          f'that need no TensorFlow: {offline_instead(name)}.\n'
          f'To use {base_name(name)} itself: '
          + prepare_instructions(name, data_dir))


def check(name: str, data_dir: str, tfds_names=None) -> None:
  """``ConfigError`` unless ``name`` is openable (see the module docstring).

  ``tfds_names``: the registered TFDS names (default: asked of TFDS, only
  when ``name`` is not local).
  """
  base = base_name(name)
  if '://' in data_dir:  # a bucket (gs://...): TFDS reads it, we cannot list it cheaply
    return
  if (name.startswith(IMAGE_FOLDER) or base in OFFLINE_BUILDERS or
      base in prepared(data_dir)):
    return
  if tfds_names is None:
    tfds_names = _tfds_names()
  if base in tfds_names:
    raise NotPrepared(not_prepared(name, data_dir))
  local = list(OFFLINE_BUILDERS) + prepared(data_dir)
  hint = did_you_mean(base, local) or did_you_mean(base, tfds_names)
  raise ConfigError('dataset', (
      f'unknown dataset {name!r} (not prepared in {data_dir}, not a TFDS '
      f'name){hint or "."} Offline ones: {", ".join(OFFLINE_BUILDERS)}, '
      f'{IMAGE_FOLDER}PATH'))
