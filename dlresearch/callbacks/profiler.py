"""Profiler (``--profile_steps=START:END``): a jax.profiler trace of those
steps.

Written under ``WORKDIR/profile`` (process 0); open it with TensorBoard's
profile plugin: ``tensorboard --logdir=WORKDIR/profile``. The trace starts
before step START runs (0-based: after START steps were done) and stops
after step END-1 (or after the last step, before the final eval, or when
the run stops first).
"""

import os

import jax
from absl import logging

from dlresearch.callbacks.base import Callback


class Profiler(Callback):

  def __init__(self, steps: tuple[int, int], workdir: str):
    self.range = steps
    self.logdir = os.path.join(workdir, 'profile')
    self.active = False
    self.num_steps = None

  def on_train_start(self, loop):
    self.num_steps = loop.num_steps

  def on_step_begin(self, step):
    if step == self.range[0] and jax.process_index() == 0:
      jax.profiler.start_trace(self.logdir)
      self.active = True

  def on_step(self, step, state, metrics):
    if self.active and (step >= self.range[1] or step == self.num_steps):
      self.stop(state)

  def on_end(self, step, state, result):
    self.stop(state)

  def stop(self, state) -> None:
    if self.active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      logging.info('profile of steps %s written to %s', self.range,
                   self.logdir)
