r"""Chest X-rays, honestly: few-shot transfer from ImageNet, with error bars.

    python -m dlresearch.data.fetch xray                    # once: 16 images
    python -m dlresearch.data.fetch mobilenet_v2_imagenet   # once: weights
    python -m experiments.xray --workdir=runs/xray

A tool, not a training run: the demo, its flags and its measured result are
``dlresearch/tools/xray.py`` (``--help``); its code ``dlresearch/apps/xray/``.
"""

from dlresearch.tools import entry, xray

if __name__ == '__main__':
  entry.main(xray)
