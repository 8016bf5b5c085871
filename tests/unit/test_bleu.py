"""dlresearch.evaluators.bleu: BLEU, chrF and exact match of translations."""

import pytest

from dlresearch.evaluators import bleu


def test_translation_scores():
  refs = ['einundzwanzig', 'dreihundert', 'zwei']
  perfect = bleu.translation_scores(refs, refs, 'char')
  assert perfect == {'bleu': pytest.approx(100), 'chrf': pytest.approx(100),
                     'exact_match': 1.0}
  # One-word compounds: 13a BLEU has no 2-4-grams, so it is 0 even when right.
  assert bleu.translation_scores(refs, refs, '13a')['bleu'] == 0.0
  near = bleu.translation_scores(['einundzwanzig', 'dreihundertzwei',
                                        'zwei'], refs, 'char')
  assert 0 < near['bleu'] < 100 and near['exact_match'] == pytest.approx(2 / 3)
