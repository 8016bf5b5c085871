"""Assembling a run: the model, optimizer, strategy and first state.

``assemble`` builds the registry model with the data's sizes
(``build_model``), the optimizer and its schedule (``optim.make``), the
state's shapes and shardings without allocating it (``jax.eval_shape``),
the strategy (``parallel.strategy``: jit or pmap), then the state itself:
the workdir's checkpoint, else ``--init_from``, else fresh
(``state.restore_or_create``). ``train.run`` compiles the steps on it.
"""

import dataclasses
import functools
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlresearch import checkpoint, kernels, optim, parallel, state as state_lib, tasks
from dlresearch.config import Config, ConfigError
from dlresearch.data import pipeline
from dlresearch.models import attention, lora, registry


def num_train_steps(cfg: Config, num_examples: int) -> int:
  if cfg.num_steps:
    return cfg.num_steps
  return max(1, math.ceil(cfg.num_epochs * num_examples / cfg.batch_size))


def has_checkpoints(workdir: str) -> bool:
  ckpts = checkpoint.checkpoint_dir(workdir)
  return os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))


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
  if cfg.attention_impl != 'auto':  # models/attention.py: the implementations
    if 'attention_impl' not in accepted:
      raise ConfigError('attention_impl', f'model {cfg.model!r} has no '
                        'attention layers to choose a kernel for')
    problem = attention.check_implementation(cfg.attention_impl)
    if problem:
      raise ConfigError('attention_impl', problem)
    kwargs['attention_impl'] = cfg.attention_impl
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ConfigError('model_kwargs', f'{cfg.model} takes no argument '
                      f'{unknown[0]!r}; it takes {", ".join(sorted(accepted))}')
  try:
    model = registry.build(cfg.model, **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError('model_kwargs', f'{cfg.model}: {e}') from None
  if cfg.lora_rank:  # adapters on the model's Dense kernels (models/lora.py)
    model = lora.LoRA(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                      cfg.lora_targets)
  return model


@dataclasses.dataclass
class Run:
  """What the loop trains, built once per ``run``."""

  cfg: Config
  workdir: str
  data: pipeline.Data
  model: Any
  task: Any
  example: tuple  # (args, kwargs): model inputs of one example
  lr_schedule: Callable
  strategy: Any
  ckpt: checkpoint.Checkpointer
  state: Any
  start: int
  num_steps: int
  data_state: dict
  tx: optax.GradientTransformation


def assemble(cfg, workdir: str, data, mesh, num_steps: int) -> Run:
  """Model, optimizer, strategy and state (resumed or fresh)."""
  model = build_model(cfg, data.model_kwargs)
  args, kwargs = data.task.model_inputs(data.eval.get(np.arange(1), None))
  abstract_params = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), *args, train=False, **kwargs)
  )['params']
  tx, lr_schedule = optim.make(cfg, num_steps, abstract_params)
  create = functools.partial(state_lib.create, model, tx, args, kwargs,
                             cfg.seed, ema=cfg.ema_decay > 0)
  init_jaxpr, shapes = jax.make_jaxpr(create, return_shape=True)()
  cpu_kernels = ('xla' if cfg.cpu_kernels == 'auto' and
                 kernels.has_convolution(init_jaxpr) else cfg.cpu_kernels)
  task = tasks.freeze_backbone(  # --probe / --freeze: batch stats stay put
      data.task, probe=cfg.probe,
      trainable=optim.trainable(cfg, abstract_params),
      model_state=shapes.model_state)
  shardings = parallel.state_shardings(shapes, mesh)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, shardings)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir),
                                 cfg.keep_checkpoints)
  strategy = parallel.strategy(cfg.parallelism, mesh, shardings,
                               cfg.cpu_eigen_convs, cpu_kernels)
  state, start, data_state = state_lib.restore_or_create(
      cfg, ckpt, create, shardings, abstract_state, model, workdir)
  if start > num_steps and not cfg.eval_only:
    ckpt.close()
    raise ConfigError('num_steps', f'{workdir} is already at step {start}, '
                      f'past {num_steps}; it does not train backwards: use '
                      '--eval_only to evaluate it, or a new --workdir (with '
                      '--init_from to start from its params)')
  return Run(cfg, workdir, data, model, task, (args, kwargs), lr_schedule,
             strategy, ckpt, strategy.from_saved(state), start, num_steps,
             data_state, tx)
