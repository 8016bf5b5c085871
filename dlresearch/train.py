"""The one training loop: ``run(config, workdir)``.

flags -> Config -> (data, model, optimizer) -> TrainState -> train_step ->
metrics.jsonl / checkpoints. Experiments, tests and notebooks all call
``run``. The steps are pure module-level functions, jitted with explicit
shardings and a donated state; how they spread over devices (jit or pmap)
is the strategy's business (``parallel.py``). What runs around the loop is
a callback (``callbacks/``: keep-best, early stopping, NaN stop, plots,
profiler, model summary, and the user's own); what an eval computes is an
evaluator (``evaluators/``).
"""

import functools
import os
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import optax
from absl import logging

from dlresearch import assemble, callbacks as callbacks_lib
from dlresearch import config as config_lib, ema as ema_lib, evaluators
from dlresearch import init as init_lib
from dlresearch import logging as log_lib, parallel, state as state_lib
from dlresearch import problems, tasks, workdir as workdir_lib
from dlresearch.callbacks import keep_best, nan_stop
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline
from dlresearch.preemption import Preemption  # noqa: F401 (train.Preemption)
from dlresearch.provenance import write_config  # noqa: F401

# Kept importable from ``train`` (their code moved to the modules named).
NonFiniteLossError = nan_stop.NonFiniteLossError
WindowMean = log_lib.WindowMean
use_compilation_cache = parallel.use_compilation_cache
build_model = assemble.build_model
num_train_steps = assemble.num_train_steps
has_checkpoints = assemble.has_checkpoints


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
               tx: optax.GradientTransformation, ema_decay: float = 0.0):
  """One update. ``(state, batch) -> (state, metrics)``.

  ``grad_fn(params, model_state, batch, rng) -> (grads, sums, model_state)``
  is ``gradients`` bound to a model and task (``make_train_step``), possibly
  wrapped by ``accumulate`` and by the strategy (``parallel.PmapStrategy``
  reduces across devices there; under ``jit`` the compiler does it). With
  ``ema_decay`` > 0 (and ``state.ema_params``), the EMA of the params
  follows the update: ``ema.ema_update(ema, new_params, ema_decay,
  step=old_step)``.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  grads, sums, model_state = grad_fn(state.params, state.model_state, batch,
                                     rng)
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
                    accum_steps: int = 1, ema_decay: float = 0.0,
                    strategy=None) -> Callable:
  """``train_step`` bound to a model, task and optimizer (not yet jitted;
  ``strategy.train_step`` compiles it)."""
  grad_fn = accumulate(functools.partial(gradients, model=model, task=task),
                       accum_steps)
  if strategy is not None:
    grad_fn = strategy.gradients(grad_fn)
  return functools.partial(train_step, grad_fn=grad_fn, tx=tx,
                           ema_decay=ema_decay)


def eval_step(state: state_lib.TrainState, batch, *, model, task,
              ema: bool = False):
  """Masked metric sums for one eval batch (padding examples count 0).

  ``ema``: evaluate ``state.ema_params`` instead of ``state.params``.
  """
  params = state.ema_params if ema else None
  sums, _ = task(model, state.variables(params), batch, train=False)
  return sums


# ---------------------------------------------------------------------------
# The run.


def run(cfg: Config, workdir: str, *, data: pipeline.Data | None = None,
        eval_hooks: Iterable[Callable] = (),
        writer: log_lib.Writer | None = None,
        callbacks: Iterable[callbacks_lib.Callback] = ()) -> dict:
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
    callbacks: ``callbacks.Callback`` objects called after the built-in
      ones (``callbacks/base.py``: when each method is called, how one stops
      the run, how its state survives a resume). With ``eval_only`` only
      their ``on_eval`` and ``on_end`` are called.

  Returns:
    The final eval metrics plus ``step``; when stopped by SIGTERM or Ctrl-C
    after checkpointing, ``{'step', 'preempted': 'SIGTERM' | 'SIGINT'}``;
    when a callback stopped it, ``stopped_early: True`` is added.
  """
  log_lib.quiet_libraries()
  preemption = Preemption()
  try:
    return _run(cfg, workdir, data, eval_hooks, writer, list(callbacks),
                preemption)
  finally:
    preemption.close()


def _run(cfg, workdir, data, eval_hooks, writer, callbacks, preemption):
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
  chief = jax.process_index() == 0
  beside = cfg.eval_only and chief and workdir_lib.busy_holder(workdir)
  if beside:  # a training run holds the workdir: write nothing into it
    logging.warning('%s is in use by %s: evaluating without writing to it '
                    '(the result is printed only)', workdir, beside)
    writer = writer or log_lib.MultiWriter([])
  with workdir_lib.claim(workdir, lock=chief and not beside,
                         clean_up=chief):  # one writer per workdir
    return _run_locked(cfg, workdir, data, eval_hooks, writer, callbacks,
                       preemption, mesh, fresh)


def _run_locked(cfg, workdir, data, eval_hooks, writer, callbacks,
                preemption, mesh, fresh) -> dict:
  parallel.use_compilation_cache(cfg.compilation_cache)
  data = data or problems.build(cfg, workdir, fresh)
  keep_best.check_selection_split(cfg, data.eval_split)
  if data.train.num_examples < cfg.batch_size and not cfg.eval_only:
    raise ConfigError('batch_size', f'{cfg.batch_size} is larger than the '
                      f'train split ({data.train.num_examples} examples); use '
                      'a smaller --batch_size')
  num_steps = num_train_steps(cfg, data.train.num_examples)
  if jax.process_index() == 0 and fresh:
    os.makedirs(workdir, exist_ok=True)
    write_config(cfg, workdir, num_steps, data.model_kwargs)
  r = assemble.assemble(cfg, workdir, data, mesh, num_steps)
  p_train = r.strategy.train_step(make_train_step(
      r.model, r.task, r.tx, cfg.grad_accum_steps, cfg.ema_decay, r.strategy))
  lines = evaluators.eval_lines(cfg, data, r.model, r.task, r.strategy,
                                eval_step, eval_hooks)
  writer = writer or log_lib.default_writer(
      workdir, num_steps, cfg.batch_size, jax.process_index() == 0,
      progress=cfg.progress, start_step=r.start)
  if cfg.eval_only:
    callbacks_run = list(callbacks)
  else:
    callbacks_run = [*callbacks_lib.standard(
        cfg, workdir, model=r.model, task=r.task, data=data,
        strategy=r.strategy, example=r.example), *callbacks]
  try:
    if cfg.eval_only:
      return _evaluate_only(r, lines, writer, callbacks_run)
    return _Loop(r, p_train, lines, writer, callbacks_run, preemption).train()
  finally:
    r.ckpt.close()
    for callback in callbacks_run:
      callback.close()
    writer.close()


def _evaluate_only(r: assemble.Run, lines: dict, writer, callbacks) -> dict:
  """``--eval_only``: the eval split (and the test split when named)."""
  test = {}
  if r.cfg.test_split and lines['test'] is not None:
    test = lines['test'].run(r.start, r.state, writer)
  result = lines['final'].run(r.start, r.state, writer)
  for callback in callbacks:
    if test:
      callback.on_eval(r.start, r.state, 'test', test, True)
    callback.on_eval(r.start, r.state, 'eval', result, True)
  out = {'step': r.start, **result, **{f'test_{k}': v for k, v in test.items()}}
  for callback in callbacks:
    callback.on_end(r.start, r.state, out)
  return out


def _every(step: int, every: int) -> bool:
  return bool(every) and step % every == 0


class _Loop:
  """The training loop of one ``run``: steps, then what ``cfg`` schedules
  at each (train line, eval, checkpoint), the callbacks after each."""

  def __init__(self, r: assemble.Run, p_train, lines: dict, writer,
               callbacks, preemption):
    self.r, self.cfg, self.writer = r, r.cfg, writer
    self.p_train, self.lines = p_train, lines
    self.callbacks, self.preemption = callbacks, preemption
    self.window = log_lib.WindowMean()
    self.window.load_state_dict(r.data_state.get('window', {}))
    for callback in callbacks:
      if callback.state_key and r.data_state.get(callback.state_key):
        callback.load_state_dict(r.data_state[callback.state_key])
    self.train_iter = pipeline.TrainIterator(
        r.data.train, self.cfg.batch_size, self.cfg.seed, step=r.start,
        process_index=jax.process_index(), process_count=jax.process_count(),
        threads=self.cfg.grain_threads if r.data.use_grain else 0,
        workers=self.cfg.grain_workers if r.data.use_grain else 0)
    self.info = callbacks_lib.LoopInfo(
        self.cfg, r.workdir, r.model, r.start, r.num_steps, r.state, None,
        p_train)

  def _notify(self, method: str, *args) -> bool:
    """Calls ``method`` of every callback; True if one asked to stop."""
    stop = [getattr(callback, method)(*args) for callback in self.callbacks]
    return any(stop)

  def train(self) -> dict:
    try:
      return self._train()
    finally:
      self.train_iter.close()  # grain's worker processes and shared memory

  def _train(self) -> dict:
    r, cfg, state = self.r, self.cfg, self.r.state
    step_fn, stop, step = self.p_train, False, r.start
    for step in range(r.start, r.num_steps):
      batch = r.strategy.batch(next(self.train_iter))
      if step == r.start:
        self.info.batch = batch
        self._notify('on_train_start', self.info)
        step_fn = self.info.step_fn
      self._notify('on_step_begin', step)
      state, metrics = step_fn(state, batch)
      self.window.add(metrics)
      done = step + 1
      logged = (self._train_line(done)
                if _every(done, cfg.log_every) or done == r.num_steps else None)
      stop |= self._notify('on_step', done, state, callbacks_lib.StepMetrics(
          done, metrics, r.strategy.host, logged))
      if logged is not None:
        self.writer.write(done, 'train', logged)
      if _every(done, cfg.eval_every) and done != r.num_steps:
        result = self.lines['periodic'].run(done, state, self.writer)
        stop |= self._notify('on_eval', done, state, 'eval', result, False)
      if _every(done, cfg.checkpoint_every) and done != r.num_steps:
        self._save(done, state)
      if stop:
        break
      if self.preemption.reached(done):
        return self._preempted(done, state)
    last = r.start if r.start >= r.num_steps else step + 1
    stop = self.info.stopping = stop and last < r.num_steps  # else: the end
    if stop:
      self._save(last, state)
      result = {'step': last, 'stopped_early': True,
                **self._finish(last, state)}
    else:
      last = max(r.num_steps, r.start)
      result = self._finish(last, state)
      self._save(last, state)
    self._notify('on_end', last, state, result)
    return result

  def _train_line(self, step: int) -> dict:
    host = {k: float(v) for k, v in
            self.r.strategy.host(self.window.pop()).items()}
    host['learning_rate'] = float(self.r.lr_schedule(step - 1))
    return host

  def _save(self, step: int, state) -> None:
    saved = self.r.strategy.to_saved(state)
    self._notify('on_checkpoint', step, saved)  # NanStop raises here
    data_state = {**self.train_iter.state(),
                  'window': self.window.state_dict(self.r.strategy.host)}
    for callback in self.callbacks:
      if callback.state_key:
        data_state[callback.state_key] = callback.state_dict()
    self.r.ckpt.save(step, state_lib.to_checkpoint(saved, self.r.cfg), data_state)

  def _preempted(self, step: int, state) -> dict:
    self._save(step, state)
    self.r.ckpt.wait()
    logging.warning('stopped by %s at step %d (checkpointed)',
                    self.preemption.received, step)
    result = {'step': step, 'preempted': self.preemption.received}
    self._notify('on_end', step, state, result)
    return result

  def _finish(self, step: int, state) -> dict:
    """The final eval (all of the eval split), then the test split."""
    lines = self.lines
    result = lines['final'].run(step, state, self.writer)
    self._notify('on_eval', step, state, 'eval', result, True)
    if lines['test'] is not None:
      test = lines['test'].run(step, state, self.writer)
      self._notify('on_eval', step, state, 'test', test, True)
      result.update({f'test_{k}': v for k, v in test.items()})
    return {'step': step, **result}
