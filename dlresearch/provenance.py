"""``WORKDIR/config.json``: the config and how the run was started.

Besides the config, the record keeps what is needed to replay and to
rebuild the model without the data (``data_model_kwargs``), the command
line, the git commit (and whether the tree was dirty), library versions and
the devices. ``--config=WORKDIR/config.json`` replays it.
"""

import json
import os
import shlex
import subprocess
import sys
from importlib import metadata

import jax

from dlresearch import config as config_lib
from dlresearch.config import Config


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
