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
import signal
import subprocess
import threading
from importlib import metadata
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from dlresearch import checkpoint, config as config_lib, distributed, metrics
from dlresearch import logging as log_lib, optim, parallel, state as state_lib
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline
from dlresearch.models import registry


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/inf; nothing non-finite was saved."""


# ---------------------------------------------------------------------------
# Pure steps.


def train_step(state: state_lib.TrainState, batch, *, model, task,
               tx: optax.GradientTransformation, accum_steps: int = 1,
               axis_name: str | None = None):
  """One update. ``(state, batch) -> (state, metrics)``.

  With ``accum_steps > 1`` the batch is split into that many micro-batches
  (strided, so each device keeps its share of every micro-batch) whose
  gradients are averaged before the single update. ``axis_name`` is set
  under ``pmap``: gradients, batch statistics and metrics are then averaged
  over that axis (under ``jit`` the compiler does it: the batch is global).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

  def loss_fn(params, model_state, micro, rng):
    variables = {'params': params, **model_state}
    sums, new_model_state = task(model, variables, micro, train=True, rng=rng)
    return sums['loss'] / sums['count'], (sums, new_model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (_, (sums, model_state)), grads = grad_fn(
        state.params, state.model_state, batch, rng)
  else:
    micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps,
                            *x.shape[1:]).swapaxes(0, 1), batch)

    def body(carry, xs):
      grads, sums, model_state = carry
      mb, i = xs
      (_, (s, model_state)), g = grad_fn(state.params, model_state, mb,
                                         jax.random.fold_in(rng, i))
      return (jax.tree.map(jnp.add, grads, g), metrics.add(sums, s),
              model_state), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    first = jax.tree.map(lambda x: x[0], micro)
    sums0 = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: loss_fn(state.params, state.model_state, first, rng)[1][0]))
    (grads, sums, model_state), _ = jax.lax.scan(
        body, (zeros, sums0, state.model_state),
        (micro, jnp.arange(accum_steps)))
    grads = jax.tree.map(lambda g: g / accum_steps, grads)
  if axis_name:
    grads = jax.lax.pmean(grads, axis_name)
    model_state = jax.lax.pmean(model_state, axis_name)
    sums = jax.lax.psum(sums, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, model_state=model_state)
  out = {k: v / sums['count'] for k, v in sums.items() if k != 'count'}
  out['grad_norm'] = optax.tree.norm(grads)
  return new_state, out


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
  """SIGTERM -> checkpoint at the next step and stop (exit code 0).

  One process: our own SIGTERM handler. Several: JAX's preemption notifier
  (installed by ``jax.distributed``) and a sync point, so that every host
  stops at the same step.
  """

  def __init__(self):
    self.requested = False
    self._old = None
    if (jax.process_count() == 1 and
        threading.current_thread() is threading.main_thread()):
      self._old = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: checkpointing at the next step, then stopping')
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:  # every host must agree on the step
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


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


def _git_commit() -> str | None:
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                         text=True, timeout=10,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    return out.stdout.strip() or None
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


def write_config(cfg: Config, workdir: str, num_steps: int) -> None:
  record = {
      'config': config_lib.to_json(cfg.replace(num_steps=num_steps)),
      'git_commit': _git_commit(),
      'versions': _versions(),
      'device_count': jax.device_count(),
      'process_count': jax.process_count(),
      'platform': jax.devices()[0].platform,
  }
  tmp = os.path.join(workdir, 'config.json.tmp')
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, os.path.join(workdir, 'config.json'))


# Fields that define what a checkpoint is: resuming a workdir with other
# values would continue a different experiment (or fail inside orbax).
IDENTITY_FIELDS = ('dataset', 'train_split', 'model', 'model_kwargs', 'seed',
                   'batch_size', 'image_size', 'augment', 'normalize')


def check_resumable(cfg: Config, workdir: str) -> None:
  """ConfigError if ``workdir`` holds checkpoints of a different experiment."""
  path = os.path.join(workdir, 'config.json')
  ckpts = checkpoint.checkpoint_dir(workdir)
  if not (os.path.exists(path) and os.path.isdir(ckpts) and
          any(n.isdigit() for n in os.listdir(ckpts))):
    return
  with open(path, encoding='utf-8') as f:
    old = json.load(f)['config']
  new = config_lib.to_json(cfg)
  for field in IDENTITY_FIELDS:
    if field in old and old[field] != new[field]:
      raise ConfigError(
          field, f'{workdir} holds checkpoints trained with --{field}='
          f'{old[field]!r}, not {new[field]!r}; resume with the same value or '
          'use a new --workdir')


def run(cfg: Config, workdir: str, *, data: pipeline.Data | None = None,
        eval_hooks: Iterable[Callable] = (),
        writer: log_lib.Writer | None = None) -> dict:
  """Trains (or, with ``eval_only``, evaluates) and returns the final eval.

  Args:
    cfg: the experiment config.
    workdir: where config.json, metrics.jsonl, TensorBoard files and
      checkpoints go. Rerunning with the same workdir resumes.
    data: train/eval datasets and the task; default: built from ``cfg``.
    eval_hooks: ``hook(model, state) -> dict`` called at every eval; their
      keys are added to the eval line (e.g. BLEU, samples).
    writer: metric writer (default: JSONL + TensorBoard + console on
      process 0).

  Returns:
    The final eval metrics plus ``step`` (and ``preempted`` when stopped by
    SIGTERM).
  """
  cfg = config_lib.validate(cfg)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  distributed.initialize(
      cfg.coordinator_address or None, cfg.num_processes or None,
      cfg.process_id if cfg.process_id >= 0 else None,
      heartbeat_timeout_s=cfg.heartbeat_timeout_s,
      init_timeout_s=cfg.init_timeout_s)
  mesh = parallel.make_mesh(cfg.mesh)
  config_lib.check_devices(cfg, mesh.size)
  data = data or pipeline.from_config(cfg)
  task = data.task
  num_steps = num_train_steps(cfg, data.train.num_examples)
  is_chief = jax.process_index() == 0
  check_resumable(cfg, workdir)
  if is_chief:
    os.makedirs(workdir, exist_ok=True)
    write_config(cfg, workdir, num_steps)

  model = build_model(cfg, data.model_kwargs)
  example = data.eval.get(np.arange(1), None)
  args, kwargs = task.model_inputs(example)
  abstract_params = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), *args, train=False, **kwargs)
  )['params']
  tx, lr_schedule = optim.make(cfg, num_steps, abstract_params)
  create = functools.partial(state_lib.create, model, tx, args, kwargs, cfg.seed)
  shapes = jax.eval_shape(create)
  shardings = parallel.state_shardings(shapes, mesh)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, shardings)

  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir),
                                 cfg.keep_checkpoints)
  strategy = parallel.strategy(cfg.parallelism, mesh, shardings)
  state, start = _initial_state(cfg, ckpt, create, shardings, abstract_state)
  state = strategy.from_saved(state)
  p_train = strategy.train_step(functools.partial(
      train_step, model=model, task=task, tx=tx,
      accum_steps=cfg.grad_accum_steps))
  p_eval = strategy.eval_step(functools.partial(eval_step, model=model, task=task))
  eval_batch_size = cfg.eval_batch_size or cfg.batch_size
  writer = writer or log_lib.default_writer(workdir, num_steps, cfg.batch_size,
                                            is_chief)

  def evaluate(step, state, _=None):
    sums = None
    for local in pipeline.eval_batches(data.eval, eval_batch_size,
                                       jax.process_index(), jax.process_count()):
      sums = metrics.add(sums, p_eval(state, strategy.batch(local)))
    result = task.finalize(metrics.finalize(strategy.host(sums)))
    for hook in eval_hooks:
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
      if ckpt.latest_step() is None:
        raise ConfigError('eval_only', f'no checkpoint in {workdir} to evaluate')
      return {'step': start, **evaluate(start, state)}
    train_iter = pipeline.TrainIterator(
        data.train, cfg.batch_size, cfg.seed, step=start,
        process_index=jax.process_index(), process_count=jax.process_count(),
        threads=cfg.grain_threads if data.use_grain else 0,
        workers=cfg.grain_workers if data.use_grain else 0)
    hooks = [Periodic(cfg.log_every, log_train),
             Periodic(cfg.checkpoint_every, save),
             Periodic(cfg.eval_every, evaluate, at_end=False)]
    preemption = Preemption()
    try:
      for step in range(start, num_steps):
        batch = strategy.batch(next(train_iter))
        state, step_metrics = p_train(state, batch)
        for hook in hooks:
          hook(step + 1, num_steps, state, step_metrics)
        if preemption.reached(step + 1):
          save(step + 1, state, step_metrics)
          ckpt.wait()
          logging.warning('stopped by SIGTERM at step %d (checkpointed)', step + 1)
          return {'step': step + 1, 'preempted': True}
    finally:
      preemption.close()
    return {'step': num_steps, **evaluate(num_steps, state)}
  finally:
    ckpt.close()
    writer.close()


def build_model(cfg: Config, data_kwargs: dict):
  """The registry model with the data's sizes, --model_kwargs, dtype, remat."""
  kwargs = {**data_kwargs, **cfg.model_kwargs, 'dtype': jnp.dtype(cfg.dtype)}
  if cfg.remat:
    kwargs['remat'] = True
  try:
    return registry.build(cfg.model, **kwargs)
  except KeyError as e:
    raise ConfigError('model', str(e).strip('"')) from None
  except TypeError as e:
    if cfg.remat and 'remat' in str(e):
      raise ConfigError('remat', f'model {cfg.model!r} does not support '
                        'rematerialization') from None
    raise ConfigError('model_kwargs', f'{cfg.model}: {e}') from None


def _initial_state(cfg, ckpt, create, shardings, abstract_state):
  """Resume order: workdir checkpoint, then --init_from params, then fresh.

  Returns the state as global arrays laid out by ``shardings``.
  """
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(abstract_state)  # see check_resumable
    logging.info('resumed from step %d', data_state['step'])
    return state, data_state['step']
  state = jax.jit(create, out_shardings=shardings)()
  if cfg.init_from:
    pretrained = checkpoint.load_variables(cfg.init_from)
    params, _, _ = checkpoint.merge_pretrained(state.params, pretrained['params'])
    model_state, _, _ = checkpoint.merge_pretrained(
        state.model_state, pretrained['model_state'], 'model_state')
    state = state.replace(params=params, model_state=model_state)
  return state, 0
