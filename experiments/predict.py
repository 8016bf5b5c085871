r"""Top-k labels for images or texts, from a trained run or pretrained weights.

    python -m experiments.predict --model=mobilenet_v2 \
        --init_from=torch:PATH/mobilenet_v2-b0353104.pth china.jpg
    python -m experiments.predict --workdir=runs/finetune_x --json a.png b.png
    python -m experiments.predict --workdir=runs/minilm --json \
        --text="A delight." --text="A tedious mess."

The tool, its preprocessing, flags and output: ``dlresearch/tools/predict.py``
(``--help``).
"""

from dlresearch.tools import entry, predict

if __name__ == '__main__':
  entry.main(predict)
