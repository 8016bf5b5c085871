"""Eval hooks ``hook(model, state) -> dict``, now in ``dlresearch/evaluators/``.

Kept so that existing imports work: ``sample_hook`` and ``continue_prompt``
live in ``evaluators/samples.py``, ``translation_hook``, ``translate`` and
``translation_scores`` in ``evaluators/bleu.py``, ``host_params`` and
``host_step`` in ``evaluators/base.py``.
"""

# pylint: disable=unused-import
from dlresearch.evaluators.base import host_params, host_step  # noqa: F401
from dlresearch.evaluators.bleu import (  # noqa: F401
    TRANSLATIONS_FILE, translate, translation_hook, translation_scores)
from dlresearch.evaluators.samples import continue_prompt, sample_hook  # noqa: F401
