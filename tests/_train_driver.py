"""Subprocess driver for crash/resume tests.

    python tests/_train_driver.py WORKDIR DATA_DIR NUM_STEPS KILL_AT

Trains the quickstart preset's tiny form for NUM_STEPS; if KILL_AT > 0 the
process SIGKILLs itself right after the train line of step KILL_AT is
written (a hard crash at a known point, with checkpoints before it).
"""

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from dlresearch import config as config_lib  # noqa: E402
from dlresearch import logging as log_lib  # noqa: E402
from dlresearch import train  # noqa: E402
from experiments.cnn_imagenet import PRESETS  # noqa: E402


class KillAfter:
  """Delegates to the real writers, then dies hard after ``step``."""

  def __init__(self, inner, step):
    self.inner, self.step = inner, step

  def write(self, step, split, metrics):
    self.inner.write(step, split, metrics)
    if self.step and split == 'train' and step == self.step:
      os.kill(os.getpid(), signal.SIGKILL)

  def close(self):
    self.inner.close()


def main():
  workdir, data_dir, num_steps, kill_at = sys.argv[1:5]
  preset = PRESETS['quickstart']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'data_dir': data_dir, 'num_steps': int(num_steps),
      'log_every': 5, 'checkpoint_every': 10, 'eval_every': 15})
  writer = KillAfter(log_lib.default_writer(workdir, cfg.num_steps,
                                            cfg.batch_size, True), int(kill_at))
  result = train.run(cfg, workdir, writer=writer)
  print('RESULT', result)


if __name__ == '__main__':
  main()
