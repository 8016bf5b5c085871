"""The one way every problem picks its splits.

- train: ``--train_split``, else the dataset's train split (``train``).
- eval (periodic evals, model selection): ``--eval_split``, else
  ``validation`` when the dataset has one, else its default eval split
  (``test``, or ``validation`` for a dataset whose test split has no labels).
- test (evaluated once at the end): ``--test_split`` (``none``: no test
  split), else ``test`` when the dataset has a labelled one and periodic
  evals use another split.

Every split named is checked against the dataset's splits (a slice like
``train[:90%]`` by its base name) and a wrong one is a ``ConfigError``
naming the flag. When the dataset's splits are unknown (a mocked dataset),
nothing is checked and ``test`` is the default eval split.
"""

import dataclasses
from typing import Collection

from dlresearch.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class Splits:
  """The split names a run reads; ``test`` is None when there is none."""

  train: str
  eval: str
  test: str | None


def test_split_name(cfg: Config, eval_split: str, available: Collection[str],
                    test_labelled: bool = True) -> str | None:
  """The split evaluated once at the end: ``--test_split``, else ``test``
  when the dataset has a labelled one and periodic evals use another."""
  if cfg.test_split == 'none':
    return None
  if cfg.test_split:
    return cfg.test_split
  if test_labelled and 'test' in available and eval_split != 'test':
    return 'test'
  return None


def pick(cfg: Config, available: Collection[str], *, train: str = 'train',
         eval_default: str = 'test', test_labelled: bool = True) -> Splits:
  """The train, eval and test splits of ``cfg`` (module docstring).

  Args:
    cfg: the run's config (``train_split``, ``eval_split``, ``test_split``).
    available: the dataset's split names (empty: unknown, nothing checked).
    train: the dataset's train split.
    eval_default: its eval split when it has no ``validation`` split.
    test_labelled: False when its ``test`` split carries no labels.
  """
  eval_split = cfg.eval_split or ('validation' if 'validation' in available
                                  else eval_default)
  out = Splits(train=cfg.train_split or train, eval=eval_split,
               test=test_split_name(cfg, eval_split, available, test_labelled))
  for flag, split in (('train_split', out.train), ('eval_split', out.eval),
                      ('test_split', out.test or '')):
    if split and available and split.split('[')[0] not in available:
      raise ConfigError(flag, f'{cfg.dataset} has no split {split!r}; it has '
                        f'{", ".join(sorted(available))}')
  return out
