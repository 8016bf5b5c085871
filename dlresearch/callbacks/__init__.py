"""Callbacks: what runs around the loop, one small module each.

``train.run(cfg, workdir, callbacks=[MyCallback()])`` adds yours after the
built-in ones (``base.py`` says what is called when, how a callback stops
the run and how its state survives a resume):

- ``nan_stop``: a non-finite loss, gradient or state ends the run unsaved;
- ``keep_best``: ``--best_metric`` keeps the best params;
- ``early_stopping``: ``--early_stopping_patience``;
- ``plots``: ``--plots`` curves and confusion matrix;
- ``profiler``: ``--profile_steps`` traces;
- ``model_summary``: ``--model_summary``;
- ``trackers``: ``--tracker=mlflow|wandb`` (MLflow, Weights & Biases).

EMA evaluation (``--ema_decay``) adds ``ema_`` keys to the eval line, so it
is an evaluator (``evaluators/task_metrics.py``), not a callback.
"""

from dlresearch.callbacks.base import Callback, LoopInfo, StepMetrics
from dlresearch.callbacks.early_stopping import EarlyStopping
from dlresearch.callbacks.keep_best import KeepBest
from dlresearch.callbacks.model_summary import ModelSummary
from dlresearch.callbacks.nan_stop import NanStop, NonFiniteLossError
from dlresearch.callbacks.plots import Plots
from dlresearch.callbacks.profiler import Profiler
from dlresearch.callbacks.standard import standard
from dlresearch.callbacks.trackers import Tracker
