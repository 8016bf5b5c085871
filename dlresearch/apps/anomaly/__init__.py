"""Fraud and anomaly detection (``experiments/anomaly.py``).

- ``problem.py``: the ``anomaly`` problem (data split, task, eval hook) and
  the one-class table over every class of an image dataset.
- ``task.py``: ``Reconstruction``, the autoencoder's task.
- ``evaluators.py``: the eval hook (AUROC, average precision,
  precision/recall at ``--alert_rate``, IsolationForest next to them).
- ``metrics.py``: exact ranking metrics, reconstruction error,
  IsolationForest scores.
- ``readers.py``: the card-fraud and Statlog Shuttle files.
"""
