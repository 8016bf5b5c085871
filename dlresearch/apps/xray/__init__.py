"""The chest X-ray demo: few-shot transfer from ImageNet, with error bars.

- ``readers``: the 16 labelled X-rays (``python -m dlresearch.data.fetch xray``).
- ``probe``: frozen MobileNetV2 features, leave-one-out logistic probes,
  the exact binomial interval, Grad-CAM of the probed network; ``xray_demo``
  runs all of it.

The command is ``python -m experiments.xray`` (``dlresearch/tools/xray.py``).
"""
