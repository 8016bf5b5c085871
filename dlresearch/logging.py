"""Metric writers behind one small protocol: ``write(step, split, metrics)``.

``WORKDIR/metrics.jsonl`` holds one JSON object per logged step, each line
flushed as written: ``{"step": int, "split": "train"|"eval", ...}``. A
restarted run appends to it; a partial last line (a crash mid-write) is
dropped first. Steps between the last checkpoint and a crash are logged again
after the resume; ``read_metrics`` keeps the last line per (step, split).
"""

import json
import math
import os
import time
from typing import Mapping, Protocol

from absl import logging


class Writer(Protocol):

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    ...

  def close(self) -> None:
    ...


def _jsonable(v):
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/inf
  return v


class MetricsWriteError(Exception):
  """metrics.jsonl could not be written; its earlier lines are intact."""


class JsonlWriter:
  """Appends one JSON line per call to ``path``, whole or not at all.

  Each line goes out in one ``write`` on an ``O_APPEND`` descriptor; when
  that fails (a full disk), the file is cut back to its last complete line
  and MetricsWriteError says what could not be written.
  """

  def __init__(self, path: str):
    self.path = path
    if os.path.exists(path):
      with open(path, 'rb+') as f:
        data = f.read()
        if data and not data.endswith(b'\n'):
          f.truncate(data.rfind(b'\n') + 1)  # drop a partial last line
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    self._size = os.fstat(self._fd).st_size

  def write(self, step, split, metrics):
    line = {'step': int(step), 'split': split}
    line.update({k: _jsonable(v) for k, v in metrics.items()})
    data = (json.dumps(line) + '\n').encode()
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(self._fd, view):]
    except OSError as e:
      try:
        os.ftruncate(self._fd, self._size)  # no partial line stays
      except OSError:
        pass
      raise MetricsWriteError(
          f'could not write the {split} line of step {step} to {self.path}: '
          f'{e.strerror}; its earlier lines are intact') from None
    self._size += len(data)

  def close(self):
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


class TensorBoardWriter:
  """TensorBoard event files under ``logdir`` (tensorboardX, no TensorFlow)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter
    self._w = SummaryWriter(logdir)

  def write(self, step, split, metrics):
    for k, v in metrics.items():
      if isinstance(v, (int, float)):
        self._w.add_scalar(f'{split}/{k}', v, step)
    self._w.flush()

  def close(self):
    self._w.close()


class ConsoleWriter:
  """Progress on the console: metrics, steps/s, examples/s and ETA."""

  def __init__(self, total_steps: int, batch_size: int, clock=time.monotonic):
    self.total, self.batch_size, self.clock = total_steps, batch_size, clock
    self._last = None  # (step, time)

  def write(self, step, split, metrics):
    text = ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                    for k, v in metrics.items())
    now = self.clock()
    if split == 'train' and self._last and step > self._last[0]:
      rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
      eta = (self.total - step) / rate
      text += (f' | {rate:.2f} steps/s {rate * self.batch_size:.0f} ex/s '
               f'ETA {time.strftime("%H:%M:%S", time.gmtime(eta))}')
    if split == 'train':
      self._last = (step, now)
    logging.info('[%d/%d] %s %s', step, self.total, split, text)

  def close(self):
    pass


class MultiWriter:

  def __init__(self, writers):
    self.writers = list(writers)

  def write(self, step, split, metrics):
    for w in self.writers:
      w.write(step, split, metrics)

  def close(self):
    for w in self.writers:
      w.close()


def default_writer(workdir: str, total_steps: int, batch_size: int,
                   is_writer_process: bool) -> Writer:
  """JSONL + TensorBoard + console on process 0; nothing elsewhere."""
  if not is_writer_process:
    return MultiWriter([])
  os.makedirs(workdir, exist_ok=True)
  return MultiWriter([
      JsonlWriter(os.path.join(workdir, 'metrics.jsonl')),
      TensorBoardWriter(os.path.join(workdir, 'tensorboard')),
      ConsoleWriter(total_steps, batch_size),
  ])


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
  """metrics.jsonl as dicts, one per (step, split), the last written winning."""
  lines = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path, encoding='utf-8') as f:
    for number, raw in enumerate(f, 1):
      if not raw.endswith('\n'):
        break  # a partial last line (a crash mid-write): never complete
      if raw.strip():
        try:
          line = json.loads(raw)
        except ValueError as e:
          raise ValueError(f'{path}:{number} is not JSON ({e})') from None
        lines[(line['step'], line['split'])] = line
  out = sorted(lines.values(), key=lambda l: (l['step'], l['split']))
  return [l for l in out if split is None or l['split'] == split]
