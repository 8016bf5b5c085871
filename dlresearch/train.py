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
from importlib import metadata
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from dlresearch import checkpoint, config as config_lib, init as init_lib
from dlresearch import logging as log_lib, optim, parallel, state as state_lib
from dlresearch import tasks, workdir as workdir_lib
from dlresearch.config import Config, ConfigError
from dlresearch.data import kinds, pipeline
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
               tx: optax.GradientTransformation, axis_name: str | None = None):
  """One update. ``(state, batch) -> (state, metrics)``.

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
  state = state.replace(step=state.step + 1, opt_state=opt_state,
                        params=optax.apply_updates(state.params, updates),
                        model_state=model_state)
  out = {k: v / sums['count'] for k, v in sums.items() if k != 'count'}
  out['grad_norm'] = optax.tree.norm(grads)
  return state, out


def make_train_step(model, task, tx: optax.GradientTransformation,
                    accum_steps: int = 1) -> Callable:
  """``train_step`` bound to a model, task and optimizer (not yet jitted)."""
  grad_fn = functools.partial(gradients, model=model, task=task)
  return functools.partial(train_step, grad_fn=accumulate(grad_fn, accum_steps),
                           tx=tx)


def eval_step(state: state_lib.TrainState, batch, *, model, task,
              axis_name: str | None = None):
  """Masked metric sums for one eval batch (padding examples count 0)."""
  sums, _ = task(model, state.variables(), batch, train=False)
  return jax.lax.psum(sums, axis_name) if axis_name else sums


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
      (``data/kinds.py``) from ``cfg``.
    eval_hooks: ``hook(model, state) -> dict`` called at every eval after
      the data's own; their keys are added to the eval line.
    writer: metric writer (default: JSONL + TensorBoard + console on
      process 0).

  Returns:
    The final eval metrics plus ``step``; when stopped by SIGTERM or Ctrl-C
    after checkpointing, ``{'step', 'preempted': 'SIGTERM' | 'SIGINT'}``.
  """
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
  mesh = parallel.make_mesh(cfg.mesh)
  config_lib.check_devices(cfg, mesh.size)
  created = not os.path.exists(workdir)
  lock = None
  if jax.process_index() == 0 and not cfg.eval_only:
    lock = workdir_lib.WorkdirLock(workdir).acquire()  # one writer per workdir
  try:
    return _run_locked(cfg, workdir, data, eval_hooks, writer, preemption,
                       mesh, fresh)
  except BaseException:
    if created and not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
      shutil.rmtree(workdir, ignore_errors=True)  # failed before training
    raise
  finally:
    if lock is not None:
      lock.release()


def _run_locked(cfg, workdir, data, eval_hooks, writer, preemption, mesh,
                fresh) -> dict:
  data = data or kinds.build(cfg, workdir, fresh)
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
  create = functools.partial(state_lib.create, model, tx, args, kwargs, cfg.seed)
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
  strategy = parallel.strategy(cfg.parallelism, mesh, shardings)
  state, start = _initial_state(cfg, ckpt, create, shardings, abstract_state,
                                model, workdir)
  state = strategy.from_saved(state)
  p_train = strategy.train_step(
      make_train_step(model, task, tx, cfg.grad_accum_steps))
  p_eval = strategy.eval_step(functools.partial(eval_step, model=model, task=task))
  eval_batch_size = cfg.eval_batch_size or cfg.batch_size
  hooks = [*data.eval_hooks, *eval_hooks]
  writer = writer or log_lib.default_writer(workdir, num_steps, cfg.batch_size,
                                            is_chief)

  def evaluate(step, state, _=None):
    sums = None
    for local in pipeline.eval_batches(data.eval, eval_batch_size,
                                       jax.process_index(), jax.process_count()):
      sums = tasks.add_sums(sums, p_eval(state, strategy.batch(local)))
    result = task.finalize(tasks.finalize_sums(strategy.host(sums)))
    for hook in hooks:
      result.update(hook(model, state))
    writer.write(step, 'eval', result)
    return result

  def log_train(step, state, step_metrics):
    host = _fetch_finite(step, strategy.host(step_metrics))
    host['learning_rate'] = float(lr_schedule(step - 1))
    writer.write(step, 'train', host)

  def save(step, state, step_metrics):
    _fetch_finite(step, strategy.host(step_metrics))
    ckpt.save(step, strategy.to_saved(state), train_iter.state())

  try:
    if cfg.eval_only:
      return {'step': start, **evaluate(start, state)}
    train_iter = pipeline.TrainIterator(
        data.train, cfg.batch_size, cfg.seed, step=start,
        process_index=jax.process_index(), process_count=jax.process_count(),
        threads=cfg.grain_threads if data.use_grain else 0,
        workers=cfg.grain_workers if data.use_grain else 0)
    periodic = [Periodic(cfg.log_every, log_train),
                Periodic(cfg.checkpoint_every, save),
                Periodic(cfg.eval_every, evaluate, at_end=False)]
    for step in range(start, num_steps):
      batch = strategy.batch(next(train_iter))
      state, step_metrics = p_train(state, batch)
      for hook in periodic:
        hook(step + 1, num_steps, state, step_metrics)
      if preemption.reached(step + 1):
        save(step + 1, state, step_metrics)
        ckpt.wait()
        logging.warning('stopped by %s at step %d (checkpointed)',
                        preemption.received, step + 1)
        return {'step': step + 1, 'preempted': preemption.received}
    return {'step': max(num_steps, start), **evaluate(max(num_steps, start), state)}
  finally:
    ckpt.close()
    writer.close()


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

  Returns the state as global arrays laid out by ``shardings``.
  """
  if ckpt.latest_step() is not None:
    # The newest checkpoint that reads and verifies; corrupt ones are moved
    # aside (never deleted) when training, left in place by --eval_only.
    state, data_state, _ = ckpt.restore_latest_good(
        abstract_state, move_aside=not cfg.eval_only)
    logging.info('resumed from step %d', data_state['step'])
    return state, data_state['step']
  state = jax.jit(create, out_shardings=shardings)()
  if cfg.init_from:  # dlresearch/init.py: what loads, what is new, the report
    params, model_state, _ = init_lib.initialize(
        cfg, model, state.params, state.model_state, workdir)
    state = state.replace(params=params, model_state=model_state)
  return state, 0
