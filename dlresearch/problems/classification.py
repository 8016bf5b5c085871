"""Problem ``classification``: images or feature vectors with a class label.

The data is a TFDS dataset (``--dataset``) whose ``label`` is a ClassLabel;
the task is ``tasks.Classification``. Images go through the pipeline's
augmentation and normalisation; feature vectors are cast to float32.
``--pipeline=auto`` holds a train split of up to
``pipeline.MEMORY_LIMIT_BYTES`` in memory, else streams it with grain.
With ``--audit_group=sex,...`` the eval batches also carry those group
columns (never passed to the model) and eval lines add per-group metrics
and fairness gaps. ``--image_channels`` repeats grey images to RGB;
``--shuffle_spatial`` applies one fixed permutation of the positions
(``spatial_permutation``) to every split.
"""

import dataclasses

import jax
import numpy as np
import tensorflow_datasets as tfds

from dlresearch import problems, tasks
from dlresearch.config import Config, ConfigError
from dlresearch.data import augment, datasets, pipeline, text
from dlresearch.problems import splits as splits_lib


@problems.register('classification')
def classification(cfg: Config, workdir: str, fresh: bool) -> pipeline.Data:
  """Image/feature classification from a TFDS dataset named by ``cfg``."""
  del workdir, fresh
  data_dir, manual_dir = problems.dirs(cfg)
  info = datasets.dataset_info(cfg.dataset, data_dir, manual_dir)
  splits = splits_lib.pick(cfg, info.splits, train=info.train_split,
                           eval_default=info.eval_split,
                           test_labelled=info.eval_split != 'validation')
  key = info.input_key
  is_image = key == 'image'
  if is_image and info.input_shape is None and not cfg.image_size:
    raise ConfigError('image_size', f'{cfg.dataset} has images of varying '
                      'size: set --image_size (e.g. 224)')
  if cfg.pipeline == 'auto':
    nbytes = (np.prod(info.input_shape) * info.splits.get(splits.train, 0)
              if info.input_shape is not None else np.inf)
    in_memory = nbytes <= pipeline.MEMORY_LIMIT_BYTES
  else:
    in_memory = cfg.pipeline == 'memory'
  if in_memory and info.input_shape is None:
    raise ConfigError('pipeline', f'{cfg.dataset} has images of varying size '
                      'and cannot be held in memory; use --pipeline=grain')
  keys = (key, info.label_key)
  groups = audit_groups(cfg, splits.eval, key, info.label_key)

  def make(split, train):
    keys_ = keys if train else keys + tuple(g for g, _ in groups)
    example_fn = (pipeline.image_example_fn(cfg.augment, cfg.image_size, train,
                                            key, **recipe(cfg))
                  if is_image else None)
    batch_fn = (pipeline.image_batch_fn(cfg.normalize, key) if is_image else
                (lambda b: {**b, key: b[key].astype(np.float32)}))
    if in_memory:
      arrays = datasets.load_in_memory(cfg.dataset, split, data_dir, manual_dir)
      return pipeline.ArrayDataset({k: arrays[k] for k in keys_}, example_fn,
                                   batch_fn, mix if train else None)
    source = datasets.get_source(cfg.dataset, split, data_dir, manual_dir)
    return pipeline.SourceDataset(source, example_fn, batch_fn, keys_,
                                  mix if train else None)

  mix = mix_fn(cfg, info.num_classes, key, info.label_key, is_image)
  # With Mixup/CutMix the label smoothing is folded into the soft targets.
  task = tasks.Classification(input_key=key, label_key=info.label_key,
                              loss=cfg.loss,
                              label_smoothing=0.0 if mix else cfg.label_smoothing,
                              groups=groups)
  # Every split gets the same input transforms (the test split at the end
  # included): channel repeat, then the fixed pixel permutation.
  sets = [make(splits.train, True), make(splits.eval, False),
          make(splits.test, False) if splits.test else None]
  if cfg.image_channels:
    if not is_image:
      raise ConfigError('image_channels', f'{cfg.dataset} has no images')
    sets = [d if d is None else repeat_channels(d, key, cfg.image_channels)
            for d in sets]
  if cfg.shuffle_spatial:
    if info.input_shape is None:
      raise ConfigError('shuffle_spatial', f'{cfg.dataset} has inputs of '
                        'varying size')
    perm = spatial_permutation(info.input_shape[0])
    sets = [d if d is None else permute_positions(d, key, perm) for d in sets]
  train, evals, test = sets
  return pipeline.Data(train, evals, task, {'num_classes': info.num_classes},
                       use_grain=not in_memory, eval_split=splits.eval,
                       test=test, test_split=splits.test or '',
                       label_names=datasets.label_names(cfg.dataset, data_dir,
                                                        manual_dir))


def recipe(cfg: Config) -> dict:
  """The per-example augmentation options (``augment.ImageTrainFn``)."""
  return dict(crop_scale=(cfg.crop_scale_min, 1.0),
              crop_ratio=(1 / cfg.crop_ratio_max, cfg.crop_ratio_max),
              randaugment_ops=cfg.randaugment_ops,
              randaugment_magnitude=cfg.randaugment_magnitude,
              randaugment_magnitude_std=cfg.randaugment_magnitude_std,
              color_jitter=cfg.color_jitter, random_erase=cfg.random_erase)


def mix_fn(cfg: Config, num_classes: int, key: str, label_key: str,
           is_image: bool) -> augment.Mix | None:
  """The training batches' Mixup/CutMix, or None when both are off."""
  if not (cfg.mixup_alpha or cfg.cutmix_alpha):
    return None
  if cfg.cutmix_alpha and not is_image:
    raise ConfigError('cutmix_alpha', f'{cfg.dataset} has no images to cut '
                      'and paste; use --mixup_alpha')
  if (cfg.batch_size // jax.process_count()) % 2:
    raise ConfigError('batch_size', 'Mixup/CutMix mix neighbouring examples: '
                      f'each of the {jax.process_count()} processes needs an '
                      f'even share of --batch_size={cfg.batch_size}')
  return augment.Mix(num_classes, cfg.mixup_alpha, cfg.cutmix_alpha,
                     cfg.mix_prob, cfg.mix_switch_prob, cfg.label_smoothing,
                     key, label_key)


def audit_groups(cfg: Config, split: str, input_key: str, label_key: str
                 ) -> tuple[tuple[str, tuple[str, ...]], ...]:
  """``((column, group names), ...)`` of ``--audit_group`` on ``split``.

  A ClassLabel column gives its names; an integer column the names '0' ..
  'max' (its largest value in ``split``). Raises ``ConfigError``
  (``audit_group``) for a missing column, the model input or label, or a
  column of another kind.
  """
  wanted = [k.strip() for k in cfg.audit_group.split(',') if k.strip()]
  if not wanted:
    return ()
  data_dir, manual_dir = problems.dirs(cfg)
  source = datasets.get_source(cfg.dataset, split, data_dir, manual_dir)
  info = getattr(source, 'dataset_info', None)
  features = info.features if info is not None else {}
  out = []
  for name in dict.fromkeys(wanted):
    if name not in features:
      raise ConfigError('audit_group', f'{cfg.dataset} has no column {name!r}; '
                        f'its columns: {", ".join(features.keys())}')
    if name in (input_key, label_key):
      raise ConfigError('audit_group', f'{name!r} is the model input or label, '
                        'not a group column')
    feature = features[name]
    if isinstance(feature, tfds.features.ClassLabel):
      out.append((name, tuple(feature.names)))
      continue
    dtype = np.dtype(getattr(feature, 'np_dtype', np.float32))
    if feature.shape != () or not np.issubdtype(dtype, np.integer):
      raise ConfigError('audit_group', f'column {name!r} is {feature!r}; a '
                        'group column is a ClassLabel or an integer scalar')
    values = np.asarray(text.read_column(source, name))
    out.append((name, tuple(str(i) for i in range(int(values.max()) + 1))))
  return tuple(out)


def repeat_channels(ds, key: str, channels: int):
  """``ds`` with single-channel images repeated to ``channels`` (before the
  normalisation, so e.g. grey Fashion-MNIST becomes grey RGB for ImageNet
  models)."""
  inner = ds.batch_fn

  def batch_fn(batch):
    x = batch[key]
    if x.shape[-1] != channels:
      if x.shape[-1] != 1:
        raise ConfigError('image_channels', f'images have {x.shape[-1]} '
                          f'channels; only 1 can be repeated to {channels}')
      x = np.repeat(x, channels, axis=-1)
    batch = {**batch, key: x}
    return inner(batch) if inner else batch

  return dataclasses.replace(ds, batch_fn=batch_fn)


SHUFFLE_SEED = 0  # --shuffle_spatial's permutation, the same for every run


def spatial_permutation(length: int) -> np.ndarray:
  """The fixed permutation of the positions used by ``--shuffle_spatial``."""
  return np.random.default_rng(SHUFFLE_SEED).permutation(length)


def permute_positions(ds, key: str, perm: np.ndarray):
  """``ds`` with ``x[:, perm]`` in every batch."""
  inner = ds.batch_fn

  def batch_fn(batch):
    batch = inner(batch) if inner else batch
    return {**batch, key: batch[key][:, perm]}

  return dataclasses.replace(ds, batch_fn=batch_fn)
