r"""Logistic regression on frozen MobileNetV2 features -> Fashion-MNIST.

    nice -n 19 python -m benchmarks.transfer_probe --image_size=96

The scikit-learn reference for ``experiments.finetune
--preset=mobilenet_fashion_mnist --probe`` (issue 26, item 1):

- weights: torchvision's ImageNet MobileNetV2 through the library's own
  converter (``tools.inference.from_weights``, the ``torch:`` path the
  preset's ``--init_from`` names);
- images: the preset's eval preprocessing at ``--image_size`` (grey
  repeated to 3 channels, shorter side resized, centre crop, ImageNet
  normalisation), built by ``problems.build`` on the preset's config, the
  train split read through the eval path (no augmentation);
- features: the pooled pre-logits vector (``return_features=True``,
  ``feats['pre_logits']``, 1280 wide) in eval mode (batch-norm running
  statistics), one jitted batched forward per distinct image, kept in memory;
- subsets: for each seed and size the same stratified subset that
  ``--num_train_examples=N --seed=K`` trains on (``data.subset.train_subset``);
- classifier: features standardised (``StandardScaler`` fitted on the
  subset), ``LogisticRegression`` (lbfgs, multinomial). ``--C`` lists the
  C values, one column each: a number is fixed up front (1.0, scikit-learn's
  default), ``cv`` picks C from 0.001-10 (5 log-spaced values) by 5-fold
  stratified cross-validation on the training subset only
  (``LogisticRegressionCV``); the test split never chooses anything.

Prints, per (subset, seed), the accuracy on the first ``--test_examples``
test images, the mean ± sd per subset (sd with ddof=1), the feature
extraction time and rate, and the load average.
"""

import dataclasses
import os
import sys
import time
import warnings

from absl import app
from absl import flags
import jax
import numpy as np

from dlresearch import problems
from dlresearch.data import subset as subset_lib

FASHION_DIR = ('~/.cache/dlresearch/fashion-mnist/usr/share/datasets/'
               'fashion-mnist')
MOBILENET = ('torch:~/.cache/dlresearch/raw/mobilenet_v2_imagenet/'
             'mobilenet_v2-b0353104.pth')
PRESET = 'mobilenet_fashion_mnist'
C_GRID = np.logspace(-3, 1, 5)

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined when it runs (not at import: the unit test
  imports this module beside experiments that define --seeds too)."""
  flags.DEFINE_string('manual_dir', FASHION_DIR,
                      'directory of the Fashion-MNIST IDX files')
  flags.DEFINE_string('data_dir', '~/tensorflow_datasets',
                      'TFDS data directory (the prepared fashion_mnist_local)')
  flags.DEFINE_string('weights', MOBILENET,
                      'pretrained MobileNetV2 (torch:PATH or safetensors:PATH)')
  flags.DEFINE_integer('image_size', 96, 'input size (centre crop)')
  flags.DEFINE_list('subsets', ['100', '1000'], 'train subset sizes')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'subset seeds (--seed of finetune)')
  flags.DEFINE_integer('test_examples', 10000,
                       'the first N test images (10000: the whole split)')
  flags.DEFINE_integer('batch_size', 100, 'feature-extraction batch size')
  flags.DEFINE_string('cache', '', 'optional .npz: the features are read from '
                      'it when it holds this run\'s (weights, size, images), '
                      'else written to it')
  flags.DEFINE_list('C', ['1.0', 'cv'], "LogisticRegression's C, one table "
                    "column each: a number (fixed up front) or 'cv' (5-fold CV "
                    'on the training subset over 1e-3..1e1)')


def probe_config(manual_dir: str, image_size: int, weights: str,
                 test_examples: int, data_dir: str = '~/tensorflow_datasets'):
  """The finetune preset's config at ``image_size``: the train split is
  read as the eval split (eval preprocessing), the test split as the test."""
  from experiments import finetune  # pylint: disable=g-import-not-at-top
  cfg = finetune.PRESETS[PRESET].config
  return cfg.replace(manual_dir=manual_dir, data_dir=data_dir,
                     image_size=image_size, init_from=weights,
                     eval_split='train',
                     test_split=(f'test[:{test_examples}]' if test_examples
                                 else 'test'),
                     num_train_examples=0)


def load_splits(cfg):
  """``(train, test, label_key, input_key)``: both through the eval path."""
  data = problems.build(cfg, '')
  task = data.task
  return data.eval, data.test, task.label_key, task.input_key


def subset_indices(train, label_key: str, n: int, seed: int) -> np.ndarray:
  """The train indices ``--num_train_examples=n --seed=seed`` trains on."""
  labels = train.arrays[label_key]
  indexed = dataclasses.replace(
      train, arrays={label_key: labels, '_index': np.arange(len(labels))})
  return subset_lib.train_subset(indexed, n, seed, label_key).arrays['_index']


def feature_fn(model, variables):
  """Jitted ``x -> pooled pre-logits features`` in eval mode."""
  return jax.jit(lambda x: model.apply(
      variables, x, train=False, return_features=True)[1]['pre_logits'])


def extract(fn, ds, input_key: str, indices, batch_size: int,
            log=None) -> np.ndarray:
  """Features of ``ds``'s examples ``indices``, in order, batch by batch
  (the last batch padded, so one compiled shape)."""
  indices = np.asarray(indices)
  out = []
  t0 = time.perf_counter()
  for start in range(0, len(indices), batch_size):
    idx = indices[start:start + batch_size]
    pad = np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])
    x = ds.get(pad, None)[input_key]
    out.append(np.asarray(fn(x))[:len(idx)])
    done = start + len(idx)
    if log and ((done // batch_size) % 5 == 0 or done == len(indices)):
      dt = time.perf_counter() - t0
      log(f'  {done}/{len(indices)} images, {dt:.0f} s, '
          f'{done / dt:.1f} images/s')
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def fit_score(x_train, y_train, x_test, y_test, c) -> tuple[float, float]:
  """``(test accuracy, C used)``: standardised features, logistic regression."""
  from sklearn.linear_model import LogisticRegression, LogisticRegressionCV  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings('ignore', category=FutureWarning)
  if c == 'cv':
    folds = int(min(5, np.bincount(y_train).min()))
    clf = LogisticRegressionCV(Cs=C_GRID, cv=folds, max_iter=1000)
  else:
    clf = LogisticRegression(C=float(c), max_iter=1000)
  pipe = make_pipeline(StandardScaler(), clf)
  pipe.fit(x_train, y_train)
  used = float(clf.C_[0]) if c == 'cv' else float(c)
  return float(np.mean(pipe.predict(x_test) == y_test)), used


def _read_cache(path, tag, union):
  if not path or not os.path.exists(path):
    return None
  with np.load(path) as z:
    if str(z['tag']) != str(tag) or not np.array_equal(z['union'], union):
      return None
    return z['f_train'], z['f_test'], float(z['seconds'])


def main(argv):
  del argv
  for c in FLAGS.C:
    try:
      if c != 'cv' and not float(c) > 0:
        raise ValueError
    except ValueError:
      sys.exit(f'transfer_probe: --C={c}: give positive numbers or cv '
               '(e.g. --C=1.0,cv)')
  sizes = [int(s) for s in FLAGS.subsets]
  seeds = [int(s) for s in FLAGS.seeds]
  from dlresearch.tools import inference  # pylint: disable=g-import-not-at-top
  t_start = time.perf_counter()
  cfg = probe_config(os.path.expanduser(FLAGS.manual_dir), FLAGS.image_size,
                     FLAGS.weights, FLAGS.test_examples,
                     os.path.expanduser(FLAGS.data_dir))
  try:
    train, test, label_key, key = load_splits(cfg)
    predictor = inference.from_weights('mobilenet_v2', FLAGS.weights)
  except ValueError as e:  # ConfigError is a ValueError
    sys.exit(f'transfer_probe: {e}')
  picks = {(n, s): subset_indices(train, label_key, n, s)
           for n in sizes for s in seeds}
  union = np.unique(np.concatenate(list(picks.values())))
  fn = feature_fn(predictor.model, predictor.variables)
  log = lambda m: print(m, flush=True)
  print(f'{len(union)} distinct train images, {test.num_examples} test '
        f'images at {FLAGS.image_size}x{FLAGS.image_size}', flush=True)
  t0 = time.perf_counter()
  tag = np.asarray(f'{FLAGS.weights}|{FLAGS.image_size}|{test.num_examples}')
  cached = _read_cache(FLAGS.cache, tag, union)
  if cached:
    f_train, f_test, t_feat = cached
    log(f'features read from {FLAGS.cache} (extracted in {t_feat:.0f} s)')
  else:
    log('train features:')
    f_train = extract(fn, train, key, union, FLAGS.batch_size, log)
    log('test features:')
    f_test = extract(fn, test, key, np.arange(test.num_examples),
                     FLAGS.batch_size, log)
    t_feat = time.perf_counter() - t0
    if FLAGS.cache:
      np.savez(FLAGS.cache, tag=tag, union=union, f_train=f_train,
               f_test=f_test, seconds=t_feat)
  n_img = len(union) + test.num_examples
  row = {i: r for r, i in enumerate(union)}
  y_train_all = train.arrays[label_key].reshape(-1)
  y_test = test.arrays[label_key].reshape(-1)
  print(f'\nlogistic regression (standardised {f_train.shape[1]} features) '
        f'on frozen MobileNetV2 {FLAGS.image_size}px features, test accuracy '
        f'on {len(y_test)} test images (C used in brackets)')
  head = ' | '.join(f'C={c}' for c in FLAGS.C)
  print(f'| train examples | seed | {head} |')
  print('|---:|---:|' + '---:|' * len(FLAGS.C))
  accs = {}
  for n in sizes:
    for s in seeds:
      idx = picks[(n, s)]
      cells = []
      for c in FLAGS.C:
        acc, used = fit_score(f_train[[row[i] for i in idx]],
                              y_train_all[idx], f_test, y_test, c)
        accs.setdefault((n, c), []).append(acc)
        cells.append(f'{100 * acc:.1f}% ({used:.3g})')
      print(f'| {n} | {s} | {" | ".join(cells)} |', flush=True)
  print(f'\n| train examples | {head} |')
  print('|---:|' + '---:|' * len(FLAGS.C))
  for n in sizes:
    cells = []
    for c in FLAGS.C:
      a = accs[(n, c)]
      sd = np.std(a, ddof=1) if len(a) > 1 else 0.0
      cells.append(f'{100 * np.mean(a):.1f} ± {100 * sd:.1f}%')
    print(f'| {n} | {" | ".join(cells)} |')
  print(f'(mean ± sd over seeds {",".join(map(str, seeds))}; sd ddof=1)')
  print(f'\nfeature extraction: {n_img} images in {t_feat:.0f} s '
        f'({n_img / t_feat:.1f} images/s, compile included); '
        f'wall {time.perf_counter() - t_start:.0f} s; '
        f'load average {" ".join(f"{x:.1f}" for x in os.getloadavg())}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
