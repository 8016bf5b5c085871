"""Typed, frozen experiment config: one record of everything that defines a run.

One flat ``Config`` holds everything a run needs, text and data options
included. Presets are ``Config`` values; absl flags (one per field, generated
from the dataclass, with the help text below) override them. Out-of-range
values raise ``ConfigError`` naming the flag.

``WORKDIR/config.json`` records the config of a run when it starts fresh.
Resuming compares the new config with the recorded one: a changed field that
changes what the checkpoint means is refused (``check_resume``); the fields in
``MAY_CHANGE_ON_RESUME`` are the ones that may differ.
"""

import dataclasses
import json
import math
import os
import typing
from typing import Any

# Closed choices: a value outside these is rejected with the list of choices.
CHOICES = {
    'optimizer': ('sgd', 'nesterov', 'adam', 'adamw'),
    'schedule': ('constant', 'cosine', 'step', 'inverse_sqrt'),
    'best_mode': ('max', 'min'),
    'progress': ('auto', 'bar', 'lines', 'none'),
    'loss': ('softmax_xent', 'sigmoid_xent', 'mse'),
    'augment': ('none', 'flip', 'pad_crop_flip', 'crop_flip'),
    'normalize': ('none', 'scale', 'imagenet', 'standardize'),
    'pipeline': ('auto', 'memory', 'grain'),
    'parallelism': ('jit', 'pmap'),
    'dtype': ('float32', 'bfloat16'),
    'tokenizer': ('char', 'bpe', 'unigram'),
}

CONFIG_FILE = 'config.json'
FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
  """A config value is out of range; ``flag`` names the offending field."""

  def __init__(self, flag: str, message: str):
    super().__init__(f'--{flag}: {message}')
    self.flag = flag


def _f(default, help_: str):
  """A field with its help text (shown by ``--helpfull``)."""
  if isinstance(default, dict):
    return dataclasses.field(default_factory=lambda: dict(default),
                             metadata={'help': help_})
  return dataclasses.field(default=default, metadata={'help': help_})


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run needs. Field names are also the flag names."""

  preset: str = _f('', 'Name of the preset this config started from '
                   '(recorded in config.json).')
  # Data.
  data_kind: str = _f('classification', 'What the data is and which task '
                      'trains on it (see dlresearch/problems/ and the '
                      'list under --model).')
  dataset: str = _f('digits', 'TFDS dataset name; the offline builders are '
                    'registered (digits, mnist1d, fashion_mnist_local, '
                    'shakespeare, rotten_tomatoes, number_words/en-de, '
                    'text_files) and so are the official ones.')
  data_dir: str = _f('~/tensorflow_datasets', 'TFDS data directory (where '
                     'datasets are prepared and read).')
  manual_dir: str = _f('', 'Raw files for builders that need them (e.g. the '
                       'Fashion-MNIST IDX files). Empty: the builder default.')
  train_split: str = _f('', "TFDS split to train on. Empty: the dataset's "
                        'train split.')
  eval_split: str = _f('', "TFDS split to evaluate on. Empty: the dataset's "
                       'test split (else validation).')
  pipeline: str = _f('auto', 'auto: in memory when the train split fits '
                     '(4 GiB), else grain.')
  grain_workers: int = _f(0, 'grain worker processes (>= 0; 0 = threads '
                          'only).')
  grain_threads: int = _f(2, 'grain read threads per process (>= 0).')
  image_size: int = _f(0, 'Square image side in pixels (>= 0; 0 = keep the '
                       'stored size of fixed-size datasets).')
  augment: str = _f('none', 'Per-example training augmentation.')
  normalize: str = _f('scale', 'Image normalisation: none, scale to [0, 1], '
                      'ImageNet mean/std, or per-channel standardisation.')
  shuffle_spatial: bool = _f(False, 'Permute the input positions (axis 1) '
                             'with one fixed permutation (NumPy seed 0), train '
                             'and eval alike: MNIST-1D\'s shuffled variants.')
  # Text data (data_kind lm, text_classification, seq2seq).
  tokenizer: str = _f('char', 'Tokenizer built on the train split and kept '
                      'in the workdir: char, bpe (byte-level BPE) or unigram '
                      '(SentencePiece-style).')
  vocab_size: int = _f(8000, 'Subword vocabulary size, 4 special tokens '
                       'included (>= 1; >= 260 for bpe).')
  seq_len: int = _f(128, 'Tokens per language-model training row (>= 1).')
  max_len: int = _f(64, 'Tokens per padded sequence for classification and '
                    'translation (>= 1; longer ones are truncated, longer '
                    'training pairs dropped).')
  text_key: str = _f('text', 'Dataset feature holding the text.')
  label_key: str = _f('label', 'Dataset feature holding the class label '
                      '(text classification).')
  source_key: str = _f('source', 'Dataset feature holding the source '
                       'sentence (translation).')
  target_key: str = _f('target', 'Dataset feature holding the target '
                       'sentence (translation).')
  # Model.
  model: str = _f('lenet5', 'Registered model name (see the list below).')
  model_kwargs: dict = _f({}, 'JSON object of model constructor arguments, '
                          "merged into the preset's (e.g. "
                          '\'{"hidden_size": 256}\').')
  dtype: str = _f('float32', 'Computation dtype; parameters stay float32.')
  # Optimisation.
  batch_size: int = _f(128, 'Global batch size, across all devices and '
                       'processes (> 0).')
  eval_batch_size: int = _f(0, 'Global eval batch size (>= 0; 0 = '
                            '--batch_size).')
  num_steps: int = _f(0, 'Training steps (>= 0; > 0 overrides '
                      '--num_epochs).')
  num_epochs: float = _f(10.0, 'Training epochs when --num_steps is 0 (> 0).')
  optimizer: str = _f('adam', 'sgd/nesterov (momentum), adam (L2 weight '
                      'decay) or adamw (decoupled weight decay).')
  learning_rate: float = _f(1e-3, 'Peak learning rate (> 0).')
  momentum: float = _f(0.9, 'SGD/Nesterov momentum (>= 0; Adam uses '
                       '--adam_b1).')
  weight_decay: float = _f(0.0, 'Weight decay on weight matrices and token '
                           'embeddings (>= 0; biases, norm parameters, '
                           'position tables and the ViT class token are '
                           'skipped: optim.decay_role).')
  schedule: str = _f('constant', 'Learning-rate schedule after warmup.')
  warmup_steps: int = _f(0, 'Linear warmup steps (>= 0): step s < N uses '
                         '(s + 1) / N of the rate, so the first step moves.')
  step_boundaries: tuple = _f((0.3333, 0.6667, 0.8889), 'Comma-separated '
                              'fractions of training where --schedule=step '
                              'multiplies the rate by --step_decay.')
  step_decay: float = _f(0.1, 'Factor of each --schedule=step decay.')
  grad_clip_norm: float = _f(0.0, 'Clip gradients to this global norm (>= 0; '
                             '0 = no clipping).')
  loss: str = _f('softmax_xent', 'Classification loss.')
  label_smoothing: float = _f(0.0, 'Label smoothing in training, in [0, 1) '
                              '(eval reports the plain loss).')
  freeze: str = _f('', "Regex over '/'-joined parameter paths to keep fixed "
                   '(empty: train everything).')
  # Run.
  seed: int = _f(0, 'Seed of the initialisation, data order and dropout '
                 '(>= 0).')
  log_every: int = _f(50, 'Write a train line every N steps (> 0).')
  eval_every: int = _f(0, 'Evaluate every N steps (>= 0; 0 = only at the '
                       'end).')
  checkpoint_every: int = _f(1000, 'Checkpoint every N steps (> 0).')
  keep_checkpoints: int = _f(3, 'Checkpoints kept (the latest N; > 0).')
  eval_only: bool = _f(False, "Evaluate the workdir's latest checkpoint with "
                       'its recorded config, then stop.')
  init_from: str = _f('', 'Initialise the params of a fresh run from this '
                      'workdir or checkpoint directory.')
  # Text generation and translation evals.
  sample: bool = _f(False, 'Language models: at every eval (and with '
                    '--eval_only) continue --prompt and print it.')
  prompt: str = _f('The clouds are in the', 'Text that --sample continues.')
  max_new_tokens: int = _f(200, 'Tokens --sample generates (>= 1).')
  temperature: float = _f(1.0, 'Sampling temperature (> 0).')
  top_k: int = _f(0, 'Sample from the k most likely tokens (>= 0; 0 = all).')
  beam_size: int = _f(1, 'Beam size of the translation eval (>= 1; 1 = '
                      'greedy).')
  bleu_examples: int = _f(0, 'Eval examples decoded for BLEU (>= 0; 0 = '
                          'all).')
  bleu_tokenize: str = _f('13a', 'sacrebleu tokenizer for BLEU (13a: the WMT '
                          'standard; char: character n-grams).')
  # Parallelism.
  mesh: str = _f('', "Device mesh, e.g. 'data:8' or 'data:4,fsdp:2' (one "
                 "axis may be -1); empty: all devices on data.")
  parallelism: str = _f('jit', 'jit (sharded jax.jit) or pmap (the same '
                        'step under jax.pmap).')
  grad_accum_steps: int = _f(1, 'Micro-batches per update (> 0; must divide '
                             '--batch_size).')
  remat: bool = _f(False, 'Recompute block activations in the backward pass '
                   '(ResNet and Transformer models).')
  coordinator_address: str = _f('', 'Multi-host: host:port of process 0 '
                                '(empty: single process, or detected from '
                                'SLURM/Kubernetes/TPU).')
  num_processes: int = _f(0, 'Multi-host: number of processes (>= 0).')
  process_id: int = _f(-1, 'Multi-host: this process (0 .. num_processes-1; '
                       '-1 = detect).')
  heartbeat_timeout_s: int = _f(60, 'Multi-host: seconds without a heartbeat '
                                'before a peer is declared dead (> 0).')
  init_timeout_s: int = _f(300, 'Multi-host: seconds to wait for every '
                           'process to join (> 0).')
  # Responsible AI.
  audit_group: str = _f('', 'Comma-separated group columns of the dataset '
                        "(e.g. 'sex' or 'sex,race'; ClassLabel or int "
                        'features, never fed to the model): every eval line '
                        "adds per-group metrics ('group/sex=Female/accuracy', "
                        "selection_rate, tpr, fpr, count) and the gaps "
                        "('fairness/sex/demographic_parity_difference', "
                        '_ratio, equalized_odds_difference); the positive '
                        'class is 1. Empty: none. Data kind classification.')
  # Applications.
  alert_rate: float = _f(0.001, 'Anomaly evals (--data_kind=anomaly): the '
                         'fraction of eval examples flagged, highest scores '
                         'first, for precision_at_alert_rate and '
                         'recall_at_alert_rate; in (0, 1] (0.001 = 0.1%).')
  normal_class: int = _f(0, 'One-class anomaly detection on a labelled image '
                         'dataset: the class id trained on as normal (>= 0; '
                         'every other class is an anomaly at test time). -1: '
                         'each class in turn, one run per class and a '
                         'per-class table (experiments.anomaly).')
  ranking_k: int = _f(10, 'Retrieval evals (--data_kind=retrieval): the '
                      'length K of each recommended list for recall@K and '
                      'ndcg@K (>= 1).')
  pretrained: str = _f('', 'Transfer demos (experiments.xray): the '
                       'torchvision MobileNetV2 ImageNet weights (.pth); '
                       'empty: the file `python -m dlresearch.data.fetch '
                       'mobilenet_v2_imagenet` cached.')
  # Researcher experience.
  adam_b1: float = _f(0.9, 'Adam/AdamW beta1, in [0, 1).')
  adam_b2: float = _f(0.999, 'Adam/AdamW beta2, in [0, 1) (Transformer-base: '
                      '0.98).')
  adam_eps: float = _f(1e-8, 'Adam/AdamW epsilon (> 0; Transformer-base: '
                       '1e-9).')
  min_lr_ratio: float = _f(0.0, '--schedule=cosine ends at this fraction of '
                           'the peak rate, in [0, 1] (e.g. 0.1).')
  best_metric: str = _f('', 'Eval metric that picks the keep-best checkpoint '
                        '(WORKDIR/checkpoints_best; e.g. accuracy, loss); '
                        'empty: none. Ranked on the periodic eval split, never '
                        'on test unless --eval_split=test says so.')
  best_mode: str = _f('max', 'max: a larger --best_metric is better; min: a '
                      'smaller one.')
  early_stopping_patience: int = _f(0, 'Stop after N evals in a row without a '
                                    'new best --best_metric (>= 0; 0 = never).')
  ema_decay: float = _f(0.0, 'Keep an exponential moving average of the '
                        'params with this decay, in [0, 1) (0 = off; e.g. '
                        '0.999; warmed up as min(d, (1+t)/(10+t))); evals add '
                        'ema_* keys and checkpoints hold it.')
  eval_max_examples: int = _f(0, 'Periodic evals use the first N examples of '
                              'the eval split (>= 0; 0 = all); the final eval '
                              'uses all of it.')
  test_split: str = _f('', "Split evaluated once at the end (eval line "
                       "split 'test'). Empty: the dataset's test split when "
                       "periodic evals use another one; 'none': skip.")
  top_p: float = _f(1.0, '--sample: nucleus sampling, keep the smallest set of '
                    'tokens whose probability reaches p, in (0, 1] (1 = all).')
  progress: str = _f('auto', 'Console progress: bar (tqdm, terminal or '
                     'notebook), lines (log lines), none; auto: bar when '
                     'stderr is a terminal or in a notebook, else lines.')
  model_summary: bool = _f(True, 'Print the model summary (layers, shapes, '
                           'params, FLOPs, memory) and write '
                           'WORKDIR/model_summary.txt.')
  plots: bool = _f(True, 'Write WORKDIR/plots/curves.png at every eval and, '
                   'for classification, confusion_matrix.png at the end.')
  compilation_cache: str = _f('~/.cache/dlresearch/jax_cache', 'Directory of '
                              "JAX's persistent compilation cache (a rerun "
                              "starts faster); 'none' or empty: off.")
  eval_checkpoint: str = _f('', "--eval_only evaluates this checkpoint: "
                            "empty: the latest; 'best': the keep-best one "
                            '(--best_metric); or a step number.')
  profile_steps: str = _f('', 'START:END: write a jax.profiler trace of steps '
                          'START..END-1 to WORKDIR/profile (open with '
                          'TensorBoard\'s profile plugin); empty: none.')
  # Transfer learning.
  new_head: str = _f('', "Regex over '/'-joined parameter paths that are "
                     'freshly initialised (sized to this data) instead of '
                     "loaded from --init_from, e.g. '^head/'; --probe trains "
                     'only these. Empty: every parameter must load.')
  probe: bool = _f(False, 'Linear probe: train only --new_head; the backbone '
                   'runs in eval mode, so its parameters and batch-norm '
                   'statistics stay bit-identical.')
  lr_multipliers: str = _f('', "Per-group learning rates: 'REGEX=FACTOR,...' "
                           "over '/'-joined parameter paths (first match "
                           "wins; factor >= 0), e.g. '^block=0.1'.")
  num_train_examples: int = _f(0, 'Train on a stratified subset of this many '
                               'train examples, drawn with --seed (>= 0; 0 = '
                               'all).')
  image_channels: int = _f(0, 'Repeat single-channel images to this many '
                           'channels (0 = as stored; 3 for ImageNet models).')
  pretrained_tokenizer: str = _f('', 'hf_text_classification: a Hugging Face '
                                 'tokenizer.json, or the model directory '
                                 'holding one.')
  # Speed.
  cpu_eigen_convs: bool = _f(True, 'On CPU, compile the jitted train/eval '
                             'steps so that XLA lowers convolutions to Eigen '
                             'instead of YNNPACK (2-2.6x faster CNN steps on '
                             'small CPUs; same results to float32 rounding). '
                             'It also changes how dots fuse: 6% slower on '
                             'nanoGPT-sized models without convs, 5% faster '
                             'on d=256 GPTs (README "Speed on CPU"). '
                             'Ignored on GPU/TPU and under '
                             '--parallelism=pmap; false: XLA\'s defaults.')

  def replace(self, **kwargs) -> 'Config':
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# The fields a resumed run may change: how it runs, logs, evaluates and where
# it reads from, never what the checkpoint means. Every other field must equal
# the recorded value (``check_resume``). ``num_steps``/``num_epochs`` may
# change to extend or shorten a run; the schedule follows the new length.
# ``preset`` is provenance: the fields it set are compared one by one.
MAY_CHANGE_ON_RESUME = frozenset({
    'preset', 'data_dir', 'manual_dir', 'pipeline', 'grain_workers',
    'grain_threads',
    'eval_split', 'eval_batch_size', 'num_steps', 'num_epochs', 'log_every',
    'eval_every', 'checkpoint_every', 'keep_checkpoints', 'eval_only',
    'init_from', 'sample', 'prompt', 'max_new_tokens', 'temperature', 'top_k',
    'beam_size', 'bleu_examples', 'bleu_tokenize', 'mesh', 'parallelism',
    'grad_accum_steps', 'remat', 'coordinator_address', 'num_processes',
    'process_id', 'heartbeat_timeout_s', 'init_timeout_s', 'audit_group',
    'alert_rate', 'ranking_k', 'early_stopping_patience', 'eval_max_examples',
    'test_split', 'top_p', 'progress', 'model_summary', 'plots',
    'compilation_cache', 'profile_steps', 'eval_checkpoint',
    # Transfer learning: read only when a run starts fresh / where from.
    'new_head', 'pretrained_tokenizer',
    'cpu_eigen_convs',
})


def field_help(name: str) -> str:
  return Config.__dataclass_fields__[name].metadata['help']


def _check(cond: bool, name: str, message: str, value) -> None:
  if not cond:
    raise ConfigError(name, f'must be {message} (got {value!r})')


def validate(cfg: Config) -> Config:
  """Checks ranges and choices; raises ``ConfigError`` naming the flag."""
  for name, choices in CHOICES.items():
    _check(getattr(cfg, name) in choices, name,
           f'one of {", ".join(choices)}', getattr(cfg, name))
  for name, kind in field_types().items():
    value = getattr(cfg, name)
    if kind is float:  # computed in float32: beyond its range is inf
      _check(math.isfinite(value) and abs(value) <= FLOAT32_MAX, name,
             'a finite number within float32 range (|x| <= 3.4e38)', value)
  for name in ('batch_size', 'learning_rate', 'log_every', 'checkpoint_every',
               'keep_checkpoints', 'grad_accum_steps', 'heartbeat_timeout_s',
               'init_timeout_s', 'vocab_size', 'seq_len', 'max_len',
               'max_new_tokens', 'beam_size', 'temperature'):
    _check(getattr(cfg, name) > 0, name, '> 0', getattr(cfg, name))
  _check(cfg.num_steps >= 0, 'num_steps', '>= 0', cfg.num_steps)
  if cfg.num_steps == 0:
    _check(cfg.num_epochs > 0, 'num_epochs', '> 0', cfg.num_epochs)
  for name in ('eval_batch_size', 'eval_every', 'warmup_steps', 'image_size',
               'grain_workers', 'grain_threads', 'weight_decay',
               'grad_clip_norm', 'momentum', 'seed', 'top_k', 'bleu_examples',
               'num_processes', 'num_train_examples', 'image_channels'):
    _check(getattr(cfg, name) >= 0, name, '>= 0', getattr(cfg, name))
  _check(cfg.process_id >= -1, 'process_id', '>= 0 (or -1 to detect)',
         cfg.process_id)
  _check(0 < cfg.alert_rate <= 1, 'alert_rate', 'in (0, 1]', cfg.alert_rate)
  _check(cfg.normal_class >= -1, 'normal_class', '>= 0 (or -1 for every '
         'class in turn)', cfg.normal_class)
  _check(cfg.ranking_k >= 1, 'ranking_k', '>= 1', cfg.ranking_k)
  _check(0 <= cfg.label_smoothing < 1, 'label_smoothing', 'in [0, 1)',
         cfg.label_smoothing)
  for name in ('adam_b1', 'adam_b2', 'ema_decay'):
    _check(0 <= getattr(cfg, name) < 1, name, 'in [0, 1)', getattr(cfg, name))
  _check(cfg.adam_eps > 0, 'adam_eps', '> 0', cfg.adam_eps)
  _check(0 <= cfg.min_lr_ratio <= 1, 'min_lr_ratio', 'in [0, 1]',
         cfg.min_lr_ratio)
  _check(0 < cfg.top_p <= 1, 'top_p', 'in (0, 1]', cfg.top_p)
  for name in ('early_stopping_patience', 'eval_max_examples'):
    _check(getattr(cfg, name) >= 0, name, '>= 0', getattr(cfg, name))
  if cfg.early_stopping_patience and not cfg.best_metric:
    raise ConfigError('early_stopping_patience', 'needs --best_metric (the '
                      'eval metric that must improve)')
  if cfg.profile_steps:
    profile_range(cfg.profile_steps)
  if cfg.eval_checkpoint not in ('', 'best') and not (
      cfg.eval_checkpoint.isdigit()):
    raise ConfigError('eval_checkpoint', "must be empty, 'best' or a step "
                      f'number (got {cfg.eval_checkpoint!r})')
  if cfg.probe and not cfg.new_head:
    raise ConfigError('probe', "needs --new_head (the parameters it trains, "
                      "e.g. '^head/')")
  if cfg.batch_size % cfg.grad_accum_steps:
    raise ConfigError('grad_accum_steps', f'must divide --batch_size='
                      f'{cfg.batch_size} (got {cfg.grad_accum_steps})')
  if cfg.tokenizer == 'bpe' and cfg.vocab_size < 260:
    raise ConfigError('vocab_size', 'byte-level BPE needs >= 260 (4 special '
                      f'tokens + 256 bytes); got {cfg.vocab_size}')
  if cfg.coordinator_address:
    host, _, port = cfg.coordinator_address.rpartition(':')
    if not (host and port.isdigit() and 0 < int(port) < 65536):
      raise ConfigError('coordinator_address', "must look like 'host:port' "
                        'with a port in 1..65535 (got '
                        f'{cfg.coordinator_address!r})')
  if cfg.coordinator_address and (cfg.num_processes <= 0 or cfg.process_id < 0):
    raise ConfigError(
        'coordinator_address', 'needs --num_processes and --process_id as well')
  if cfg.num_processes and cfg.process_id >= cfg.num_processes:
    raise ConfigError('process_id', f'must be below --num_processes='
                      f'{cfg.num_processes} (got {cfg.process_id})')
  return cfg


def profile_range(text: str) -> tuple[int, int]:
  """``'START:END'`` -> ``(START, END)``, 0 <= START < END; ConfigError else."""
  try:
    start, end = (int(v) for v in text.split(':'))
  except ValueError:
    raise ConfigError('profile_steps', f'expected START:END (e.g. 10:20), got '
                      f'{text!r}') from None
  if not 0 <= start < end:
    raise ConfigError('profile_steps', f'needs 0 <= START < END, got {text!r}')
  return start, end


def check_devices(cfg: Config, device_count: int) -> None:
  """The global batches must split evenly over the devices."""
  for name in ('batch_size', 'eval_batch_size'):
    value = getattr(cfg, name) or cfg.batch_size
    per_device = value // cfg.grad_accum_steps if name == 'batch_size' else value
    if per_device % device_count:
      raise ConfigError(
          name,
          f'{value} does not divide evenly over {device_count} devices'
          + (f' in {cfg.grad_accum_steps} micro-batches' if name == 'batch_size'
             and cfg.grad_accum_steps > 1 else '')
          + f'; use a multiple of {device_count}',
      )


def field_types() -> dict[str, type]:
  hints = typing.get_type_hints(Config)
  return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def parse_value(name: str, text: str) -> Any:
  """Parses a flag's text as the field's type; ConfigError if it can't."""
  kind = field_types()[name]
  try:
    if kind is bool:
      if text.lower() in ('1', 'true', 'yes'):
        return True
      if text.lower() in ('0', 'false', 'no'):
        return False
      raise ValueError(text)
    if kind is dict:
      value = json.loads(text)
      if not isinstance(value, dict):
        raise ValueError(text)
      return value
    if kind is tuple:
      return tuple(float(v) for v in text.split(',') if v.strip())
    return kind(text)
  except ValueError:
    raise ConfigError(name, f'expected {kind.__name__}, got {text!r}') from None


def override(cfg: Config, overrides: dict[str, Any]) -> Config:
  """Applies field overrides (values already typed) and validates.

  ``num_steps`` given without ``num_epochs`` wins over the preset's epochs;
  ``model_kwargs`` given as a dict is merged into the preset's.
  """
  known = field_types()
  for name in overrides:
    if name not in known:
      raise ConfigError(name, 'unknown config field')
  overrides = dict(overrides)
  if 'model_kwargs' in overrides:
    overrides['model_kwargs'] = {**cfg.model_kwargs, **overrides['model_kwargs']}
  if 'num_epochs' in overrides and 'num_steps' not in overrides:
    overrides['num_steps'] = 0
  return validate(dataclasses.replace(cfg, **overrides))


def to_json(cfg: Config) -> dict[str, Any]:
  out = cfg.to_dict()
  out['step_boundaries'] = list(cfg.step_boundaries)
  return out


def from_json(data: dict[str, Any]) -> Config:
  """A Config from ``to_json`` output; unknown keys are an error."""
  data = dict(data)
  unknown = sorted(set(data) - set(field_types()))
  if unknown:
    raise ConfigError(unknown[0], 'unknown config field in the recorded '
                      'config (written by a newer dlresearch?)')
  data['step_boundaries'] = tuple(data.get('step_boundaries', ()))
  return validate(Config(**data))


def read_record(path: str) -> dict:
  """The whole ``config.json`` of a workdir (or file); {} when there is none."""
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def read_recorded(path: str) -> Config | None:
  """The config recorded in ``path`` (a workdir or a config.json), or None.

  Raises:
    ConfigError: the file exists but is not a recorded config.
  """
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    return from_json(record['config'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError('config', f'{path} is not a dlresearch config.json '
                      f'({type(e).__name__}: {e})') from None


def changed_fields(recorded: Config, new: Config) -> list[str]:
  """Fields that differ and may not change on resume, in field order."""
  old, cur = to_json(recorded), to_json(new)
  return [name for name in field_types()
          if name not in MAY_CHANGE_ON_RESUME and old[name] != cur[name]]


def check_resume(recorded: Config, new: Config, workdir: str) -> None:
  """ConfigError naming the first field whose change the checkpoints forbid."""
  changed = changed_fields(recorded, new)
  if changed:
    name = changed[0]
    old, cur = to_json(recorded)[name], to_json(new)[name]
    raise ConfigError(
        name, f'{workdir} holds checkpoints trained with --{name}={old!r}, not '
        f'{cur!r}; resume with the same value (or leave the flag out: the '
        'recorded config is used) or use a new --workdir')


# Keep the public surface small and explicit.
__all__ = ['CHOICES', 'CONFIG_FILE', 'Config', 'ConfigError',
           'MAY_CHANGE_ON_RESUME', 'changed_fields', 'check_devices',
           'check_resume', 'field_help', 'field_types', 'from_json',
           'override', 'parse_value', 'profile_range', 'read_record', 'read_recorded',
           'to_json', 'validate']
