"""The engine's config sections: what every run has, whatever its data.

Every experiment defines these sections' flags. The options of one problem
or application (image, text, generation, translation, audit, anomaly,
retrieval, ...) are in ``options.py``.
"""

from dlresearch.config.declare import MAY_CHANGE, ConfigError, _f, check, section


@section('data')
class Data:
  """data: what is trained on, which splits, how it is read."""

  data_kind: str = _f('classification', 'What the data is and which task '
                      'trains on it (see dlresearch/problems/ and the '
                      'list under --model). Naming a kind on the command '
                      'line also defines the flags of its options (e.g. '
                      '--data_kind=lm: --top_p, --prompt, ...).')
  dataset: str = _f('digits', 'TFDS dataset name; the offline builders are '
                    'registered (digits, mnist1d, fashion_mnist_local, '
                    'shakespeare, rotten_tomatoes, number_words/en-de, '
                    'text_files) and so are the official ones.')
  data_dir: str = _f('~/tensorflow_datasets', 'TFDS data directory (where '
                     'datasets are prepared and read).', on_resume=MAY_CHANGE)
  manual_dir: str = _f('', 'Raw files for builders that need them (e.g. the '
                       'Fashion-MNIST IDX files). Empty: the builder default.',
                       on_resume=MAY_CHANGE)
  train_split: str = _f('', "TFDS split to train on. Empty: the dataset's "
                        'train split.')
  eval_split: str = _f('', "TFDS split to evaluate on. Empty: the dataset's "
                       'test split (else validation).', on_resume=MAY_CHANGE)
  test_split: str = _f('', "Split evaluated once at the end (eval line "
                       "split 'test'). Empty: the dataset's test split when "
                       "periodic evals use another one; 'none': skip.",
                       on_resume=MAY_CHANGE)
  num_train_examples: int = _f(0, 'Train on a stratified subset of this many '
                               'train examples, drawn with --seed (>= 0; 0 = '
                               'all).')
  shuffle_spatial: bool = _f(False, 'Permute the input positions (axis 1) '
                             'with one fixed permutation (NumPy seed 0), train '
                             'and eval alike: MNIST-1D\'s shuffled variants.')
  pipeline: str = _f('auto', 'auto: in memory when the train split fits '
                     '(4 GiB), else grain.', choices=('auto', 'memory', 'grain'),
                     on_resume=MAY_CHANGE)
  grain_workers: int = _f(0, 'grain worker processes (>= 0; 0 = threads '
                          'only).', on_resume=MAY_CHANGE)
  grain_threads: int = _f(2, 'grain read threads per process (>= 0).',
                          on_resume=MAY_CHANGE)

  def validate(self):
    for name in ('num_train_examples', 'grain_workers', 'grain_threads'):
      check(getattr(self, name) >= 0, name, '>= 0', getattr(self, name))


@section('model')
class Model:
  """model: which registered model, its arguments, its compute dtype."""

  model: str = _f('lenet5', 'Registered model name (see the list below).')
  model_kwargs: dict = _f({}, 'JSON object of model constructor arguments, '
                          "merged into the preset's (e.g. "
                          '\'{"hidden_size": 256}\').')
  dtype: str = _f('float32', 'Computation dtype; parameters stay float32.',
                  choices=('float32', 'bfloat16'))
  attention_impl: str = _f('auto', 'Attention kernel of the Transformer '
                           'models: explicit (softmax(q k^T) v as two '
                           'einsums; every backend), xla or cudnn '
                           '(jax.nn.dot_product_attention; cudnn: NVIDIA GPUs '
                           'with --dtype=bfloat16; not yet run by the '
                           'tests, which had no GPU); auto: explicit on CPU, '
                           'xla elsewhere. Same results to float32 rounding '
                           '(tested for explicit, xla, auto on CPU).',
                           choices=('auto', 'explicit', 'xla', 'cudnn'),
                           on_resume=MAY_CHANGE)


@section('optimisation')
class Optimisation:
  """optimisation: the batch, the loss, the optimizer and its schedule."""

  batch_size: int = _f(128, 'Global batch size, across all devices and '
                       'processes (> 0).')
  loss: str = _f('softmax_xent', 'Classification loss.',
                 choices=('softmax_xent', 'sigmoid_xent', 'mse'))
  label_smoothing: float = _f(0.0, 'Label smoothing in training, in [0, 1) '
                              '(eval reports the plain loss).')
  optimizer: str = _f('adam', 'sgd/nesterov (momentum), adam (L2 weight '
                      'decay) or adamw (decoupled weight decay).',
                      choices=('sgd', 'nesterov', 'adam', 'adamw'))
  learning_rate: float = _f(1e-3, 'Peak learning rate (> 0).')
  momentum: float = _f(0.9, 'SGD/Nesterov momentum (>= 0; Adam uses '
                       '--adam_b1).')
  adam_b1: float = _f(0.9, 'Adam/AdamW beta1, in [0, 1).')
  adam_b2: float = _f(0.999, 'Adam/AdamW beta2, in [0, 1) (Transformer-base: '
                      '0.98).')
  adam_eps: float = _f(1e-8, 'Adam/AdamW epsilon (> 0; Transformer-base: '
                       '1e-9).')
  weight_decay: float = _f(0.0, 'Weight decay on weight matrices and token '
                           'embeddings (>= 0; biases, norm parameters, '
                           'position tables and the ViT class token are '
                           'skipped: optim.decay_role).')
  grad_clip_norm: float = _f(0.0, 'Clip gradients to this global norm (>= 0; '
                             '0 = no clipping).')
  schedule: str = _f('constant', 'Learning-rate schedule after warmup.',
                     choices=('constant', 'cosine', 'step', 'inverse_sqrt'))
  warmup_steps: int = _f(0, 'Linear warmup steps (>= 0): step s < N uses '
                         '(s + 1) / N of the rate, so the first step moves.')
  min_lr_ratio: float = _f(0.0, '--schedule=cosine ends at this fraction of '
                           'the peak rate, in [0, 1] (e.g. 0.1).')
  step_boundaries: tuple = _f((0.3333, 0.6667, 0.8889), 'Comma-separated '
                              'fractions of training where --schedule=step '
                              'multiplies the rate by --step_decay.')
  step_decay: float = _f(0.1, 'Factor of each --schedule=step decay.')
  ema_decay: float = _f(0.0, 'Keep an exponential moving average of the '
                        'params with this decay, in [0, 1) (0 = off; e.g. '
                        '0.999; warmed up as min(d, (1+t)/(10+t))); evals add '
                        'ema_* keys and checkpoints hold it.')

  def validate(self):
    for name in ('batch_size', 'learning_rate', 'adam_eps'):
      check(getattr(self, name) > 0, name, '> 0', getattr(self, name))
    for name in ('momentum', 'weight_decay', 'grad_clip_norm', 'warmup_steps'):
      check(getattr(self, name) >= 0, name, '>= 0', getattr(self, name))
    for name in ('label_smoothing', 'adam_b1', 'adam_b2', 'ema_decay'):
      check(0 <= getattr(self, name) < 1, name, 'in [0, 1)',
            getattr(self, name))
    check(0 <= self.min_lr_ratio <= 1, 'min_lr_ratio', 'in [0, 1]',
          self.min_lr_ratio)


@section('loop')
class Loop:
  """loop: how long a run trains, what it logs and writes, its seed."""

  preset: str = _f('', 'Name of the preset this config started from '
                   '(recorded in config.json).', on_resume=MAY_CHANGE,
                   flag=False)
  seed: int = _f(0, 'Seed of the initialisation, data order and dropout '
                 '(>= 0).')
  num_steps: int = _f(0, 'Training steps (>= 0; > 0 overrides '
                      '--num_epochs).', on_resume=MAY_CHANGE)
  num_epochs: float = _f(10.0, 'Training epochs when --num_steps is 0 (> 0).',
                         on_resume=MAY_CHANGE)
  log_every: int = _f(50, 'Write a train line every N steps (> 0).',
                      on_resume=MAY_CHANGE)
  checkpoint_every: int = _f(1000, 'Checkpoint every N steps (> 0).',
                             on_resume=MAY_CHANGE)
  keep_checkpoints: int = _f(3, 'Checkpoints kept (the latest N; > 0).',
                             on_resume=MAY_CHANGE)
  progress: str = _f('auto', 'Console progress: bar (tqdm, terminal or '
                     'notebook), lines (log lines), none; auto: bar when '
                     'stderr is a terminal or in a notebook, else lines.',
                     choices=('auto', 'bar', 'lines', 'none'),
                     on_resume=MAY_CHANGE)
  model_summary: bool = _f(True, 'Print the model summary (layers, shapes, '
                           'params, FLOPs, memory) and write '
                           'WORKDIR/model_summary.txt.', on_resume=MAY_CHANGE)
  plots: bool = _f(True, 'Write WORKDIR/plots/curves.png at every eval and, '
                   'for classification, confusion_matrix.png at the end.',
                   on_resume=MAY_CHANGE)
  profile_steps: str = _f('', 'START:END: write a jax.profiler trace of steps '
                          'START..END-1 to WORKDIR/profile (open with '
                          'TensorBoard\'s profile plugin); empty: none.',
                          on_resume=MAY_CHANGE)
  compilation_cache: str = _f('~/.cache/dlresearch/jax_cache', 'Directory of '
                              "JAX's persistent compilation cache (a rerun "
                              "starts faster); 'none' or empty: off.",
                              on_resume=MAY_CHANGE)

  def validate(self):
    check(self.seed >= 0, 'seed', '>= 0', self.seed)
    check(self.num_steps >= 0, 'num_steps', '>= 0', self.num_steps)
    if self.num_steps == 0:
      check(self.num_epochs > 0, 'num_epochs', '> 0', self.num_epochs)
    for name in ('log_every', 'checkpoint_every', 'keep_checkpoints'):
      check(getattr(self, name) > 0, name, '> 0', getattr(self, name))
    if self.profile_steps:
      profile_range(self.profile_steps)


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


@section('evaluation')
class Evaluation:
  """evaluation: when and on how much the run evaluates; keep-best."""

  eval_every: int = _f(0, 'Evaluate every N steps (>= 0; 0 = only at the '
                       'end).', on_resume=MAY_CHANGE)
  eval_batch_size: int = _f(0, 'Global eval batch size (>= 0; 0 = '
                            '--batch_size).', on_resume=MAY_CHANGE)
  eval_max_examples: int = _f(0, 'Periodic evals use the first N examples of '
                              'the eval split (>= 0; 0 = all); the final eval '
                              'uses all of it.', on_resume=MAY_CHANGE)
  eval_only: bool = _f(False, "Evaluate the workdir's latest checkpoint with "
                       'its recorded config, then stop.', on_resume=MAY_CHANGE)
  eval_checkpoint: str = _f('', "--eval_only evaluates this checkpoint: "
                            "empty: the latest; 'best': the keep-best one "
                            '(--best_metric); or a step number.',
                            on_resume=MAY_CHANGE)
  best_metric: str = _f('', 'Eval metric that picks the keep-best checkpoint '
                        '(WORKDIR/checkpoints_best; e.g. accuracy, loss); '
                        'empty: none. Ranked on the periodic eval split, never '
                        'on test unless --eval_split=test says so.')
  best_mode: str = _f('max', 'max: a larger --best_metric is better; min: a '
                      'smaller one.', choices=('max', 'min'))
  early_stopping_patience: int = _f(0, 'Stop after N evals in a row without a '
                                    'new best --best_metric (>= 0; 0 = never).',
                                    on_resume=MAY_CHANGE)

  def validate(self):
    for name in ('eval_every', 'eval_batch_size', 'eval_max_examples',
                 'early_stopping_patience'):
      check(getattr(self, name) >= 0, name, '>= 0', getattr(self, name))
    if self.early_stopping_patience and not self.best_metric:
      raise ConfigError('early_stopping_patience', 'needs --best_metric (the '
                        'eval metric that must improve)')
    if self.eval_checkpoint not in ('', 'best') and not (
        self.eval_checkpoint.isdigit()):
      raise ConfigError('eval_checkpoint', "must be empty, 'best' or a step "
                        f'number (got {self.eval_checkpoint!r})')


@section('parallelism')
class Parallelism:
  """parallelism: how one step is compiled and spread over the devices."""

  mesh: str = _f('', "Device mesh, e.g. 'data:8' or 'data:4,fsdp:2' (one "
                 "axis may be -1); empty: all devices on data.",
                 on_resume=MAY_CHANGE)
  parallelism: str = _f('jit', 'jit (sharded jax.jit) or pmap (the same '
                        'step under jax.pmap).', choices=('jit', 'pmap'),
                        on_resume=MAY_CHANGE)
  grad_accum_steps: int = _f(1, 'Micro-batches per update (> 0; must divide '
                             '--batch_size).', on_resume=MAY_CHANGE)
  remat: bool = _f(False, 'Recompute block activations in the backward pass '
                   '(ResNet and Transformer models).', on_resume=MAY_CHANGE)
  cpu_eigen_convs: bool = _f(True, 'On CPU, compile the jitted train/eval '
                             'steps so that XLA lowers convolutions to Eigen '
                             'instead of YNNPACK (2-2.6x faster CNN steps on '
                             'small CPUs; same results to float32 rounding). '
                             'It also changes how dots fuse: 6% slower on '
                             'nanoGPT-sized models without convs, 5% faster '
                             'on d=256 GPTs (README "Speed on CPU"). '
                             'Ignored on GPU/TPU and under '
                             '--parallelism=pmap; false: XLA\'s defaults.',
                             on_resume=MAY_CHANGE)
  cpu_kernels: str = _f('auto', 'Dense/attention/LSTM matmuls on CPU: xla (XLA\'s '
                        'own dots), native (a BLAS sgemm through XLA\'s FFI, '
                        'dlresearch/kernels; one-device CPU meshes under '
                        '--parallelism=jit only; without the built extension '
                        'or its BLAS: one warning, XLA\'s dots) or auto: '
                        'native for models without convolutions '
                        '(transformers, RNNs: 1.08-1.19x faster steps; MLPs), '
                        'xla for models with one. Same results to float32 '
                        'rounding (docs/speed.md).',
                        choices=('auto', 'xla', 'native'), on_resume=MAY_CHANGE)

  def validate(self):
    check(self.grad_accum_steps > 0, 'grad_accum_steps', '> 0',
          self.grad_accum_steps)


@section('cluster')
class Cluster:
  """cluster: multi-host processes, joined by jax.distributed."""

  coordinator_address: str = _f('', 'Multi-host: host:port of process 0 '
                                '(empty: single process, or detected from '
                                'SLURM/Kubernetes/TPU).', on_resume=MAY_CHANGE)
  num_processes: int = _f(0, 'Multi-host: number of processes (>= 0).',
                          on_resume=MAY_CHANGE)
  process_id: int = _f(-1, 'Multi-host: this process (0 .. num_processes-1; '
                       '-1 = detect).', on_resume=MAY_CHANGE)
  heartbeat_timeout_s: int = _f(60, 'Multi-host: seconds without a heartbeat '
                                'before a peer is declared dead (> 0).',
                                on_resume=MAY_CHANGE)
  init_timeout_s: int = _f(300, 'Multi-host: seconds to wait for every '
                           'process to join (> 0).', on_resume=MAY_CHANGE)

  def validate(self):
    for name in ('heartbeat_timeout_s', 'init_timeout_s'):
      check(getattr(self, name) > 0, name, '> 0', getattr(self, name))
    check(self.num_processes >= 0, 'num_processes', '>= 0', self.num_processes)
    check(self.process_id >= -1, 'process_id', '>= 0 (or -1 to detect)',
          self.process_id)
    if self.coordinator_address:
      host, _, port = self.coordinator_address.rpartition(':')
      if not (host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError('coordinator_address', "must look like 'host:port' "
                          'with a port in 1..65535 (got '
                          f'{self.coordinator_address!r})')
      if self.num_processes <= 0 or self.process_id < 0:
        raise ConfigError('coordinator_address',
                          'needs --num_processes and --process_id as well')
    if self.num_processes and self.process_id >= self.num_processes:
      raise ConfigError('process_id', f'must be below --num_processes='
                        f'{self.num_processes} (got {self.process_id})')


@section('transfer')
class Transfer:
  """transfer: where the initial params come from; which ones train, how fast."""

  init_from: str = _f('', 'Initialise the params of a fresh run from this '
                      'workdir or checkpoint directory.', on_resume=MAY_CHANGE)
  new_head: str = _f('', "Regex over '/'-joined parameter paths that are "
                     'freshly initialised (sized to this data) instead of '
                     "loaded from --init_from, e.g. '^head/'; --probe trains "
                     'only these. Empty: every parameter must load.',
                     on_resume=MAY_CHANGE)
  probe: bool = _f(False, 'Linear probe: train only --new_head; the backbone '
                   'runs in eval mode, so its parameters and batch-norm '
                   'statistics stay bit-identical.')
  freeze: str = _f('', "Regex over '/'-joined parameter paths to keep fixed "
                   '(empty: train everything).')
  lr_multipliers: str = _f('', "Per-group learning rates: 'REGEX=FACTOR,...' "
                           "over '/'-joined parameter paths (first match "
                           "wins; factor >= 0), e.g. '^block=0.1'.")
  lora_rank: int = _f(0, 'LoRA (models/lora.py): rank r of the low-rank '
                      'adapters added to the Dense/attention kernels that '
                      '--lora_targets selects; only they (and --new_head) '
                      'train, the base weights are frozen (no optimizer '
                      'state). >= 0; 0 = off.')
  lora_alpha: float = _f(8.0, 'LoRA scale numerator: an adapter adds '
                         '(alpha / rank) * B A x (> 0).')
  lora_dropout: float = _f(0.0, 'Dropout on the input of the LoRA adapters '
                           'in training, in [0, 1).')
  lora_targets: str = _f('attn/(query|value)/kernel', "Regex (re.search) over "
                         "the '/'-joined kernel paths of Dense and attention-"
                         "projection layers (e.g. 'transformer/block_0/attn/"
                         "query/kernel'); '.*' adapts every such kernel, "
                         'never a convolution or an embedding.')
  lora_save: str = _f('full', 'What the checkpoints of a LoRA run hold: '
                      'full (every parameter, standalone) or adapters (only '
                      'the trained parameters, i.e. the adapters and '
                      '--new_head, with their optimizer state; the frozen '
                      'base is re-read from --init_from, whose sha256 is '
                      'recorded in WORKDIR/lora_base.json, and a changed or '
                      'missing base is refused). adapters needs --lora_rank '
                      '> 0 and --init_from, and not --ema_decay.',
                      choices=('full', 'adapters'))

  def validate(self):
    check(self.lora_rank >= 0, 'lora_rank', '>= 0', self.lora_rank)
    if self.lora_save == 'adapters':
      for ok, why in ((self.lora_rank > 0, 'needs --lora_rank > 0'),
                      (bool(self.init_from), 'needs --init_from (the base '
                       'the adapters are saved against)'),
                      (not self.ema_decay, 'cannot be used with --ema_decay '
                       '(the moving average covers the base weights)')):
        if not ok:
          raise ConfigError('lora_save', f'adapters {why}')
    check(self.lora_alpha > 0, 'lora_alpha', '> 0', self.lora_alpha)
    check(0 <= self.lora_dropout < 1, 'lora_dropout', 'in [0, 1)',
          self.lora_dropout)
    if self.probe and not self.new_head:
      raise ConfigError('probe', "needs --new_head (the parameters it trains, "
                        "e.g. '^head/')")


@section('tracking')
class Tracking:
  """tracking: the experiment trackers the run is sent to (besides the files)."""

  tracker: str = _f('', 'Send params, metrics and artifacts to these '
                    'trackers too: mlflow, wandb, or both comma-separated '
                    '(callbacks/trackers.py; metrics.jsonl and TensorBoard '
                    'are always written). A tracker that fails is dropped '
                    'with one warning; training goes on. Empty: none.',
                    on_resume=MAY_CHANGE)
  tracker_uri: str = _f('', 'Tracking server of --tracker=mlflow (e.g. '
                        'http://mlflow.team:5000; empty: MLFLOW_TRACKING_URI '
                        "or MLflow's default) or the W&B base URL.",
                        on_resume=MAY_CHANGE)

  def validate(self):
    names = [n.strip() for n in self.tracker.split(',') if n.strip()]
    for name in names:
      if name not in ('mlflow', 'wandb'):
        raise ConfigError('tracker', f'unknown tracker {name!r}; choose from '
                          'mlflow, wandb (comma-separated)')
    if self.tracker_uri and not names:
      raise ConfigError('tracker_uri', 'needs --tracker (mlflow or wandb)')
