"""`number_words`: translate English number words into German (or French).

A small parallel corpus made offline, for exercising encoder-decoder models
end to end (tokenize, teacher forcing, greedy decoding, BLEU/exact match)::

  source: 'twenty-seven thousand, three hundred and fifty-four'
  target: 'siebenundzwanzigtausenddreihundertvierundfünfzig'

Every integer in ``[0, 100000)`` is written out by the ``num2words`` package
(pinned: 0.5.14) in English and in the target language. Why not a real
bitext: no sentence-aligned corpus of useful size ships inside a registry
package reachable here (the nearest, Django's gettext catalogues, holds ~900
short UI strings per language). This task is real language with real
structure, word order flips ('twenty-one' -> 'einundzwanzig') and
compounding, yet it is deterministic and learnable.

Configs: ``number_words/en-de`` (default) and ``number_words/en-fr``.
Features: ``source`` and ``target`` (tfds Text; read back as UTF-8 bytes)
and ``number`` (int64). Split, fixed and version-independent: the integers are
ordered by the sha256 of their decimal string; the first 5000 are ``test``,
the next 5000 ``validation`` and the remaining 90000 ``train``.
"""

import dataclasses
import hashlib

import numpy as np
import tensorflow_datasets as tfds

from dlresearch.data import fetch

NUM_NUMBERS = 100_000
NUM_TEST = 5_000
NUM_VALIDATION = 5_000


def split_numbers(num_numbers: int = NUM_NUMBERS) -> dict[str, list[int]]:
  """The fixed split of ``range(num_numbers)`` (see module docstring)."""
  order = sorted(range(num_numbers),
                 key=lambda n: hashlib.sha256(str(n).encode()).digest())
  first_val = NUM_TEST
  first_train = NUM_TEST + NUM_VALIDATION
  return {'train': order[first_train:],
          'validation': order[first_val:first_train],
          'test': order[:first_val]}


@dataclasses.dataclass
class NumberWordsConfig(tfds.core.BuilderConfig):
  source_lang: str = 'en'
  target_lang: str = 'de'


class NumberWords(fetch.LocalSourceMixin, tfds.core.GeneratorBasedBuilder):
  """Number words, English -> German/French, generated with num2words."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release (num2words 0.5.14).'}
  BUILDER_CONFIGS = [
      NumberWordsConfig(name='en-de', source_lang='en', target_lang='de',
                        description='English -> German number words.'),
      NumberWordsConfig(name='en-fr', source_lang='en', target_lang='fr',
                        description='English -> French number words.'),
  ]
  DEFAULT_CONFIG_NAME = 'en-de'

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'source': tfds.features.Text(),
            'target': tfds.features.Text(),
            'number': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('source', 'target'),
        homepage='https://pypi.org/project/num2words/',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download or read.
    return {split: self._generate_examples(numbers)
            for split, numbers in split_numbers().items()}

  def _generate_examples(self, numbers):
    try:
      from num2words import num2words  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError('number_words needs the num2words package: '
                        '`pip install num2words==0.5.14`.') from e
    src, tgt = self.builder_config.source_lang, self.builder_config.target_lang
    for n in numbers:
      yield n, {'source': num2words(n, lang=src),
                'target': num2words(n, lang=tgt),
                'number': n}
