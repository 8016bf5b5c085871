r"""Chest X-rays, honestly: few-shot transfer from ImageNet, with error bars.

    python -m dlresearch.data.fetch xray                    # once: 16 images
    python -m dlresearch.data.fetch mobilenet_v2_imagenet   # once: weights
    python -m experiments.xray --workdir=runs/xray

A demo of the workflow, not a clinical result. The 16 labelled pediatric
chest X-rays that ship offline (Kermany et al. 2018, ``val`` split: 8
normal, 8 bacterial pneumonia) are far too few to train on, so: frozen
ImageNet MobileNetV2 features (``pre_logits``, 1280-d, torchvision's
weights), a logistic-regression probe (L2, C=1 on standardised features)
evaluated by leave-one-out over the 16, the accuracy with its exact
(Clopper-Pearson) 95% interval, and for each image a Grad-CAM overlay of
the class its held-out probe predicted (``WORKDIR/gradcam/*.png``, layer
``final_bn``). ``WORKDIR/results.json`` holds every image's label,
prediction and probability. Library code: ``dlresearch/transfer.py``.

Flags: ``--manual_dir`` (the X-rays; empty: where fetch put them),
``--pretrained`` (the .pth; empty: the fetched file), ``--image_size`` (the
centre crop, 224; the shorter side is first resized to 8/7 of it).

Measured on 2 shared CPU cores (AMD EPYC Zen 4, load ~20), 1 CPU device,
2026-11-29: 13 of 16 correct, accuracy 81.2% with exact 95% interval
54.4%-96.0%; 113 s wall (features, 16 probes, 16 Grad-CAM maps). With 16
images the interval spans from little better than chance to near perfect:
that, not the point estimate, is the result.
"""

import os

from dlresearch import cli, transfer
from dlresearch.config import Config, ConfigError
from dlresearch.data import fetch

PRESETS = {
    'xray': cli.Preset(
        Config(dataset='xray', model='mobilenet_v2', image_size=224),
        tiny=dict(image_size=64)),
}


def run(cfg: Config, workdir: str) -> dict:
  """The leave-one-out probe and Grad-CAM overlays (module docstring)."""
  path = os.path.expanduser(cfg.pretrained) if cfg.pretrained else (
      fetch.cached('mobilenet_v2_imagenet'))
  if path is None or not os.path.isfile(path):
    raise ConfigError('pretrained', f'no weights at {path or "the fetch cache"}'
                      ': run `python -m dlresearch.data.fetch '
                      'mobilenet_v2_imagenet` once')
  if cfg.image_size < 32:
    raise ConfigError('image_size', f'must be >= 32 (got {cfg.image_size})')
  raw = os.path.expanduser(cfg.manual_dir) if cfg.manual_dir else None
  try:
    result = transfer.xray_demo(str(path), workdir, raw, crop=cfg.image_size)
  except FileNotFoundError as e:
    raise ConfigError('manual_dir', str(e)) from None
  print(f'leave-one-out accuracy {result["correct"]:.0f}/{result["n"]:.0f} = '
        f'{result["accuracy"]:.1%} (exact 95% interval '
        f'{result["accuracy_ci_low"]:.1%}-{result["accuracy_ci_high"]:.1%}); '
        f'Grad-CAM overlays in {os.path.join(workdir, "gradcam")}. A demo of '
        'the workflow, not a clinical result.', flush=True)
  return {'step': 0, **result}


if __name__ == '__main__':
  cli.main('xray', PRESETS, default_preset='xray', run=run, options=('xray',))
