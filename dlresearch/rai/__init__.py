"""Responsible-AI math: fairness audits, attributions, drift statistics.

- ``audit``: per-group metrics, fairness gaps, bootstrap intervals, the
  data audit, and the audit's report files.
- ``explain``: saliency, SmoothGrad, integrated gradients, Grad-CAM,
  attention rollout, token attributions, and their PNG/HTML renderings.
- ``monitor``: PSI, KS, MMD, prediction and calibration drift,
  ``DriftMonitor``, alert lines.

Pure functions of arrays (numpy, scipy, jax, flax modules): nothing here
reads a run, a config or a dataset, and the engine never imports this
package (``tests/unit/test_layering.py``). The in-training per-group eval sums
are the engine's (``dlresearch/group_metrics.py``), shared with ``audit``.
The commands that read a finished run are ``dlresearch/tools/``.
"""
