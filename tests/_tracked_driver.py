"""Subprocess driver for the tracker tests (``tests/e2e/test_tracking.py``).

    python tests/_tracked_driver.py WORKDIR NUM_STEPS KILL_AT KILL_PID TRACKER URI

Trains the quickstart preset's tiny form for NUM_STEPS (train lines every 5
steps, checkpoints every 10, evals every 15) with ``--tracker=TRACKER
--tracker_uri=URI``. Right after the train line of step KILL_AT is written
(KILL_AT > 0), SIGKILLs the process group KILL_PID (a tracking server and
its workers dying mid-run), or itself when KILL_PID is 0 (a hard crash at a
known point).
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
  """Delegates to the real writers, then SIGKILLs ``pid`` after ``step``."""

  def __init__(self, inner, step, pid):
    self.inner, self.step, self.pid = inner, step, pid

  def write(self, step, split, metrics):
    self.inner.write(step, split, metrics)
    if self.step and split == 'train' and step == self.step:
      if self.pid:  # a server started as its own process group
        os.killpg(self.pid, signal.SIGKILL)
      else:
        os.kill(os.getpid(), signal.SIGKILL)

  def close(self):
    self.inner.close()


def main():
  workdir, num_steps, kill_at, kill_pid, tracker, uri = sys.argv[1:7]
  preset = PRESETS['quickstart']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'num_steps': int(num_steps), 'log_every': 5,
      'checkpoint_every': 10, 'eval_every': 15, 'tracker': tracker,
      'tracker_uri': uri, 'model_summary': True, 'plots': True})
  writer = KillAfter(log_lib.default_writer(workdir, cfg.num_steps,
                                            cfg.batch_size, True),
                     int(kill_at), int(kill_pid))
  result = train.run(cfg, workdir, writer=writer)
  print('RESULT', result)


if __name__ == '__main__':
  main()
