"""Applications: each one folder the engine never imports.

``dlresearch/apps/<name>/`` holds what one application adds to the engine:
its problem (``problem.py``, registered with ``@problems.register`` and
found by ``problems``' scan of ``apps/*/problem.py``), its task, eval
hooks (``evaluators.py``), metrics and data readers. An application
imports the engine (and ``dlresearch.rai``), never another application;
``tests/unit/test_layering.py`` holds both walls.

- ``anomaly``: fraud and anomaly detection (``--data_kind=anomaly``,
  ``experiments/anomaly.py``).
- ``recommend``: MovieLens rating regression and two-tower retrieval
  (``--data_kind=ratings`` / ``retrieval``, ``experiments/recommend.py``).
- ``tabular``: scikit-learn baselines next to a classifier on feature
  vectors (``experiments/tabular.py``).
- ``xray``: the chest X-ray demo (its reader and probe; the command is
  ``python -m experiments.xray``, ``dlresearch/tools/xray.py``).
"""
