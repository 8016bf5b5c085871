"""The MNIST-1D table: every model x seed, summary.json, table.md, chart.png.

Run through the experiment (``python -m experiments.mnist1d --model=all``);
``main`` is what ``--model=all`` calls. Each run trains in its own workdir,
``WORKDIR/<name>/seed_<s>`` (``<name>`` is the model, or ``<model>_shuffled``
for the ``--shuffle_spatial`` variant), and leaves ``result.json`` there: the
final-step test accuracy and the run's wall time. Rerunning the table reuses
a run whose ``result.json`` was written with the same config, so an
interrupted table continues where it stopped.

Wall time is per run, in-process: data loading from the prepared TFDS files,
compilation, training and the final evaluation; not Python/JAX start-up.
The std over seeds is the sample standard deviation (ddof=1).
"""

import datetime
import json
import os
import platform
import sys
import time
from typing import Callable, Sequence

import numpy as np

from dlresearch import config as config_lib
from dlresearch.config import Config, ConfigError

# Published test accuracies (Greydanus & Kobak 2024, and the mnist1d README).
PUBLISHED = {'logreg': 0.32, 'mlp': 0.68, 'cnn': 0.94, 'gru': 0.91,
             'mlp_shuffled': 0.68, 'cnn_shuffled': 0.56}

RunOne = Callable[[Config, str, bool], dict]


def cpu_model() -> str:
  """The CPU model name (from /proc/cpuinfo where there is one)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def hardware() -> dict:
  """Where the table ran (CPU model, cores usable, JAX devices)."""
  import jax
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return {'cpu': cpu_model(), 'cores': cores, 'platform': jax.devices()[0].platform,
          'device_count': jax.device_count(), 'jax': jax.__version__,
          'python': platform.python_version()}


def param_count(cfg: Config) -> int:
  """Parameters of ``cfg.model`` for 10 classes (abstract init, no compute)."""
  import jax
  import jax.numpy as jnp
  from dlresearch.models import registry
  model = registry.build(cfg.model, num_classes=10, **cfg.model_kwargs)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 1))))['params']
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def _run_cached(cfg: Config, rundir: str, shuffle: bool, run_one: RunOne) -> dict:
  path = os.path.join(rundir, 'result.json')
  # The config flat, as result.json files written before the sections hold it.
  key = {'config': config_lib.flatten(config_lib.to_json(cfg)),
         'shuffle_spatial': shuffle}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
    if all(saved.get(k) == v for k, v in key.items()):
      return saved
  start = time.perf_counter()
  result = run_one(cfg, rundir, shuffle)
  if result.get('preempted'):
    raise KeyboardInterrupt(f'preempted at step {result["step"]} in {rundir}')
  record = {**key, 'step': result['step'], 'accuracy': float(result['accuracy']),
            'loss': float(result['loss']),
            'wall_s': time.perf_counter() - start}
  os.makedirs(rundir, exist_ok=True)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=1)
  os.replace(path + '.tmp', path)
  return record


def setup(cfg: Config) -> str:
  """The optimisation recipe in a few words, e.g. 'adamw lr 0.01 wd 0.05, step'."""
  text = f'{cfg.optimizer} lr {cfg.learning_rate:g}'
  if cfg.weight_decay:
    text += f' wd {cfg.weight_decay:g}'
  if cfg.schedule == 'step':
    text += ', ' + ', '.join(f'x{cfg.step_decay:g} at {b:.0%}' for b in cfg.step_boundaries)
  elif cfg.schedule != 'constant':
    text += f', {cfg.schedule}'
  if cfg.warmup_steps:
    text += f', warmup {cfg.warmup_steps}'
  return text


def run_table(entries: Sequence[tuple[str, Config, bool]], seeds: Sequence[int],
              workdir: str, run_one: RunOne) -> dict:
  """Runs ``(name, config, shuffle)`` x ``seeds``; returns the summary dict."""
  rows = {}
  for name, cfg, shuffle in entries:
    records = []
    for seed in seeds:
      rec = _run_cached(cfg.replace(seed=seed), os.path.join(workdir, name, f'seed_{seed}'),
                        shuffle, run_one)
      print(f'[mnist1d table] {name} seed {seed}: accuracy {rec["accuracy"]:.4f} '
            f'({rec["wall_s"]:.1f} s)', flush=True)
      records.append(rec)
    acc = np.array([r['accuracy'] for r in records])
    wall = np.array([r['wall_s'] for r in records])
    published = PUBLISHED.get(name)
    rows[name] = {
        'model': cfg.model, 'shuffle_spatial': shuffle, 'params': param_count(cfg),
        'num_steps': cfg.num_steps, 'batch_size': cfg.batch_size, 'setup': setup(cfg),
        'seeds': list(seeds), 'accuracies': acc.tolist(), 'mean': float(acc.mean()),
        'std': float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
        'min': float(acc.min()), 'max': float(acc.max()), 'published': published,
        # The shuffled variant's published number is a drop to reproduce, not a bar.
        'meets_published': (None if published is None or shuffle
                            else bool(acc.mean() >= published)),
        'wall_s': wall.tolist(), 'wall_s_mean': float(wall.mean()),
    }
  return {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'command': ' '.join(['python -m experiments.mnist1d'] + sys.argv[1:]),
          'hardware': hardware(), 'load_average_at_end': list(os.getloadavg()),
          'metric': 'test accuracy at the final step (not the best over training)',
          'models': rows}


def markdown(summary: dict) -> str:
  """The README table."""
  lines = ['| model | params | setup | steps | test accuracy (ours, mean ± std) | '
           'per seed | published | wall per run |',
           '|---|---:|---|---:|---:|---|---:|---:|']
  for name, r in summary['models'].items():
    pub = '—' if r['published'] is None else f'{100 * r["published"]:.0f}%'
    seeds = ', '.join(f'{100 * a:.1f}' for a in r['accuracies'])
    lines.append(
        f'| {name} | {r["params"]:,} | {r["setup"]} | {r["num_steps"]} | '
        f'{100 * r["mean"]:.1f} ± {100 * r["std"]:.1f}% (n={len(r["seeds"])}) | '
        f'{seeds} | {pub} | {r["wall_s_mean"]:.0f} s |')
  return '\n'.join(lines) + '\n'


def chart(summary: dict, path: str) -> None:
  """Bar chart of ours (mean ± std, seeds as dots) vs the published numbers."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = list(summary['models'])
  rows = [summary['models'][n] for n in names]
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6), dpi=90)
  ours = [100 * r['mean'] for r in rows]
  ax.bar(x - 0.2, ours, 0.4, yerr=[100 * r['std'] for r in rows], capsize=3,
         color='tab:blue', label='ours (mean ± std)')
  for i, r in enumerate(rows):
    ax.plot([x[i] - 0.2] * len(r['accuracies']), [100 * a for a in r['accuracies']],
            'k.', ms=3)
    ax.text(x[i] - 0.2, ours[i] + 2, f'{ours[i]:.1f}', ha='center', fontsize=7)
    if r['published'] is not None:
      ax.bar(x[i] + 0.2, 100 * r['published'], 0.4, color='tab:gray',
             label='published' if i == next(j for j, q in enumerate(rows)
                                            if q['published'] is not None) else None)
      ax.text(x[i] + 0.2, 100 * r['published'] + 2, f'{100 * r["published"]:.0f}',
              ha='center', fontsize=7)
    else:
      ax.text(x[i] + 0.2, 2, 'not in\npaper', ha='center', fontsize=6, color='gray')
  ax.set_xticks(x, [n.replace('_shuffled', '\nshuffled') for n in names], fontsize=8)
  ax.set_ylabel('test accuracy (%)')
  ax.set_ylim(0, 105)
  ax.set_title('MNIST-1D: final-step test accuracy', fontsize=10)
  ax.legend(fontsize=7, loc='upper left')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(presets: dict, models: Sequence[str], seeds: Sequence[str],
         shuffled_models: Sequence[str], workdir: str, overrides: dict, tiny: bool,
         run_one: RunOne) -> dict:
  """``--model=all``: builds the entries from the presets and flags, runs them.

  Writes ``summary.json``, ``table.md`` and ``chart.png`` to ``workdir`` and
  returns the mean accuracies (plus ``step='all'``) for the console line.
  """
  for flag, names in (('models', models), ('shuffled_models', shuffled_models)):
    unknown = [n for n in names if n not in presets]
    if unknown:
      raise ConfigError(flag, f'unknown model(s) {", ".join(unknown)}; choose from '
                        f'{", ".join(presets)}')
  if not models and not shuffled_models:
    raise ConfigError('models', 'no models to run')
  try:
    seed_values = [int(s) for s in seeds]
  except ValueError:
    raise ConfigError('seeds', f'expected integers, got {",".join(seeds)}') from None
  if not seed_values:
    raise ConfigError('seeds', 'give at least one seed, e.g. --seeds=0,1,2')
  overrides = {k: v for k, v in overrides.items() if k != 'model'}
  if 'seed' in overrides:
    raise ConfigError('seed', 'with --model=all the seeds come from --seeds')

  def config(name):
    preset = presets[name]
    return config_lib.override(preset.config,
                               {**(preset.tiny if tiny else {}), **overrides})

  entries = ([(n, config(n), False) for n in models]
             + [(f'{n}_shuffled', config(n), True) for n in shuffled_models])
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  summary = run_table(entries, seed_values, workdir, run_one)
  with open(os.path.join(workdir, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1)
  table = markdown(summary)
  with open(os.path.join(workdir, 'table.md'), 'w', encoding='utf-8') as f:
    f.write(table)
  chart(summary, os.path.join(workdir, 'chart.png'))
  print(table, flush=True)
  print(f'wrote {workdir}/summary.json, table.md, chart.png', flush=True)
  return {'step': 'all', **{n: r['mean'] for n, r in summary['models'].items()}}
