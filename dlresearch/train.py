"""The one training loop: ``run(config, workdir)``.

flags -> Config -> (data, model, optimizer) -> TrainState -> train_step ->
metrics.jsonl / checkpoints. Experiments, tests and notebooks all call
``run``. The steps are pure module-level functions, jitted with explicit
shardings and a donated state.
"""

import dataclasses
import functools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from importlib import metadata
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache

from dlresearch import checkpoint, config as config_lib, ema as ema_lib
from dlresearch import init as init_lib
from dlresearch import logging as log_lib, optim, parallel, state as state_lib
from dlresearch import policy, problems, summary as summary_lib
from dlresearch import tasks, workdir as workdir_lib
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline
from dlresearch.models import registry


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/inf; nothing non-finite was saved."""


# ---------------------------------------------------------------------------
# Pure steps.


def gradients(params, model_state, batch, rng, *, model, task):
  """``(grads, metric sums, new model state)`` of the task's mean loss."""

  def loss_fn(params):
    sums, new_model_state = task(model, {'params': params, **model_state},
                                 batch, train=True, rng=rng)
    return sums['loss'] / sums['count'], (sums, new_model_state)

  (_, (sums, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(params)
  return grads, sums, model_state


def accumulate(grad_fn: Callable, steps: int) -> Callable:
  """``grad_fn`` over ``steps`` micro-batches, gradients averaged.

  The batch is split strided (micro-batch ``i`` holds rows ``i, i+steps,
  ...``), so each device keeps its share of every micro-batch. Metric sums
  add up; the model state (batch statistics) threads through in order. The
  result equals one ``grad_fn`` call on the whole batch when the loss is a
  mean over examples and the model has no batch statistics.
  """
  if steps == 1:
    return grad_fn

  def fn(params, model_state, batch, rng):
    micro = jax.tree.map(lambda x: x.reshape(
        x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1), batch)

    def body(carry, xs):
      grads, sums, model_state = carry
      g, s, model_state = grad_fn(params, model_state, xs[0],
                                  jax.random.fold_in(rng, xs[1]))
      return (jax.tree.map(jnp.add, grads, g),
              tasks.add_sums(sums, s), model_state), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        grad_fn, params, model_state, first, rng)[:2])
    (grads, sums, model_state), _ = jax.lax.scan(
        body, (*zeros, model_state), (micro, jnp.arange(steps)))
    return jax.tree.map(lambda g: g / steps, grads), sums, model_state

  return fn


def train_step(state: state_lib.TrainState, batch, *, grad_fn: Callable,
               tx: optax.GradientTransformation, axis_name: str | None = None,
               ema_decay: float = 0.0):
  """One update. ``(state, batch) -> (state, metrics)``.

  With ``ema_decay`` > 0 (and ``state.ema_params``), the EMA of the params
  follows the update: ``ema.ema_update(ema, new_params, ema_decay,
  step=old_step)``.

  ``grad_fn(params, model_state, batch, rng) -> (grads, sums, model_state)``
  is ``gradients`` bound to a model and task (``make_train_step``), possibly
  wrapped by ``accumulate``. ``axis_name`` is set under ``pmap``: gradients,
  batch statistics and metric sums are then reduced over that axis (under
  ``jit`` the compiler does it: the batch is one global array).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  grads, sums, model_state = grad_fn(state.params, state.model_state, batch,
                                     rng)
  if axis_name:
    grads = jax.lax.pmean(grads, axis_name)
    model_state = jax.lax.pmean(model_state, axis_name)
    sums = jax.lax.psum(sums, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_decay and ema_params is not None:
    ema_params = ema_lib.ema_update(ema_params, params, ema_decay, state.step)
  state = state.replace(step=state.step + 1, opt_state=opt_state,
                        params=params, model_state=model_state,
                        ema_params=ema_params)
  out = {k: v / sums['count'] for k, v in sums.items() if k != 'count'}
  out['grad_norm'] = optax.tree.norm(grads)
  return state, out


def make_train_step(model, task, tx: optax.GradientTransformation,
                    accum_steps: int = 1, ema_decay: float = 0.0) -> Callable:
  """``train_step`` bound to a model, task and optimizer (not yet jitted)."""
  grad_fn = functools.partial(gradients, model=model, task=task)
  return functools.partial(train_step, grad_fn=accumulate(grad_fn, accum_steps),
                           tx=tx, ema_decay=ema_decay)


def eval_step(state: state_lib.TrainState, batch, *, model, task,
              axis_name: str | None = None, ema: bool = False):
  """Masked metric sums for one eval batch (padding examples count 0).

  ``ema``: evaluate ``state.ema_params`` instead of ``state.params``.
  """
  params = state.ema_params if ema else None
  sums, _ = task(model, state.variables(params), batch, train=False)
  return jax.lax.psum(sums, axis_name) if axis_name else sums


def confusion_step(state: state_lib.TrainState, batch, *, model, task,
                   num_classes: int, axis_name: str | None = None):
  """``[true, predicted]`` counts of one eval batch (padding counts 0)."""
  args, kwargs = task.model_inputs(batch)
  logits = model.apply(state.variables(), *args, train=False, **kwargs)
  labels = batch[task.label_key].astype(jnp.int32).reshape(-1)
  predicted = jnp.argmax(logits, axis=-1).reshape(-1)
  valid = batch.get('_valid', jnp.ones(labels.shape, jnp.float32))
  counts = jnp.zeros((num_classes, num_classes), jnp.float32).at[
      labels, predicted].add(valid.reshape(-1))
  return jax.lax.psum(counts, axis_name) if axis_name else counts


# ---------------------------------------------------------------------------
# Hooks around the loop.


@dataclasses.dataclass
class Periodic:
  """Calls ``fn(step, state, metrics)`` every ``every`` steps.

  At the last step it fires exactly when ``at_end`` is set (the final eval
  runs once, after the loop, whatever ``every`` is).
  """

  every: int
  fn: Callable
  at_end: bool = True

  def __call__(self, step, num_steps, state, step_metrics):
    if step == num_steps:
      if self.at_end:
        self.fn(step, state, step_metrics)
    elif self.every and step % self.every == 0:
      self.fn(step, state, step_metrics)


class Preemption:
  """SIGTERM or Ctrl-C (SIGINT) -> checkpoint at the next step and stop.

  One process: our own handlers, installed for the whole of ``run`` (start-up
  included). A second Ctrl-C stops at once (``KeyboardInterrupt``). In a
  notebook, interrupting the kernel is the first Ctrl-C. Several processes:
  JAX's preemption notifier (SIGTERM, installed by ``jax.distributed``) and a
  sync point, so that every host stops at the same step.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: str | None = None
    self._old = {}
    if (jax.process_count() == 1 and
        threading.current_thread() is threading.main_thread()):
      self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received == 'SIGINT' and name == 'SIGINT':
      raise KeyboardInterrupt
    logging.warning('%s: checkpointing at the next step, then stopping%s',
                    name, ' (Ctrl-C again stops at once)'
                    if name == 'SIGINT' else '')
    self.received = self.received or name

  def reached(self, step: int) -> bool:
    if self.received:
      return True
    if jax.process_count() > 1:  # every host must agree on the step
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = 'SIGTERM'
        return True
    return False

  def close(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)



class WindowMean:
  """Sums a step's metrics on device; ``pop()`` gives their window mean.

  Train lines report the mean over the steps since the last line, not one
  batch; summing stays on device (no host sync per step).
  """

  def __init__(self):
    self._sum, self._count = None, 0

  def add(self, metrics) -> None:
    self._sum = metrics if self._sum is None else jax.tree.map(
        jnp.add, self._sum, metrics)
    self._count += 1

  def pop(self):
    out = jax.tree.map(lambda v: v / self._count, self._sum)
    self._sum, self._count = None, 0
    return out


class Profiler:
  """``--profile_steps=START:END``: a jax.profiler trace of those steps.

  Written under ``WORKDIR/profile`` (process 0); open it with TensorBoard's
  profile plugin: ``tensorboard --logdir=WORKDIR/profile``.
  """

  def __init__(self, spec: str, workdir: str):
    self.range = config_lib.profile_range(spec) if spec else None
    self.logdir = os.path.join(workdir, 'profile')
    self.active = False

  def before(self, step: int) -> None:
    """Call before running step ``step`` (0-based)."""
    if self.range and step == self.range[0] and jax.process_index() == 0:
      jax.profiler.start_trace(self.logdir)
      self.active = True

  def after(self, step: int, state) -> None:
    """Call after step ``step`` ran; stops at END (or at the run's end)."""
    if self.active and step + 1 >= self.range[1]:
      self.stop(state)

  def stop(self, state) -> None:
    if self.active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      logging.info('profile of steps %s written to %s', self.range,
                   self.logdir)


def use_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache in ``directory`` ('none'/'': off).

  The default directory yields to one already configured (e.g. by
  ``JAX_COMPILATION_CACHE_DIR``); an explicit one replaces it. Programs that
  took at least 0.2 s to compile are kept, unless
  ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` sets another threshold.
  JAX opens its cache once, at the first compile of the process; a change
  here (another directory, on or off: a second ``run`` in a notebook)
  resets it so that the next compile opens the new one.
  """
  if directory.lower() in ('', 'none'):
    enabled, path = False, jax.config.jax_compilation_cache_dir
  else:
    enabled, path = True, os.path.expanduser(directory)
    default = Config.__dataclass_fields__['compilation_cache'].default
    if directory == default and jax.config.jax_compilation_cache_dir:
      path = jax.config.jax_compilation_cache_dir
    os.makedirs(path, exist_ok=True)
    if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
  if (enabled, path) != (jax.config.jax_enable_compilation_cache,
                         jax.config.jax_compilation_cache_dir):
    jax.config.update('jax_enable_compilation_cache', enabled)
    jax.config.update('jax_compilation_cache_dir', path)
    compilation_cache.reset_cache()


@dataclasses.dataclass
class Head:
  """The first ``limit`` examples of a dataset (``--eval_max_examples``)."""

  dataset: pipeline.Dataset
  limit: int

  @property
  def num_examples(self) -> int:
    return min(self.dataset.num_examples, self.limit)

  def get(self, indices, rngs):
    return self.dataset.get(indices, rngs)


def write_plots(workdir: str, counts=None, class_names=None,
                split: str = '') -> None:
  """``WORKDIR/plots/curves.png`` (and ``confusion_matrix.png``)."""
  if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    return  # a custom writer: no metrics file to plot
  # Imported here: matplotlib costs ~0.4 s at start-up, before the first step.
  from dlresearch import plot  # pylint: disable=import-outside-toplevel
  out = os.path.join(workdir, 'plots')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    plot.plot_curves([workdir], os.path.join(out, 'curves.png'),
                     labels=[os.path.basename(os.path.normpath(workdir))])
  if counts is not None:
    names = class_names or [str(i) for i in range(len(counts))]
    plot.confusion_counts_png(counts, names,
                              os.path.join(out, 'confusion_matrix.png'),
                              title_split=split)

@jax.jit
def count_non_finite(tree) -> jax.Array:
  """How many NaN/inf values the floating-point leaves of ``tree`` hold."""
  counts = [jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return sum(counts, jnp.int32(0))


def _non_finite_reason(state) -> str | None:
  """Why ``state`` must not be saved or trained on, or None."""
  bad = {name: int(count_non_finite(getattr(state, name)))
         for name in ('params', 'opt_state', 'model_state')}
  bad = {k: v for k, v in bad.items() if v}
  if not bad:
    return None
  return 'non-finite values in ' + ', '.join(f'{k} ({v})' for k, v in bad.items())


def _fetch_finite(step: int, host_metrics) -> dict[str, float]:
  """A step's metrics as floats; NonFiniteLossError if loss/grads blew up."""
  host = {k: float(v) for k, v in host_metrics.items()}
  bad = [k for k in ('loss', 'grad_norm') if k in host and not math.isfinite(host[k])]
  if bad:
    raise NonFiniteLossError(
        f'non-finite {" and ".join(bad)} ({", ".join(str(host[k]) for k in bad)}) '
        f'at step {step}: the run diverged. Lower --learning_rate or set '
        f'--grad_clip_norm; no checkpoint of this state was written.')
  return host


# ---------------------------------------------------------------------------
# The run.


def num_train_steps(cfg: Config, num_examples: int) -> int:
  if cfg.num_steps:
    return cfg.num_steps
  return max(1, math.ceil(cfg.num_epochs * num_examples / cfg.batch_size))


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(['git', *args], capture_output=True, text=True,
                         timeout=10,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    return out.stdout.strip() if out.returncode == 0 else None
  except (OSError, subprocess.SubprocessError):
    return None


def _versions() -> dict[str, str]:
  names = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain',
           'tensorflow-datasets', 'numpy', 'dlresearch')
  out = {}
  for name in names:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def write_config(cfg: Config, workdir: str, num_steps: int,
                 data_model_kwargs: dict | None = None) -> None:
  """``WORKDIR/config.json``: the config and how the run was started.

  Written once, when a run starts fresh; ``--config=WORKDIR/config.json``
  replays it.
  """
  status = _git('status', '--porcelain', '--untracked-files=no')
  record = {
      'config': config_lib.to_json(cfg),
      'num_steps': num_steps,
      # The sizes the data gave the model (num_classes, vocab_size, ...), so
      # ``dlresearch.restore`` rebuilds it without reading the data.
      'data_model_kwargs': data_model_kwargs or {},
      'command_line': shlex.join(sys.argv),
      'git_commit': _git('rev-parse', 'HEAD'),
      'git_dirty': None if status is None else bool(status),
      'versions': _versions(),
      'device_count': jax.device_count(),
      'process_count': jax.process_count(),
      'platform': jax.devices()[0].platform,
  }
  path = os.path.join(workdir, config_lib.CONFIG_FILE)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)


def has_checkpoints(workdir: str) -> bool:
  ckpts = checkpoint.checkpoint_dir(workdir)
  return os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))


def run(cfg: Config, workdir: str, *, data: pipeline.Data | None = None,
        eval_hooks: Iterable[Callable] = (),
        writer: log_lib.Writer | None = None) -> dict:
  """Trains (or, with ``eval_only``, evaluates) and returns the final eval.

  A workdir with checkpoints is resumed; its recorded config must agree with
  ``cfg`` on every field outside ``config.MAY_CHANGE_ON_RESUME``. Multi-host
  runs call ``distributed.initialize`` before (the CLI does).

  Args:
    cfg: the experiment config.
    workdir: where config.json, metrics.jsonl, TensorBoard files and
      checkpoints go. Rerunning with the same workdir resumes.
    data: train/eval datasets and the task; default: built by the data kind
      (``dlresearch/problems``) from ``cfg``.
    eval_hooks: ``hook(model, state) -> dict`` called at every eval after
      the data's own; their keys are added to the eval line.
    writer: metric writer (default: JSONL + TensorBoard + console on
      process 0).

  Returns:
    The final eval metrics plus ``step``; when stopped by SIGTERM or Ctrl-C
    after checkpointing, ``{'step', 'preempted': 'SIGTERM' | 'SIGINT'}``.
  """
  log_lib.quiet_libraries()
  preemption = Preemption()
  try:
    return _run(cfg, workdir, data, eval_hooks, writer, preemption)
  finally:
    preemption.close()


def _run(cfg, workdir, data, eval_hooks, writer, preemption) -> dict:
  """Checks that need no files, then the lock, then the run proper.

  A start that fails before training leaves nothing behind: a workdir this
  call created is removed again.
  """
  cfg = config_lib.validate(cfg)
  workdir = workdir_lib.check_workdir(os.path.expanduser(workdir))
  fresh = not has_checkpoints(workdir)
  if cfg.eval_only and fresh:
    raise ConfigError('eval_only', f'no checkpoint in {workdir} to evaluate')
  recorded = None if fresh else config_lib.read_recorded(workdir)
  if recorded is not None:
    config_lib.check_resume(recorded, cfg, workdir)
  if cfg.init_from and fresh and not cfg.eval_only:
    problem = init_lib.describe_source(cfg.init_from)
    if problem:
      raise ConfigError('init_from', problem)
  mesh = parallel.make_mesh(cfg.mesh)
  config_lib.check_devices(cfg, mesh.size)
  created = not os.path.exists(workdir)
  before = set() if created else set(os.listdir(workdir))
  lock = None
  if jax.process_index() == 0 and not cfg.eval_only:
    lock = workdir_lib.WorkdirLock(workdir).acquire()  # one writer per workdir
  try:
    return _run_locked(cfg, workdir, data, eval_hooks, writer, preemption,
                       mesh, fresh)
  except BaseException:
    if (jax.process_index() == 0 and
        'metrics.jsonl' not in before and
        not os.path.exists(os.path.join(workdir, 'metrics.jsonl'))):
      # Failed before training: remove what this start wrote (config.json,
      # a tokenizer, empty checkpoints/, the lock file, while still held).
      if created:
        shutil.rmtree(workdir, ignore_errors=True)
      else:
        for name in set(os.listdir(workdir)) - before:
          path = os.path.join(workdir, name)
          if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
          else:
            os.remove(path)
    raise
  finally:
    if lock is not None:
      lock.release()


def _run_locked(cfg, workdir, data, eval_hooks, writer, preemption, mesh,
                fresh) -> dict:
  use_compilation_cache(cfg.compilation_cache)
  data = data or problems.build(cfg, workdir, fresh)
  _check_selection_split(cfg, data)
  task = data.task
  if data.train.num_examples < cfg.batch_size and not cfg.eval_only:
    raise ConfigError('batch_size', f'{cfg.batch_size} is larger than the '
                      f'train split ({data.train.num_examples} examples); use '
                      'a smaller --batch_size')
  num_steps = num_train_steps(cfg, data.train.num_examples)
  is_chief = jax.process_index() == 0
  if is_chief and fresh:
    os.makedirs(workdir, exist_ok=True)
    write_config(cfg, workdir, num_steps, data.model_kwargs)

  model = build_model(cfg, data.model_kwargs)
  example = data.eval.get(np.arange(1), None)
  args, kwargs = task.model_inputs(example)
  abstract_params = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), *args, train=False, **kwargs)
  )['params']
  tx, lr_schedule = optim.make(cfg, num_steps, abstract_params)
  create = functools.partial(state_lib.create, model, tx, args, kwargs,
                             cfg.seed, ema=cfg.ema_decay > 0)
  shapes = jax.eval_shape(create)
  task = tasks.freeze_backbone(  # --probe / --freeze: batch stats stay put
      task, probe=cfg.probe, trainable=optim.trainable(cfg, abstract_params),
      model_state=shapes.model_state)
  shardings = parallel.state_shardings(shapes, mesh)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, shardings)

  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir),
                                 cfg.keep_checkpoints)
  strategy = parallel.strategy(cfg.parallelism, mesh, shardings,
                              cfg.cpu_eigen_convs)
  state, start, data_state = _initial_state(cfg, ckpt, create, shardings,
                                            abstract_state, model,
                                            workdir)
  if start > num_steps and not cfg.eval_only:
    raise ConfigError('num_steps', f'{workdir} is already at step {start}, '
                      f'past {num_steps}; it does not train backwards: use '
                      '--eval_only to evaluate it, or a new --workdir (with '
                      '--init_from to start from its params)')
  state = strategy.from_saved(state)
  p_train = strategy.train_step(make_train_step(
      model, task, tx, cfg.grad_accum_steps, cfg.ema_decay))
  p_eval = strategy.eval_step(functools.partial(eval_step, model=model,
                                                task=task))
  p_eval_ema = (strategy.eval_step(functools.partial(
      eval_step, model=model, task=task, ema=True)) if cfg.ema_decay else None)
  eval_batch_size = cfg.eval_batch_size or cfg.batch_size
  hooks = [*data.eval_hooks, *eval_hooks]
  writer = writer or log_lib.default_writer(
      workdir, num_steps, cfg.batch_size, is_chief, progress=cfg.progress,
      start_step=start)
  best = _BestPolicy(cfg, workdir, strategy, data_state)
  eval_name = data.eval_split or 'eval'
  periodic_eval = (Head(data.eval, cfg.eval_max_examples)
                   if cfg.eval_max_examples else data.eval)

  def metric_sums(fn, dataset, state):
    sums = None
    for local in pipeline.eval_batches(dataset, eval_batch_size,
                                       jax.process_index(), jax.process_count()):
      sums = tasks.add_sums(sums, fn(state, strategy.batch(local)))
    return task.finalize(tasks.finalize_sums(strategy.host(sums)))

  def evaluate(step, state, dataset=periodic_eval, split='eval',
               name=eval_name, with_hooks=True):
    result = metric_sums(p_eval, dataset, state)
    if p_eval_ema is not None:
      result.update({f'ema_{k}': v for k, v in
                     metric_sums(p_eval_ema, dataset, state).items()})
    if with_hooks:
      for hook in hooks:
        result.update(hook(model, state))
    writer.write(step, split, {'dataset_split': name,  # what was evaluated
                               'num_examples': dataset.num_examples, **result})
    return result

  def evaluate_test(step, state) -> dict:
    """The held-out test split, once (never ranked): ``test_*`` keys."""
    if data.test is None:
      return {}
    test = evaluate(step, state, data.test, 'test', data.test_split,
                    with_hooks=False)
    return {f'test_{k}': v for k, v in test.items()}

  def periodic(step, state, _=None):
    result = evaluate(step, state)
    if best.update(step, state, result):
      stop[0] = step
    if is_chief and cfg.plots:
      write_plots(workdir)

  def log_train(step, state, step_metrics):
    host = _fetch_finite(step, strategy.host(window.pop()))
    host['learning_rate'] = float(lr_schedule(step - 1))
    writer.write(step, 'train', host)

  def save(step, state, step_metrics=None):
    if step_metrics is not None:
      _fetch_finite(step, strategy.host(step_metrics))
    saved = strategy.to_saved(state)
    # The loss and gradients above come from before the update; the state
    # saved is after it (an overflowing learning rate turns it to inf/NaN).
    reason = _non_finite_reason(saved)
    if reason:
      raise NonFiniteLossError(
          f'{reason} after the update of step {step}: the run diverged. '
          'Lower --learning_rate or set --grad_clip_norm; no checkpoint of '
          'this state was written.')
    ckpt.save(step, state_lib.to_checkpoint(saved),
              {**train_iter.state(), **best.state_dict()})

  def finish(step, state, track=True) -> dict:
    """The final eval (all of the eval split), the test split, pictures."""
    result = evaluate(step, state, data.eval)
    if track and not cfg.eval_max_examples:  # ranked like the periodic evals
      best.update(step, state, result)
    result.update(evaluate_test(step, state))
    counts = _confusion(cfg, model, task, data, strategy, state,
                        eval_batch_size) if cfg.plots else None
    if is_chief and cfg.plots:
      write_plots(workdir, counts, data.label_names, eval_name)
    return {'step': step, **result}

  stop = [None]
  window = WindowMean()
  profiler = Profiler(cfg.profile_steps, workdir)
  train_iter = None
  try:
    if cfg.eval_only:  # the test split only when named (--test_split)
      test = evaluate_test(start, state) if cfg.test_split else {}
      return {'step': start, **evaluate(start, state, data.eval), **test}
    train_iter = pipeline.TrainIterator(
        data.train, cfg.batch_size, cfg.seed, step=start,
        process_index=jax.process_index(), process_count=jax.process_count(),
        threads=cfg.grain_threads if data.use_grain else 0,
        workers=cfg.grain_workers if data.use_grain else 0)
    hooks_every = [Periodic(cfg.log_every, log_train),
                   Periodic(cfg.eval_every, periodic, at_end=False),
                   Periodic(cfg.checkpoint_every, save, at_end=False)]
    step_fn = p_train
    for step in range(start, num_steps):
      batch = strategy.batch(next(train_iter))
      if step == start and cfg.model_summary:
        step_fn = _summarize(cfg, workdir, model, args, kwargs, state, batch,
                             p_train, is_chief)
      profiler.before(step)
      state, step_metrics = step_fn(state, batch)
      window.add(step_metrics)
      profiler.after(step, state)
      for hook in hooks_every:
        hook(step + 1, num_steps, state, step_metrics)
      if stop[0] is not None:
        logging.warning('early stopping at step %d: no better %s in %d evals '
                        '(best %s at step %s)', step + 1, cfg.best_metric,
                        cfg.early_stopping_patience, best.tracker.best_value,
                        best.tracker.best_step)
        break
      if preemption.reached(step + 1):
        save(step + 1, state, step_metrics)
        ckpt.wait()
        logging.warning('stopped by %s at step %d (checkpointed)',
                        preemption.received, step + 1)
        return {'step': step + 1, 'preempted': preemption.received}
    profiler.stop(state)
    last = start if start >= num_steps else step + 1
    if stop[0] is not None:
      save(last, state)
      return {'step': last, 'stopped_early': True,
              **finish(last, state, track=False)}
    out = finish(max(num_steps, start), state)
    save(max(num_steps, start), state)
    return out
  finally:
    if train_iter is not None:
      train_iter.close()  # grain's worker processes and shared memory
    ckpt.close()
    best.close()
    writer.close()


def _check_selection_split(cfg: Config, data: pipeline.Data) -> None:
  """Model selection never uses the test split unless asked to by name."""
  if cfg.best_metric and data.eval_split == 'test' and cfg.eval_split != 'test':
    raise ConfigError('best_metric', f'{cfg.dataset} has no validation split, '
                      'so periodic evals use its test split; selecting on test '
                      'overstates the result. Hold out part of train '
                      "(--train_split='train[:90%]' --eval_split="
                      "'train[90%:]') or pass --eval_split=test to select on "
                      'test knowingly')


class _BestPolicy:
  """``--best_metric``: keep-best checkpoint and early stopping in the loop.

  The tracker's state rides in the regular checkpoint's data item, so a
  resumed run decides as the uninterrupted one would.
  """

  def __init__(self, cfg: Config, workdir: str, strategy, data_state: dict):
    self.strategy = strategy
    self.tracker = self.ckpt = None
    if not cfg.best_metric:
      return
    self.tracker = policy.BestTracker(cfg.best_metric, cfg.best_mode,
                                      cfg.early_stopping_patience)
    if data_state.get('best'):
      self.tracker.load_state_dict(data_state['best'])
    if not cfg.eval_only:
      self.ckpt = policy.BestCheckpoint(policy.best_checkpoint_dir(workdir))

  def update(self, step: int, state, metrics) -> bool:
    """Records an eval; True when the run should stop early."""
    if self.tracker is None or self.ckpt is None:
      return False
    try:
      decision = self.tracker.update(step, metrics)
    except ValueError as e:
      raise ConfigError('best_metric', str(e)) from None
    if decision.is_best:
      saved = self.strategy.to_saved(state)
      self.ckpt.save(step, saved.params, saved.model_state, metrics)
    return decision.should_stop

  def state_dict(self) -> dict:
    return {'best': self.tracker.state_dict()} if self.tracker else {}

  def close(self) -> None:
    if self.ckpt is not None:
      self.ckpt.close()


def _confusion(cfg, model, task, data, strategy, state, batch_size):
  """Counts ``[true, predicted]`` on the eval split, or None (not a
  classification with integer labels, or more than 100 classes)."""
  num_classes = data.model_kwargs.get('num_classes')
  if (not isinstance(task, tasks.Classification) or not num_classes or
      num_classes > 100 or task.loss == 'mse'):
    return None
  step = strategy.eval_step(functools.partial(
      confusion_step, model=model, task=task, num_classes=num_classes))
  counts = None
  for local in pipeline.eval_batches(data.eval, batch_size,
                                     jax.process_index(), jax.process_count()):
    c = step(state, strategy.batch(local))
    counts = c if counts is None else counts + c
  return np.rint(np.asarray(strategy.host(counts))).astype(np.int64)


def _summarize(cfg, workdir, model, args, kwargs, state, batch, p_train,
               is_chief) -> Callable:
  """Compiles the train step ahead of time, prints and writes the model
  summary (``WORKDIR/model_summary.txt``); returns the step to run."""
  try:
    compiled = p_train.lower(state, batch).compile()
  except Exception as e:  # pylint: disable=broad-exception-caught
    logging.warning('no ahead-of-time compile for the summary: %s', e)
    compiled = None
  if is_chief:
    text = summary_lib.summary(model, args, kwargs, state, compiled,
                               batch_size=cfg.batch_size)
    summary_lib.write(workdir, text)
    print(text, flush=True)  # stdout: what the run is; stderr stays for logs
  return compiled or p_train


def build_model(cfg: Config, data_kwargs: dict):
  """The registry model with the data's sizes, --model_kwargs, dtype, remat."""
  kwargs = {**data_kwargs, **cfg.model_kwargs, 'dtype': jnp.dtype(cfg.dtype)}
  try:
    accepted = registry.fields(cfg.model)
  except KeyError as e:
    raise ConfigError('model', str(e).strip('"')) from None
  if cfg.remat:
    if 'remat' not in accepted:
      raise ConfigError('remat', f'model {cfg.model!r} does not support '
                        'rematerialization')
    kwargs['remat'] = True
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ConfigError('model_kwargs', f'{cfg.model} takes no argument '
                      f'{unknown[0]!r}; it takes {", ".join(sorted(accepted))}')
  try:
    return registry.build(cfg.model, **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError('model_kwargs', f'{cfg.model}: {e}') from None


def _initial_state(cfg, ckpt, create, shardings, abstract_state, model,
                   workdir):
  """Resume order: workdir checkpoint, then --init_from params, then fresh.

  Returns ``(state, start step, data state)``, the state as global arrays
  laid out by ``shardings``. ``--eval_only --eval_checkpoint=best`` swaps in
  the keep-best checkpoint's params and model state.
  """
  if ckpt.latest_step() is not None:
    # The newest checkpoint that reads and verifies; corrupt ones are moved
    # aside (never deleted) when training, left in place by --eval_only.
    state, data_state, _ = ckpt.restore_latest_good(
        state_lib.to_checkpoint(abstract_state), move_aside=not cfg.eval_only,
        check=lambda tree: _non_finite_reason(state_lib.from_checkpoint(tree)))
    state = state_lib.from_checkpoint(state)
    logging.info('resumed from step %d', data_state['step'])
    if cfg.eval_only and cfg.eval_checkpoint:
      state, step = _eval_checkpoint(cfg, ckpt, state, abstract_state, workdir)
      return state, step, data_state
    return state, data_state['step'], data_state
  state = jax.jit(create, out_shardings=shardings)()
  if cfg.init_from:  # dlresearch/init.py: what loads, what is new, the report
    params, model_state, _ = init_lib.initialize(
        cfg, model, state.params, state.model_state, workdir)
    state = state.replace(params=params, model_state=model_state)
  return state, 0, {}


def _eval_checkpoint(cfg, ckpt, state, abstract_state, workdir):
  """The state of ``--eval_checkpoint`` ('best' or a step number)."""
  if cfg.eval_checkpoint == 'best':
    best = policy.BestCheckpoint(policy.best_checkpoint_dir(workdir))
    try:
      if best.best_step() is None:
        raise ConfigError('eval_checkpoint', f'no keep-best checkpoint in '
                          f'{workdir} (train with --best_metric)')
      variables, info = best.restore({'params': abstract_state.params,
                                      'model_state': abstract_state.model_state})
    finally:
      best.close()
    return state.replace(params=variables['params'],
                         model_state=variables['model_state']), info['step']
  step = int(cfg.eval_checkpoint)
  if step not in ckpt.all_steps():
    raise ConfigError('eval_checkpoint', f'no checkpoint step {step} in '
                      f'{workdir} (steps: {ckpt.all_steps()})')
  state, data_state = ckpt.restore(state_lib.to_checkpoint(abstract_state),
                                   step)
  return state_lib.from_checkpoint(state), data_state['step']
