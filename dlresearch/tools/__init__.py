"""What reads a finished run: one module per tool, one entry shape.

- ``inference``: ``dlresearch.restore(workdir)`` and the predictors of
  ``predict``; ``predict``: top-k labels of images or texts.
- ``export``, ``runs``, ``plot``: ``python -m dlresearch.export|runs|plot``.
- ``audit``, ``explain``, ``monitor``: responsible-AI reports of a run
  (``python -m experiments.audit|explain|monitor``), over
  ``run_data`` (a run's splits and predictions) and ``dlresearch.rai``.
- ``xray``: the few-shot X-ray demo (``python -m experiments.xray``),
  whose code is ``dlresearch/apps/xray/``.
- ``entry``: the shape they share (options dataclass -> flags, one-line
  errors, exit status 2 for bad input).

Tools may import the engine, ``rai`` and ``apps``; nothing below imports
tools (``tests/unit/test_layering.py``).
"""
