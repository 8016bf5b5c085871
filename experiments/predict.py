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
line on stderr and exit status 2; nothing is written.
"""

import json
import os
import sys

from absl import app, flags

flags.DEFINE_string('workdir', None, 'A trained run to predict with.')
flags.DEFINE_string('model', None, 'Registered model for --init_from.')
flags.DEFINE_string('init_from', None, 'Converted weights: torch:PATH, '
                    'safetensors:PATH or hf:DIR (with --model).')
flags.DEFINE_integer('top_k', 5, 'Labels shown per input (>= 1).')
flags.DEFINE_bool('json', False, 'One JSON object per input.')
flags.DEFINE_multi_string('text', [], 'A text to classify with a text '
                          'classifier --workdir (repeatable: one result per '
                          '--text, in order).')
FLAGS = flags.FLAGS


def _print(kind, name, probs, labels, k):
  import numpy as np  # pylint: disable=g-import-not-at-top
  order = np.argsort(-probs, kind='stable')[:k]
  top = [{'label': labels[i] if labels else str(int(i)), 'index': int(i),
          'probability': float(probs[i])} for i in order]
  if FLAGS.json:
    print(json.dumps({kind: name, 'top_k': top}), flush=True)
  else:
    shown = ', '.join(f'{t["label"]} {t["probability"]:.3f}' for t in top)
    print(f'{name}: {shown}', flush=True)


def main(argv):
  from dlresearch import inference as predict  # pylint: disable=g-import-not-at-top
  paths = argv[1:]
  try:
    if FLAGS.top_k < 1:
      raise ValueError(f'--top_k must be >= 1 (got {FLAGS.top_k})')
    if bool(FLAGS.workdir) == bool(FLAGS.init_from or FLAGS.model):
      raise ValueError('give --workdir=RUN, or --model=M with --init_from=SPEC')
    if bool(paths) == bool(FLAGS.text):
      raise ValueError('give image paths or --text (one of the two)')
    if FLAGS.workdir:
      predictor = predict.from_workdir(FLAGS.workdir)
    else:
      if not FLAGS.model or not FLAGS.init_from:
        raise ValueError('--model and --init_from go together')
      predictor = predict.from_weights(FLAGS.model, FLAGS.init_from)
    inputs = paths or FLAGS.text
    for name in inputs:
      if paths and not os.path.isfile(name):
        raise ValueError(f'{name}: no such image file')
    probs = (predictor.images(paths) if paths else predictor.texts(FLAGS.text))
  except (ValueError, OSError, KeyError) as e:
    print(f'error: {str(e).splitlines()[0] if str(e) else type(e).__name__}',
          file=sys.stderr, flush=True)
    sys.exit(2)
  kind = 'image' if paths else 'text'
  for name, p in zip(inputs, probs):
    _print(kind, name, p, predictor.labels, FLAGS.top_k)


if __name__ == '__main__':
  app.run(main)
