"""Problem ``anomaly``: fraud and anomaly detection.

``--dataset`` picks the data and its split:

- ``creditcard``: the ULB/Worldline card transactions, split by time (the
  first 80% train, the last 20% test; ``readers.creditcard_split``).
- ``shuttle``: Statlog Shuttle in its own train/test split; the majority
  class ``Rad.Flow`` is normal (``readers.shuttle_split``).
- any labelled TFDS image dataset (e.g. ``fashion_mnist_local``): one-class
  detection. Train on the train images of ``--normal_class``; test on the
  whole test split, where every other class is an anomaly. Images are
  scaled to [0, 1].

Raw files are read from ``--manual_dir`` (empty: where ``python -m
dlresearch.data.fetch NAME`` put them); data not fetched is one
``ConfigError`` naming the fetch command.

The model decides how the detector learns. An autoencoder (a model without
``num_classes``, e.g. ``mlp_autoencoder``, ``conv_autoencoder``) trains on
the normal train rows only (``task.Reconstruction``) and scores by
reconstruction error. A classifier (a model with ``num_classes``, e.g.
``mlp``) trains on every train row with its label (``tasks.Classification``,
2 classes) and scores by the log-odds of the anomaly class. Every eval line
then carries ``auroc``, ``average_precision``, ``precision_at_alert_rate``
and ``recall_at_alert_rate`` of the model and, with the prefix ``iforest_``,
of scikit-learn's IsolationForest fitted on the same normal train rows
(``evaluators.anomaly_hook``).

Options (``options.py``): ``--feature_scaling`` (standard or robust, the
tabular data), ``--time_feature=hour`` (creditcard: the time of day as two
features), ``--anomaly_score`` (mse, or standardized / mahalanobis
reconstruction errors fitted on the ``--score_holdout`` latest normal train
rows, held out of training). IsolationForest is fitted on all normal train
rows with the standard features whatever these options say.
"""

import json
import os

import numpy as np

from dlresearch import problems, tasks
from dlresearch.apps.anomaly import evaluators, readers, task as task_lib
from dlresearch.config import Config, ConfigError
from dlresearch.data import datasets, pipeline
from dlresearch.models import registry
from dlresearch.problems import splits as splits_lib

TABULAR = {'creditcard': readers.creditcard_split,
           'shuttle': readers.shuttle_split}


def one_class_split(cfg: Config) -> dict[str, np.ndarray]:
  """A labelled image dataset as one-class detection of ``normal_class``.

  Returns:
    ``x_train`` (the train images of the normal class), ``y_train`` (zeros),
    ``x_test`` (every test image), ``y_test`` (1 = another class); images
    float32 in [0, 1], NHWC.
  """
  data_dir, manual_dir = problems.dirs(cfg)
  info = datasets.dataset_info(cfg.dataset, data_dir, manual_dir)
  if cfg.normal_class < 0:
    raise ConfigError('normal_class', '-1 (every class in turn) is run by '
                      'experiments.anomaly, one run per class; a single run '
                      'needs a class id')
  if cfg.normal_class >= info.num_classes:
    raise ConfigError('normal_class', f'{cfg.dataset} has classes 0..'
                      f'{info.num_classes - 1} (got {cfg.normal_class})')
  picked = splits_lib.pick(cfg, info.splits, train=info.train_split,
                           eval_default=info.eval_split)
  splits = {}
  for name, split in (('train', picked.train), ('test', picked.eval)):
    arrays = datasets.load_in_memory(cfg.dataset, split, data_dir, manual_dir)
    x = arrays[info.input_key].astype(np.float32) / 255.0
    y = (arrays[info.label_key] != cfg.normal_class).astype(np.int32)
    splits[name] = x[..., None] if x.ndim == 3 else x, y
  (x_train, y_train), (x_test, y_test) = splits['train'], splits['test']
  return {'x_train': x_train[y_train == 0], 'y_train': y_train[y_train == 0],
          'x_test': x_test, 'y_test': y_test}


def load_split(cfg: Config) -> dict[str, np.ndarray]:
  """``x_train``, ``y_train``, ``x_test``, ``y_test`` of ``cfg.dataset``.

  Raises:
    ConfigError: (``manual_dir``) the raw files are not there; the message
      names the fetch command.
  """
  if cfg.time_feature != 'none' and cfg.dataset != 'creditcard':
    raise ConfigError('time_feature', f'{cfg.dataset} has no transaction '
                      'time; --time_feature applies to --dataset=creditcard '
                      '(use none)')
  if cfg.dataset in TABULAR:
    raw = os.path.expanduser(cfg.manual_dir) if cfg.manual_dir else None
    kwargs = {'scaling': cfg.feature_scaling}
    if cfg.dataset == 'creditcard':
      kwargs['time_feature'] = cfg.time_feature
    try:
      return TABULAR[cfg.dataset](raw, **kwargs)
    except FileNotFoundError as e:
      raise ConfigError('manual_dir', str(e)) from None
  if cfg.feature_scaling != 'standard':
    raise ConfigError('feature_scaling', f'{cfg.dataset} is an image dataset '
                      '(pixels scaled to [0, 1]); --feature_scaling applies '
                      f'to {", ".join(sorted(TABULAR))} (use standard)')
  return one_class_split(cfg)


def holdout(normal: np.ndarray, fraction: float
            ) -> tuple[np.ndarray, np.ndarray]:
  """``(train, reference)``: the last ``ceil(fraction * n)`` normal rows
  (the latest, on the time-ordered card data) held out as the reference of
  the ``standardized`` and ``mahalanobis`` scores; at least 2 rows each.

  Raises:
    ConfigError: (``score_holdout``) too few rows for both parts.
  """
  n = len(normal)
  k = int(np.ceil(fraction * n - 1e-9))
  if k < 2 or n - k < 2:
    raise ConfigError('score_holdout', f'{fraction:g} of the {n} normal train '
                      f'rows leaves {k} held out and {n - k} to train; each '
                      'needs at least 2')
  return normal[:n - k], normal[n - k:]


@problems.register('anomaly')
def anomaly(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Anomaly detection by an autoencoder or a classifier (module docstring)."""
  del workdir, fresh
  try:
    supervised = 'num_classes' in registry.fields(cfg.model)
  except KeyError as e:
    raise ConfigError('model', str(e).strip('"')) from None
  if supervised and cfg.anomaly_score != 'mse':
    raise ConfigError('anomaly_score', f'{cfg.model} is a classifier, scored '
                      'by the log-odds of the anomaly class; '
                      f'--anomaly_score={cfg.anomaly_score} applies to '
                      'autoencoders (use mse)')
  split = load_split(cfg)
  normal = split['x_train'][split['y_train'] == 0]
  baseline = split.get('baseline_x_train', split['x_train'])[
      split['y_train'] == 0]
  reference = None
  if supervised:
    if split['y_train'].min() == split['y_train'].max():
      raise ConfigError('model', f'{cfg.model} is a classifier, but the train '
                        f'split of {cfg.dataset} holds one class only; use an '
                        'autoencoder (mlp_autoencoder, conv_autoencoder)')
    train = pipeline.ArrayDataset({'x': split['x_train'],
                                   'label': split['y_train']})
    task = tasks.Classification(input_key='x', label_key='label',
                                loss=cfg.loss)
  else:
    if cfg.anomaly_score != 'mse':
      normal, reference = holdout(normal, cfg.score_holdout)
    train = pipeline.ArrayDataset({'x': normal})
    task = task_lib.Reconstruction(input_key='x')
  evals = pipeline.ArrayDataset({'x': split['x_test'],
                                 'label': split['y_test']})
  hook = evaluators.anomaly_hook(cfg, split['x_test'], split['y_test'],
                                  supervised, baseline,
                                  split.get('baseline_x_test'), reference)
  return pipeline.Data(train, evals, task,
                       problems.model_sizes(cfg, num_classes=2),
                       eval_hooks=[hook])


def one_class_table(cfg: Config, workdir: str, run) -> dict:
  """Runs ``run(cfg, subdir)`` with each class as normal; writes the table.

  Each class ``c`` of ``cfg.dataset`` trains in ``WORKDIR/class_<c>``;
  ``WORKDIR/table.md`` and ``summary.json`` hold every class's final
  ``auroc`` and average precision next to IsolationForest's.

  Returns:
    The mean of the per-class metrics over the classes plus ``step``.
  """
  data_dir, manual_dir = problems.dirs(cfg)
  info = datasets.dataset_info(cfg.dataset, data_dir, manual_dir)
  source = datasets.get_source(cfg.dataset, info.train_split, data_dir,
                               manual_dir)
  feature = source.dataset_info.features[info.label_key]
  class_names = list(getattr(feature, 'names', None) or [])
  num_classes = info.num_classes
  rows = []
  for c in range(num_classes):
    result = run(cfg.replace(normal_class=c), os.path.join(workdir,
                                                           f'class_{c}'))
    if result.get('preempted'):
      return result
    name = class_names[c] if class_names else str(c)
    rows.append({'class': c, 'name': name, **{
        k: result[k] for k in ('auroc', 'average_precision', 'iforest_auroc',
                               'iforest_average_precision')}})
  mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]
          if k not in ('class', 'name')}
  lines = ['| normal class | AUROC | AP | IsolationForest AUROC | '
           'IsolationForest AP |', '|---|---:|---:|---:|---:|']
  for r in rows + [{'class': '', 'name': 'mean', **mean}]:
    lines.append(f'| {r["class"]} {r["name"]} | {r["auroc"]:.3f} | '
                 f'{r["average_precision"]:.3f} | {r["iforest_auroc"]:.3f} | '
                 f'{r["iforest_average_precision"]:.3f} |')
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'table.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(workdir, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump({'classes': rows, 'mean': mean}, f, indent=1)
  print('\n'.join(lines), flush=True)
  return {'step': result['step'], **mean}
