"""See what the model sees: a grid of augmented training examples, labelled.

    python -m dlresearch.tools.show --experiment=cnn_imagenet \\
        --preset=quickstart --set=augment=pad_crop_flip --out=grid.png
    python -m dlresearch.tools.show --preset=resnet50_imagenet --tiny \\
        --dataset=image_folder:$HOME/pictures --out=grid.png

Builds the data exactly as ``python -m experiments.EXPERIMENT --preset=...``
would (the preset, ``--tiny``'s overrides, then ``--dataset``,
``--data_dir``, ``--manual_dir`` and any ``--set=field=value``), takes the
global training batch at ``--step`` as the train loop gets it (decoded,
augmented with its (seed, step, position) randomness, normalised) and draws
its first ``--num`` examples with their labels: a class name, or for soft
labels (mixed examples) the two largest weights, ``0.70 cat + 0.30 dog``.
Each image is rescaled to its own min..max for display, so any
normalisation shows. The PNG is ``CELL`` pixels per example (a grid of
ceil(sqrt(num)) columns). Bad input (an unknown experiment, preset or
field, data that is not prepared, a kind without images) is one line
``error: ...`` and exit status 2, and nothing is written.
"""

import dataclasses
import importlib
import math
import os
import pkgutil
import textwrap

import numpy as np

from dlresearch import config as config_lib
from dlresearch import problems
from dlresearch.data import pipeline
from dlresearch.tools import entry

PROG = 'python -m dlresearch.tools.show'
CELL = 160  # pixels per example in the grid
_DPI = 100


@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m dlresearch.tools.show``'s flags."""

  out: str = entry.option(help='PNG file to write', required=True)
  preset: str = entry.option(help="the experiment's preset", required=True)
  experiment: str = entry.option('cnn_imagenet', 'experiments/NAME.py whose '
                                 'presets to read (e.g. vit_imagenet)')
  tiny: bool = entry.option(False, "the preset's tiny (CI) form")
  dataset: str = entry.option('', "--dataset (default: the preset's)")
  data_dir: str = entry.option('', "--data_dir (default: the preset's)")
  manual_dir: str = entry.option('', "--manual_dir (default: the preset's)")
  set: tuple[str, ...] = entry.option((), 'FIELD=VALUE: any other config '
                                      'field, as its flag takes it')
  step: int = entry.option(0, 'the training step whose batch to show (>= 0)')
  num: int = entry.option(16, 'examples to draw (>= 1)')

  def __post_init__(self):
    entry.at_least(self, 'step', 0)
    entry.at_least(self, 'num', 1)


def _experiments() -> list[str]:
  import experiments  # pylint: disable=g-import-not-at-top
  return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__))


def resolve(options: Options) -> config_lib.Config:
  """The config the experiment's command would train with."""
  if options.experiment not in _experiments():
    raise ValueError(f'--experiment: no experiments/{options.experiment}.py; '
                     f'known: {", ".join(_experiments())}')
  module = importlib.import_module(f'experiments.{options.experiment}')
  presets = getattr(module, 'PRESETS', {})
  if options.preset not in presets:
    raise ValueError(f'--preset: {options.experiment} has no preset '
                     f'{options.preset!r}; its presets: '
                     f'{", ".join(presets) or "none"}')
  preset = presets[options.preset]
  overrides = dict(preset.tiny) if options.tiny else {}
  for name in ('dataset', 'data_dir', 'manual_dir'):
    if getattr(options, name):
      overrides[name] = getattr(options, name)
  for item in options.set:
    name, eq, text = item.partition('=')
    if not eq or name not in config_lib.field_types():
      raise ValueError(f'--set: expected FIELD=VALUE with a config field, '
                       f'got {item!r}')
    overrides[name] = config_lib.parse_value(name, text)
  return config_lib.override(preset.config.replace(preset=options.preset),
                             overrides)


def _label(value, names) -> str:
  def name(i):
    return names[i] if names and i < len(names) else str(i)
  value = np.asarray(value)
  if value.ndim == 0:
    return name(int(value))
  top = np.argsort(-value)[:2]  # soft labels: the two largest weights
  return ' + '.join(f'{value[i]:.2f} {name(int(i))}' for i in top
                    if value[i] > 0)


def _display(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float32)
  low, high = image.min(), image.max()
  image = (image - low) / (high - low) if high > low else image * 0
  return image[..., 0] if image.shape[-1] != 3 else image


def draw(images: np.ndarray, labels: list[str], out: str, title: str) -> str:
  """The grid of ``images`` [N, H, W, C] titled by ``labels``, as a PNG."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  n = len(images)
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  fig = Figure(figsize=(cols * CELL / _DPI, rows * CELL / _DPI), dpi=_DPI)
  FigureCanvasAgg(fig)
  fig.suptitle(textwrap.fill(title, max(30, cols * CELL // 7)),
               fontsize='x-small')
  for i, ax in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
    ax.axis('off')
    if i < n:
      ax.imshow(_display(images[i]), cmap='gray', interpolation='nearest')
      ax.set_title(labels[i], fontsize='x-small')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=_DPI, format='png')
  return out


def main(options: Options) -> None:
  """Draws the grid, prints the PNG's path."""
  cfg = resolve(options)
  data = problems.build(cfg, workdir='', fresh=True)
  key = getattr(data.task, 'input_key', None)
  label_key = getattr(data.task, 'label_key', None)
  batch = pipeline.TrainIterator(data.train, cfg.batch_size,
                                 cfg.seed).batch_at(options.step)
  images = batch.get(key) if key else None
  if images is None or np.ndim(images) != 4 or label_key not in batch:
    raise ValueError(f'--preset={options.preset}: {cfg.dataset} gives no '
                     'labelled images (inputs of shape '
                     f'{np.shape(images)}); show draws image classification')
  count = min(options.num, len(images))
  labels = [_label(v, data.label_names) for v in batch[label_key][:count]]
  title = (f'{options.experiment} --preset={options.preset}'
           f'{" --tiny" if options.tiny else ""}: {cfg.dataset}, step '
           f'{options.step}, augment={cfg.augment}')
  print(draw(np.asarray(images[:count]), labels, options.out, title))


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  entry.main(sys.modules[__name__])
