"""The built-in callbacks a config asks for, in the order the loop calls
them: NaN stop first (it must see a train line before it is written), then
the profiler, the model summary, keep-best and early stopping, the plots,
the trackers (``--tracker``). User callbacks come after these."""

import functools

from dlresearch import config as config_lib, policy
from dlresearch.callbacks.early_stopping import EarlyStopping
from dlresearch.callbacks.keep_best import KeepBest
from dlresearch.callbacks.model_summary import ModelSummary
from dlresearch.callbacks.nan_stop import NanStop
from dlresearch.callbacks.plots import Plots, confusion_counts
from dlresearch.callbacks.profiler import Profiler
from dlresearch.callbacks.trackers import from_config as trackers_of


def standard(cfg, workdir: str, *, model, task, data, strategy,
             example: tuple) -> list:
  """``example``: ``(args, kwargs)``, model inputs of one example."""
  out = [NanStop()]
  if cfg.profile_steps:
    out.append(Profiler(config_lib.profile_range(cfg.profile_steps), workdir))
  if cfg.model_summary:
    out.append(ModelSummary(*example, cfg.batch_size))
  if cfg.best_metric:
    best = KeepBest(cfg.best_metric, cfg.best_mode,
                    cfg.early_stopping_patience,
                    policy.best_checkpoint_dir(workdir),
                    rank_final=not cfg.eval_max_examples,
                    to_saved=strategy.to_saved)
    out += [best, EarlyStopping(best)]
  if cfg.plots:
    confusion = functools.partial(
        confusion_counts, model, task, data.eval,
        data.model_kwargs.get('num_classes'), strategy,
        batch_size=cfg.eval_batch_size or cfg.batch_size)
    out.append(Plots(workdir, confusion, data.label_names,
                     data.eval_split or 'eval', data.eval_hooks))
  return out + trackers_of(cfg, workdir)
