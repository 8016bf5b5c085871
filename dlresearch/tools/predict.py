r"""Top-k labels for images or texts, from a trained run or pretrained weights.

    python -m experiments.predict --model=mobilenet_v2 \
        --init_from=torch:PATH/mobilenet_v2-b0353104.pth china.jpg
    python -m experiments.predict --workdir=runs/finetune_x --json a.png b.png
    python -m experiments.predict --workdir=runs/minilm --json \
        --text="A delight." --text="A tedious mess."

Each image goes through the model's own eval preprocessing: for converted
ImageNet weights torchvision's (shorter side 256, centre crop 224, ImageNet
mean/std; class names from the file fetched with the weights); for a run,
what its eval split got (grey or colour as the dataset stores it, resize and
centre crop to ``--image_size``, channels repeated to ``--image_channels``,
``--normalize``; class names from the dataset). Texts need a text
classifier: the ``--workdir`` of ``experiments.text_classify`` or of a
fine-tune of data kind ``hf_text_classification`` (``experiments.finetune
--preset=minilm_rotten_tomatoes``), tokenised as that run was trained, by
the tokenizer saved in its workdir (``hf_tokenizer.json`` for a fine-tune)
and cut or padded to its ``--max_len``; or ``--model`` with
``--init_from=hf:DIR`` of a BERT-family classifier and its
``tokenizer.json``. ``--text`` repeats (an absl multi-string flag): one
result per ``--text``, in the order given; a comma is part of the text.
Without ``--json`` each input gets one line, ``NAME: label p, label p,
...``. ``--json`` prints exactly one object per input, one per line::

  {"image": PATH, "top_k": [{"label": STR, "index": INT, "probability": FLOAT}, ...]}

(``"text"`` in place of ``"image"`` for texts). A bad input ends with one
line on stderr and exit status 2; nothing is written. Restoring and
preprocessing: ``dlresearch/tools/inference.py``.
"""

import dataclasses
import json
import os

from dlresearch.tools import entry

PROG = 'python -m experiments.predict'


@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m experiments.predict``'s flags."""

  paths: tuple[str, ...] = entry.option((), 'Image files.', positional='*')
  workdir: str = entry.option('', 'A trained run to predict with.')
  model: str = entry.option('', 'Registered model for --init_from.')
  init_from: str = entry.option('', 'Converted weights: torch:PATH, '
                                'safetensors:PATH or hf:DIR (with --model).')
  top_k: int = entry.option(5, 'Labels shown per input (>= 1).')
  json: bool = entry.option(False, 'One JSON object per input.')
  text: tuple[str, ...] = entry.option((), 'A text to classify with a text '
                                       'classifier --workdir (one result per '
                                       '--text, in order).')

  def __post_init__(self):
    if self.top_k < 1:
      raise ValueError(f'--top_k must be >= 1 (got {self.top_k})')
    if bool(self.workdir) == bool(self.init_from or self.model):
      raise ValueError('give --workdir=RUN, or --model=M with --init_from=SPEC')
    if bool(self.paths) == bool(self.text):
      raise ValueError('give image paths or --text (one of the two)')
    if not self.workdir and not (self.model and self.init_from):
      raise ValueError('--model and --init_from go together')
    for name in self.paths:
      if not os.path.isfile(name):
        raise ValueError(f'{name}: no such image file')


def _print(options, kind, name, probs, labels):
  import numpy as np  # pylint: disable=g-import-not-at-top
  order = np.argsort(-probs, kind='stable')[:options.top_k]
  top = [{'label': labels[i] if labels else str(int(i)), 'index': int(i),
          'probability': float(probs[i])} for i in order]
  if options.json:
    print(json.dumps({kind: name, 'top_k': top}), flush=True)
  else:
    shown = ', '.join(f'{t["label"]} {t["probability"]:.3f}' for t in top)
    print(f'{name}: {shown}', flush=True)


def main(options: Options) -> None:
  """Top-k labels of every input, one line (or JSON object) each."""
  from dlresearch.tools import inference  # pylint: disable=g-import-not-at-top
  if options.workdir:
    predictor = inference.from_workdir(options.workdir)
  else:
    predictor = inference.from_weights(options.model, options.init_from)
  if options.paths:
    probs, kind = predictor.images(list(options.paths)), 'image'
  else:
    probs, kind = predictor.texts(list(options.text)), 'text'
  for name, p in zip(options.paths or options.text, probs):
    _print(options, kind, name, p, predictor.labels)
