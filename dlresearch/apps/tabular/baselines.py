"""scikit-learn baselines on a run's own feature vectors.

``sklearn_baselines(cfg)`` fits logistic regression and histogram gradient
boosting on the train split of ``cfg``'s dataset (the same float feature
vectors the network sees, e.g. Adult's 108 columns) and scores them on its
eval split (picked by ``problems.splits`` as the network's), so a network's
accuracy can be put next to the classical methods on exactly the same rows. ``run_and_write`` also writes
``WORKDIR/baselines.json``.
"""

import json
import os
import time

import jax
import numpy as np

from dlresearch import logging as log_lib
from dlresearch.config import Config, ConfigError
from dlresearch.data import datasets
from dlresearch.problems import splits as splits_lib

FILE = 'baselines.json'
CHUNK = 10  # boosting iterations between progress updates


def _split(cfg: Config, split: str, key: str, label: str):
  arrays = datasets.load_in_memory(cfg.dataset, split,
                                   os.path.expanduser(cfg.data_dir),
                                   cfg.manual_dir or None)
  x = np.asarray(arrays[key], np.float64)
  return x.reshape(len(x), -1), np.asarray(arrays[label])


def sklearn_baselines(cfg: Config, seed: int | None = None,
                      progress: str = 'auto') -> dict[str, dict]:
  """``{name: {'accuracy', 'fit_seconds'}}`` on ``cfg``'s eval split.

  Logistic regression: L2, C=1, lbfgs, up to 2000 iterations. Gradient
  boosting: ``HistGradientBoostingClassifier`` defaults (100 iterations,
  early stopping off below 10k rows, on above, with its own 10% hold-out
  of train). ``seed`` (default ``cfg.seed``) seeds the boosting. Each fit
  is announced with the data's size, the boosting shows its iterations
  (``logging.Phase``; ``progress`` as ``--progress``).
  """
  from sklearn import ensemble, linear_model  # pylint: disable=g-import-not-at-top
  data_dir = os.path.expanduser(cfg.data_dir)
  info = datasets.dataset_info(cfg.dataset, data_dir, cfg.manual_dir or None)
  if info.input_key == 'image':
    raise ConfigError('dataset', f'{cfg.dataset} holds images; the baselines '
                      'are for feature vectors')
  splits = splits_lib.pick(cfg, info.splits, train=info.train_split,
                           eval_default=info.eval_split)
  train_x, train_y = _split(cfg, splits.train, info.input_key, info.label_key)
  eval_x, eval_y = _split(cfg, splits.eval, info.input_key, info.label_key)
  seed = cfg.seed if seed is None else seed
  size = (f'{len(train_x):,} train rows x {train_x.shape[1]} features, scored '
          f'on {len(eval_x):,} {splits.eval} rows')
  out = {}
  start = time.perf_counter()
  with log_lib.Phase('baseline: fitting logistic regression (lbfgs, up to '
                     '2000 iterations)', detail=size, progress=progress):
    model = linear_model.LogisticRegression(max_iter=2000).fit(train_x, train_y)
  out['logistic_regression'] = _scored(model, eval_x, eval_y, start)
  start = time.perf_counter()
  model = ensemble.HistGradientBoostingClassifier(random_state=seed,
                                                  warm_start=True)
  total = model.get_params()['max_iter']
  with log_lib.Phase('baseline: fitting histogram gradient boosting', total,
                     'iteration', detail=size, progress=progress) as phase:
    # In chunks (warm start: the same trees as one fit), to show progress.
    for upto in [*range(CHUNK, total, CHUNK), total]:
      model.set_params(max_iter=upto)
      model.fit(train_x, train_y)
      phase.update(model.n_iter_ - phase.done)
      if model.n_iter_ < upto:  # stopped early
        break
  out['hist_gradient_boosting'] = _scored(model, eval_x, eval_y, start)
  return out


def _scored(model, eval_x, eval_y, start: float) -> dict:
  return {'accuracy': float(np.mean(model.predict(eval_x) == eval_y)),
          'fit_seconds': round(time.perf_counter() - start, 2)}


def run_and_write(cfg: Config, workdir: str) -> dict[str, float]:
  """Fits the baselines, writes ``WORKDIR/baselines.json`` (process 0) and
  returns ``{'baseline/<name>/accuracy': ...}`` for the result line."""
  found = sklearn_baselines(cfg, progress=cfg.progress)
  if jax.process_index() == 0:
    path = os.path.join(workdir, FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump({'dataset': cfg.dataset, 'eval_split': cfg.eval_split or
                 'default', 'seed': cfg.seed, 'baselines': found}, f, indent=1)
    os.replace(path + '.tmp', path)
  return {f'baseline/{k}/accuracy': v['accuracy'] for k, v in found.items()}
