"""Metric writers behind one small protocol: ``write(step, split, metrics)``.

``WORKDIR/metrics.jsonl`` holds one JSON object per logged step, each line
flushed as written: ``{"step": int, "split": "train"|"eval", ...}``. A
restarted run appends to it; a partial last line (a crash mid-write) is
dropped first. Steps between the last checkpoint and a crash are logged again
after the resume; ``read_metrics`` keeps the last line per (step, split).
The engine's lines carry ``time``: seconds of the run so far, continuing
across restarts (a resumed run starts from the last logged ``time``).

The console shows a progress bar (tqdm: steps/s, examples/s, loss, ETA) in a
terminal or a notebook, and plain lines otherwise (CI, files): ``progress``
of ``default_writer``.
"""

import json
import math
import os
import re
import sys
import time
from typing import Callable, Mapping, Protocol

from absl import flags
from absl import logging


class QuietLibraries:
  """A logging filter: drops orbax's routine INFO/WARNING lines (and the INFO
  of tfds, grain and jax's backend probing, e.g. "Unable to initialize
  backend 'tpu'"); errors, and everyone else's warnings, still show."""

  NOISY = ('/orbax/', '/tensorflow_datasets/', '/grain/', '/jax/_src/')

  def filter(self, record):
    path = record.pathname
    if '/orbax/' in path:
      return record.levelno >= 40
    return record.levelno >= 30 or not any(n in path for n in self.NOISY)


_QUIET = QuietLibraries()


def quiet_libraries() -> None:
  """Installs ``QuietLibraries`` on absl's logger and handler (idempotent)."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  for target in (std_logging.getLogger('absl'), logging.get_absl_handler()):
    if _QUIET not in target.filters:
      target.addFilter(_QUIET)


class WindowMean:
  """Sums a step's metrics on device; ``pop()`` gives their window mean.

  Train lines report the mean over the steps since the last line, not one
  batch; summing stays on device (no host sync per step). ``metrics`` is a
  flat dict of arrays (jax or NumPy; this module imports no jax). The sums
  ride in each checkpoint (``state_dict``/``load_state_dict``: float32 sums
  are exact as JSON numbers), so a run stopped between two log steps and
  resumed writes the same train lines as one never stopped.
  """

  def __init__(self):
    self._sum, self._count, self._saved = None, 0, None

  def add(self, metrics) -> None:
    if self._sum is None and self._saved:  # resumed mid-window
      saved, self._saved = self._saved, None
      metrics = {k: v.dtype.type(saved[k]) + v for k, v in metrics.items()}
    self._sum = metrics if self._sum is None else {
        k: self._sum[k] + v for k, v in metrics.items()}
    self._count += 1

  def pop(self):
    out = {k: v / self._count for k, v in self._sum.items()}
    self._sum, self._count = None, 0
    return out

  def state_dict(self, host) -> dict:
    """The sums so far as floats (``host`` fetches them) and their count."""
    if not self._count:
      return {}
    return {'count': self._count,
            'sums': {k: float(v) for k, v in host(self._sum).items()}}

  def load_state_dict(self, state: dict) -> None:
    self._sum, self._saved = None, None
    self._count = int(state.get('count', 0))
    if self._count:
      self._saved = state['sums']


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

  With a ``clock`` (e.g. ``time.monotonic``) every line gets ``time``: the
  seconds since this writer opened plus the ``time`` of the file's last
  line, so wall time continues across restarts (time spent down is not
  counted).
  """

  def __init__(self, path: str, clock: Callable[[], float] | None = None):
    self.path, self.clock = path, clock
    offset = 0.0
    if os.path.exists(path):
      with open(path, 'rb+') as f:
        data = f.read()
        if data and not data.endswith(b'\n'):
          data = data[:data.rfind(b'\n') + 1]
          f.truncate(len(data))  # drop a partial last line
      offset = _last_time(data)
    self._offset = offset
    self._start = clock() if clock else None
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    self._size = os.fstat(self._fd).st_size

  def write(self, step, split, metrics):
    line = {'step': int(step), 'split': split}
    if self.clock is not None and 'time' not in metrics:
      line['time'] = round(self._offset + self.clock() - self._start, 3)
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


def _last_time(data: bytes) -> float:
  """The largest ``time`` among the last lines of a metrics file (0 if none)."""
  for raw in reversed(data.splitlines()[-50:]):
    try:
      value = json.loads(raw).get('time')
    except (ValueError, AttributeError):
      continue
    if isinstance(value, (int, float)):
      return float(value)
  return 0.0


class TensorBoardWriter:
  """TensorBoard event files under ``logdir`` (tensorboardX, no TensorFlow).

  Tags are ``split/key`` with characters TensorBoard does not allow in a tag
  replaced by ``_`` here (``group/sex=Female/accuracy`` ->
  ``eval/group/sex_Female/accuracy``), as tensorboardX would, but without its
  INFO line per key and step; metrics.jsonl keeps the keys as they are.
  """

  _NOT_IN_TAG = re.compile(r'[^-/\w.]')

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter
    self._w = SummaryWriter(logdir)

  def write(self, step, split, metrics):
    for k, v in metrics.items():
      if isinstance(v, (int, float)):
        self._w.add_scalar(self._NOT_IN_TAG.sub('_', f'{split}/{k}'), v, step)
    self._w.flush()

  def close(self):
    self._w.close()


def _emit_line(text: str) -> None:
  """absl INFO under an absl app (the CLI); stderr otherwise (scripts)."""
  if flags.FLAGS.is_parsed():
    logging.info('%s', text)
  else:
    print(text, file=sys.stderr, flush=True)


def _format(metrics: Mapping) -> str:
  return ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                  for k, v in metrics.items() if k != 'time')


class ConsoleWriter:
  """Progress as log lines: metrics, steps/s, examples/s and ETA."""

  def __init__(self, total_steps: int, batch_size: int, clock=time.monotonic,
               emit: Callable[[str], None] | None = None):
    self.total, self.batch_size, self.clock = total_steps, batch_size, clock
    self.emit = emit or (lambda text: logging.info('%s', text))
    self._last = None  # (step, time)

  def write(self, step, split, metrics):
    text = _format(metrics)
    now = self.clock()
    if split == 'train' and self._last and step > self._last[0]:
      rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
      eta = (self.total - step) / rate
      text += (f' | {rate:.2f} steps/s {rate * self.batch_size:.0f} ex/s '
               f'ETA {time.strftime("%H:%M:%S", time.gmtime(eta))}')
    if split == 'train':
      self._last = (step, now)
    self.emit(f'[{step}/{self.total}] {split} {text}')

  def close(self):
    pass


class ProgressBar:
  """A tqdm bar (terminal or notebook): steps/s, ETA, loss and examples/s.

  Train lines move the bar; eval lines are printed above it. The bar is
  drawn at the first line, not when made: what prints before (the model
  summary, at the start of training) keeps its own lines.
  """

  def __init__(self, total_steps: int, batch_size: int, start_step: int = 0,
               file=None):
    self.batch_size, self.clock = batch_size, time.monotonic
    self._last = None  # (step, time) of the previous train line
    self._args = dict(total=total_steps, initial=start_step, unit='step',
                      dynamic_ncols=True, file=file or sys.stderr,
                      smoothing=0.3)
    self._made = None

  @property
  def _bar(self):
    if self._made is None:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self._made = tqdm(**self._args)
    return self._made

  def write(self, step, split, metrics):
    if split != 'train':
      self._bar.write(f'[{step}/{self._bar.total}] {split} {_format(metrics)}',
                      file=self._bar.fp)
      return
    self._bar.update(max(step - self._bar.n, 0))
    now = self.clock()
    post = [f'{k}={metrics[k]:.4g}' for k in ('loss', 'accuracy')
            if isinstance(metrics.get(k), float)]
    if self._last and step > self._last[0]:
      rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
      post.append(f'{rate * self.batch_size:.0f} ex/s')
    self._last = (step, now)
    self._bar.set_postfix_str(' '.join(post), refresh=True)

  def close(self):
    if self._made is not None:
      self._made.close()


def in_notebook() -> bool:
  """True inside a Jupyter kernel."""
  if 'IPython' not in sys.modules:
    return False
  try:
    from IPython import get_ipython  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  shell = get_ipython()
  return shell is not None and type(shell).__name__ == 'ZMQInteractiveShell'


def console_writer(progress: str, total_steps: int, batch_size: int,
                   start_step: int = 0) -> Writer | None:
  """The console part of ``default_writer`` for ``--progress``."""
  if progress == 'auto':
    tty = getattr(sys.stderr, 'isatty', lambda: False)()
    progress = 'bar' if tty or in_notebook() else 'lines'
  if progress == 'bar':
    return ProgressBar(total_steps, batch_size, start_step)
  if progress == 'lines':
    return ConsoleWriter(total_steps, batch_size, emit=_emit_line)
  return None


def _plural(unit: str, count: int | None = None) -> str:
  if count == 1:
    return unit
  return unit + ('es' if unit.endswith(('ch', 'sh', 's', 'x')) else 's')


class Phase:
  """A long step outside the train loop, shown as training is shown.

  ``with Phase('fitting gradient boosting', 100, 'iteration') as p: ...
  p.update(10)`` says first what it does and how big (one line), then
  shows progress as the train loop does (``console_writer``'s choice for
  ``progress``): a tqdm bar in a terminal or a notebook, otherwise a line
  at most every ``every_s`` seconds (done/total, rate, ETA); it ends with
  one line saying how long it took. ``progress='none'`` prints nothing.
  ``total`` may be None (unknown size: no bar, only the first and last
  lines and the count so far).
  """

  def __init__(self, what: str, total: int | None = None, unit: str = 'item',
               *, detail: str = '', progress: str = 'auto',
               every_s: float = 10.0, clock=time.monotonic,
               emit: Callable[[str], None] | None = None):
    if progress == 'auto':
      tty = getattr(sys.stderr, 'isatty', lambda: False)()
      progress = 'bar' if (tty or in_notebook()) and total else 'lines'
    self.what, self.total, self.unit, self.detail = what, total, unit, detail
    self.progress, self.every_s, self.clock = progress, every_s, clock
    self.emit = emit or _emit_line
    self.done, self._bar = 0, None
    self._start = self._last = None

  def _size(self) -> str:
    if self.total is None:
      return ''
    return f'{self.total:,} {_plural(self.unit, self.total)}'

  def __enter__(self) -> 'Phase':
    self._start = self._last = self.clock()
    if self.progress == 'none':
      return self
    size = ', '.join(t for t in (self._size(), self.detail) if t)
    self.emit(f'{self.what}{f" ({size})" if size else ""} ...')
    if self.progress == 'bar':
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=self.total, unit=self.unit, desc=self.what,
                       dynamic_ncols=True, file=sys.stderr, leave=False)
    return self

  def update(self, n: int = 1) -> None:
    self.done += n
    if self._bar is not None:
      self._bar.update(n)
      return
    now = self.clock()
    if self.progress != 'lines' or now - self._last < self.every_s:
      return
    self._last = now
    rate = self.done / max(now - self._start, 1e-9)
    text = f'{self.what}: {self.done:,}'
    if self.total:
      eta = (self.total - self.done) / max(rate, 1e-9)
      text += (f'/{self.total:,} {_plural(self.unit)} '
               f'({100 * self.done / self.total:.0f}%), '
               f'ETA {time.strftime("%H:%M:%S", time.gmtime(eta))}')
    else:
      text += f' {_plural(self.unit)}'
    self.emit(f'{text}, {rate:.3g} {_plural(self.unit)}/s')

  def __exit__(self, kind, value, traceback) -> None:
    if self._bar is not None:
      self._bar.close()
    if self.progress == 'none' or kind is not None:
      return
    count = f'{self.done:,} {_plural(self.unit, self.done)} ' if self.done else ''
    self.emit(f'{self.what}: done, {count}in {self.clock() - self._start:.1f} s')


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
                   is_writer_process: bool, *, progress: str = 'lines',
                   start_step: int = 0) -> Writer:
  """JSONL (with ``time``) + TensorBoard + console on process 0; nothing
  elsewhere. ``progress``: 'auto', 'bar', 'lines' or 'none'."""
  if not is_writer_process:
    return MultiWriter([])
  os.makedirs(workdir, exist_ok=True)
  console = console_writer(progress, total_steps, batch_size, start_step)
  return MultiWriter([
      JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), clock=time.monotonic),
      TensorBoardWriter(os.path.join(workdir, 'tensorboard')),
      *([console] if console else []),
  ])


class MetricsFollower:
  """``metrics.jsonl`` read as it grows: ``new_lines()`` returns the complete
  lines written since the last call (a partial last line waits for its
  newline; a line that is not a ``{step, split, ...}`` object is skipped).
  For readers beside a running writer: a tracker, a sweep watching a trial.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._offset = 0

  def new_lines(self) -> list[dict]:
    try:
      with open(self.path, 'rb') as f:
        f.seek(self._offset)
        data = f.read()
    except OSError:
      return []  # not written yet
    data = data[:data.rfind(b'\n') + 1]
    self._offset += len(data)
    out = []
    for raw in data.splitlines():
      try:
        line = json.loads(raw)
      except ValueError:
        continue
      if isinstance(line, dict) and 'step' in line and 'split' in line:
        out.append(line)
    return out


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
