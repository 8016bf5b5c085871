"""Responsible-AI tools on a trained run: audit, explain, monitor.

Each tool takes a restored run (``dlresearch.restore(workdir)``, passed in
so this module stays below the loop), rebuilds the run's data with its data
kind (the same preprocessing as in training; text runs use the workdir's
tokenizer) and writes its results under a directory of the run:

- ``audit_run``: predictions on the eval split, ``audit.model_audit`` per
  group column (bootstrap intervals), ``audit.data_audit`` of the train
  split; ``report.json``, ``predictions.csv`` (``label,prediction,score,
  group``) and bar charts (``audit.write_report``).
- ``explain_run``: attributions of the first examples of a split by one
  method (``explain.*``): PNG overlays for images, one HTML page of coloured
  tokens for text, ranked features (JSON and PNG bars) for feature vectors;
  ``report.json`` with the integrated-gradients completeness gaps.
- ``monitor_run``: ``monitor.DriftMonitor`` of a live window (a split, a
  split's rows of one group, a ``.npz``, optionally noised or rotated)
  against the training split; ``report.json`` and alert lines appended to
  the run's ``metrics.jsonl`` (``"split": "monitor"``).

Groups and the positive class: group columns must be ClassLabel or integer
features of the dataset (``--audit_group``'s rule); the positive class is 1
(the ``score`` is its probability).
"""

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dlresearch import audit, explain, monitor, problems
from dlresearch.config import ConfigError
from dlresearch.data import datasets, pipeline

POS_LABEL = 1
EVAL_BATCH = 256
IMAGE_METHODS = ('saliency', 'smoothgrad', 'integrated_gradients', 'grad_cam')
VECTOR_METHODS = ('saliency', 'smoothgrad', 'integrated_gradients')
TEXT_METHODS = ('integrated_gradients', 'token_attributions',
                'attention_rollout')


@dataclasses.dataclass
class SplitData:
  """A split as the run's task sees it, with its group columns."""

  dataset: Any  # pipeline.Dataset of model-ready batches
  task: Any
  groups: tuple  # ((column, names), ...)
  train: Any  # the training split (pipeline.Dataset)


def split_data(run, split: str = '', group_keys: Sequence[str] = ()
               ) -> SplitData:
  """The run's data kind built for ``split`` (default: its eval split)."""
  cfg = run.config.replace(eval_only=True, audit_group=','.join(group_keys))
  if split:
    cfg = cfg.replace(eval_split=split)
  if group_keys and cfg.data_kind != 'classification':
    raise ConfigError('group_key', f'group columns need data kind '
                      f'classification; this run is {cfg.data_kind}')
  data = problems.build(cfg, run.workdir, fresh=False)
  groups = getattr(data.task, 'groups', ())
  return SplitData(data.eval, data.task, groups, data.train)


def _inputs(task, batch):
  return task.model_inputs(batch)


def predict(run, dataset, task, *, rows: np.ndarray | None = None,
            embeddings: bool = False) -> dict[str, np.ndarray]:
  """Logits (and columns) of every example of ``dataset`` (or ``rows``).

  Returns ``{'logits' [N, C], 'label' [N], group columns [N], 'inputs'
  [N, ...] (model input), 'embedding' [N, D] when asked}``.
  """
  n = dataset.num_examples
  rows = np.arange(n) if rows is None else np.asarray(rows)
  out = {}
  apply = None
  if embeddings:
    apply = jax.jit(lambda v, args, kwargs: run.model.apply(
        v, *args, train=False, return_features=True, **kwargs))
  for start in range(0, len(rows), EVAL_BATCH):
    idx = rows[start:start + EVAL_BATCH]
    real = len(idx)
    idx = np.concatenate([idx, np.repeat(idx[:1], EVAL_BATCH - real)])
    batch = dataset.get(idx, None)
    args, kwargs = _inputs(task, batch)
    if embeddings:
      logits, feats = apply(run.variables, args, kwargs)
      cols = {'logits': logits, 'embedding': np.asarray(
          feats['pre_logits']).reshape(EVAL_BATCH, -1)}
    else:
      cols = {'logits': run.predict(*args, **kwargs)}
    cols['inputs'] = args[0]
    cols.update({k: v for k, v in batch.items() if k != task.input_key})
    for k, v in cols.items():
      out.setdefault(k, []).append(np.asarray(v)[:real])
  return {k: np.concatenate(v) for k, v in out.items()}


def _softmax(logits: np.ndarray) -> np.ndarray:
  return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1),
                    np.float64)


def _named(ids: np.ndarray, names: Sequence[str]) -> np.ndarray:
  return np.asarray(names, dtype=object)[np.asarray(ids, np.int64)]


# ------------------------------------------------------------------ audit --


def audit_run(run, group_keys: Sequence[str], out_dir: str, *,
              split: str = '', n_bootstrap: int = 1000, seed: int = 0,
              min_group_size: int = 30) -> tuple[dict, list[pathlib.Path]]:
  """Audits the run's predictions on ``split`` by ``group_keys``.

  ``predictions.csv``'s ``group`` column is the group of the first key
  (``Female``), or ``key=name`` pairs joined by ';' for several keys.

  Returns:
    (report, paths written).
  """
  if not group_keys:
    raise ConfigError('group_key', 'name at least one group column')
  data = split_data(run, split, group_keys)
  got = predict(run, data.dataset, data.task)
  probs = _softmax(got['logits'])
  labels = got[data.task.label_key]
  prediction = probs.argmax(-1)
  score = probs[:, POS_LABEL]
  groups = {key: _named(got[key], names) for key, names in data.groups}
  report = audit.model_audit(labels, prediction, score, groups,
                             n_bootstrap=n_bootstrap, seed=seed,
                             pos_label=POS_LABEL)
  cfg = run.config
  train_split = cfg.train_split or 'train'
  train = datasets.load_in_memory(cfg.dataset, train_split,
                                  os.path.expanduser(cfg.data_dir),
                                  cfg.manual_dir or None)
  report['data'] = audit.data_audit(
      train[data.task.label_key],
      {key: _named(train[key], names) for key, names in data.groups},
      min_group_size=min_group_size, pos_label=POS_LABEL)
  report['data']['split'] = train_split
  report.update(workdir=run.workdir, step=run.step,
                split=split or cfg.eval_split or 'default eval split',
                dataset=cfg.dataset, positive_class=POS_LABEL)
  if len(groups) == 1:
    group_col = next(iter(groups.values()))
  else:
    group_col = np.array([';'.join(f'{k}={v[i]}' for k, v in groups.items())
                          for i in range(len(labels))], dtype=object)
  paths = audit.write_report(out_dir, report, {
      'label': labels, 'prediction': prediction, 'score': score,
      'group': group_col})
  return report, paths


# ---------------------------------------------------------------- explain --


def _modality(run, inputs: np.ndarray) -> str:
  if np.issubdtype(inputs.dtype, np.integer) and run.tokenizer is not None:
    return 'text'
  return 'image' if inputs.ndim == 4 else 'vector'


def _target_logit(model, targets, variables, x):
  logits = model.apply(variables, x, train=False)
  return jnp.take_along_axis(logits, targets[:, None], 1)[:, 0]


def _feature_names(cfg, dim: int) -> list[str]:
  try:
    source = datasets.get_source(cfg.dataset, cfg.train_split or 'train',
                                 os.path.expanduser(cfg.data_dir),
                                 cfg.manual_dir or None)
    names = list(source.dataset_info.metadata.get('feature_names', []))
  except (AttributeError, ValueError, TypeError):
    names = []
  return names if len(names) == dim else [f'f{i}' for i in range(dim)]


def _bar_png(path, names, values, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
  colors = ['tab:red' if v > 0 else 'tab:blue' for v in values]
  ax.barh(range(len(names))[::-1], values, color=colors)
  ax.set_yticks(range(len(names))[::-1], names, fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def explain_run(run, method: str, out_dir: str, *, num_examples: int = 16,
                split: str = '', steps: int = 64, layer: str = '',
                target: str = 'prediction', top_k: int = 10,
                seed: int = 0) -> dict:
  """Attributions for the first ``num_examples`` examples of ``split``.

  ``target``: 'prediction' (the predicted class) or 'label'. ``layer``:
  Grad-CAM's layer (default: the last feature map) or the text embedding
  module (default ``token_embed``).

  Returns the report written to ``out_dir/report.json``.
  """
  data = split_data(run, split)
  n = min(num_examples, data.dataset.num_examples)
  batch = data.dataset.get(np.arange(n), None)
  args, kwargs = _inputs(data.task, batch)
  x = np.asarray(args[0])
  logits = run.predict(*args, **kwargs)
  labels = np.asarray(batch[data.task.label_key])
  if target not in ('prediction', 'label'):
    raise ConfigError('target', f"must be 'prediction' or 'label' (got "
                      f'{target!r})')
  targets = logits.argmax(-1) if target == 'prediction' else labels
  targets = jnp.asarray(targets, jnp.int32)
  kind = _modality(run, x)
  allowed = {'image': IMAGE_METHODS, 'vector': VECTOR_METHODS,
             'text': TEXT_METHODS}[kind]
  if method not in allowed:
    raise ConfigError('method', f'{method!r} does not apply to this {kind} '
                      f'run; choose one of {", ".join(allowed)}')
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fn = jax.tree_util.Partial(functools.partial(_target_logit, run.model),
                             targets, run.variables)
  gaps = None
  examples = [{'index': i, 'label': int(labels[i]),
               'prediction': int(logits[i].argmax()),
               'target': int(targets[i]),
               'target_logit': float(logits[i, int(targets[i])])}
              for i in range(n)]
  report = {'workdir': run.workdir, 'step': run.step, 'method': method,
            'modality': kind, 'split': split or run.config.eval_split
            or 'default eval split', 'target': target, 'examples': examples}
  if kind == 'text':
    tokens = jnp.asarray(x)
    mask = kwargs.get('mask')
    if method == 'attention_rollout':
      _, feats = run.model.apply(run.variables, tokens, train=False,
                                 return_features=True, return_attention=True,
                                 **kwargs)
      if 'attention_weights' not in feats:
        raise ConfigError('method', 'this model returns no attention weights')
      roll = np.asarray(explain.attention_rollout(feats['attention_weights']))
      real = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
      scores = (roll * real[:, :, None]).sum(1) / real.sum(1, keepdims=True)
      scores = np.where(real, scores, 0.0)
    else:
      scores, gaps = explain.token_attributions(
          run.model, run.variables, tokens, target=targets,
          layer=layer or 'token_embed', steps=steps, **kwargs)
      scores = np.asarray(scores)
    rows = []
    for i in range(n):
      length = int(np.asarray(mask[i]).sum()) if mask is not None else x.shape[1]
      toks = [run.tokenizer.decode([int(t)]) for t in x[i, :length]]
      rows.append((f'#{i}: label {labels[i]}, predicted '
                   f'{examples[i]["prediction"]}', toks, scores[i, :length]))
      examples[i]['tokens'] = toks
      examples[i]['scores'] = scores[i, :length]
    explain.tokens_html_page(rows, out / 'tokens.html')
    report['files'] = ['tokens.html']
  else:
    if method == 'grad_cam':
      if kind != 'image':
        raise ConfigError('method', 'grad_cam needs image inputs')
      layer = layer or explain.feature_map_layers(run.model, run.variables,
                                                  x[:1])[-1]
      heat = np.asarray(explain.grad_cam(run.model, run.variables, x,
                                         layer=layer, target=targets))
      report['layer'] = layer
    elif method == 'saliency':
      attr = np.asarray(explain.saliency(fn, x))
    elif method == 'smoothgrad':
      attr = np.asarray(explain.smoothgrad(fn, x, rng=jax.random.key(seed)))
    else:
      attr, gaps = explain.integrated_gradients(fn, x, steps=steps)
      attr = np.asarray(attr)
    files = []
    if kind == 'image':
      if method != 'grad_cam':
        heat = np.abs(attr).sum(-1)
      for i in range(n):
        name = f'example_{i:03d}.png'
        explain.overlay_png(x[i], heat[i], out / name,
                            scale=max(1, 224 // x.shape[1]))
        examples[i]['file'] = name
        files.append(name)
    else:
      flat = attr.reshape(n, -1)
      names = _feature_names(run.config, flat.shape[1])
      for i in range(n):
        order = np.argsort(-np.abs(flat[i]))[:top_k]
        examples[i]['top_features'] = [
            {'feature': names[j], 'value': float(x.reshape(n, -1)[i, j]),
             'attribution': float(flat[i, j])} for j in order]
        name = f'example_{i:03d}.png'
        _bar_png(out / name, [names[j] for j in order], flat[i, order],
                 f'#{i}: {method}, class {int(targets[i])}')
        examples[i]['file'] = name
        files.append(name)
    report['files'] = files
  if gaps is not None:
    gaps = np.asarray(gaps, np.float64)
    for i in range(n):
      examples[i]['completeness_gap'] = float(gaps[i])
    report['completeness_gap'] = {'max': float(gaps.max()),
                                  'mean': float(gaps.mean()), 'steps': steps}
  _write_json(out / 'report.json', report)
  return audit.jsonable(report)


def _write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(audit.jsonable(obj), indent=1, allow_nan=False)
                 + '\n')
  os.replace(tmp, path)


# ---------------------------------------------------------------- monitor --


def parse_filter(text: str) -> tuple[str, str] | None:
  """``'sex=Female'`` -> ``('sex', 'Female')``; '' -> None."""
  if not text:
    return None
  key, sep, value = text.partition('=')
  if not sep or not key or not value:
    raise ConfigError('live_filter', f"expected COLUMN=GROUP (e.g. "
                      f"'sex=Female'), got {text!r}")
  return key.strip(), value.strip()


def transform_inputs(x: np.ndarray, spec: str,
                     rng: np.random.Generator | None = None) -> np.ndarray:
  """``'noise:SIGMA'`` (Gaussian, input units) or ``'rotate:DEGREES'``
  (images [N, H, W, C], bilinear, zero fill); '' leaves ``x`` as it is."""
  if not spec:
    return x
  name, _, value = spec.partition(':')
  try:
    amount = float(value)
  except ValueError:
    raise ConfigError('live_transform', f"expected noise:SIGMA or "
                      f"rotate:DEGREES, got {spec!r}") from None
  if name == 'noise':
    rng = rng or np.random.default_rng(0)
    return (x + amount * rng.normal(size=x.shape)).astype(x.dtype)
  if name == 'rotate':
    if x.ndim != 4:
      raise ConfigError('live_transform', 'rotate needs images [N, H, W, C]')
    from scipy import ndimage  # pylint: disable=g-import-not-at-top
    return ndimage.rotate(x, amount, axes=(1, 2), reshape=False, order=1,
                          mode='constant').astype(x.dtype)
  raise ConfigError('live_transform', f"expected noise:SIGMA or "
                    f"rotate:DEGREES, got {spec!r}")


def _sample(n: int, max_rows: int, seed: int) -> np.ndarray:
  if n <= max_rows:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, max_rows,
                                                    replace=False))


def _drift_view(run, got: dict, features: str) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D], scores) for the monitor from ``predict`` output."""
  probs = _softmax(got['logits'])
  scores = probs[:, POS_LABEL] if probs.shape[1] == 2 else probs
  feats = got['embedding'] if features == 'embeddings' else got['inputs']
  return np.asarray(feats, np.float64).reshape(len(probs), -1), scores


def monitor_run(run, live: str, out_dir: str, *, live_filter: str = '',
                live_transform: str = '', features: str = 'auto',
                max_rows: int = 5000, seed: int = 0,
                thresholds: dict | None = None,
                metrics_file: str | None = None) -> dict:
  """Drift of a live window against the run's training split.

  Args:
    run: a restored run.
    live: a split of the run's dataset ('test', 'test[:50%]') or a ``.npz``
      file holding model inputs (preprocessed as the model takes them) under
      the task's input key (or ``x``), and optionally ``label``.
    out_dir: where ``report.json`` goes.
    live_filter: ``COLUMN=GROUP``: keep the live split's rows of one group.
    live_transform: ``noise:SIGMA`` or ``rotate:DEGREES`` applied to the
      live inputs before the model sees them.
    features: what drifts are measured on: 'inputs' (flattened model
      inputs), 'embeddings' (the model's ``pre_logits``), or 'auto'
      (inputs up to 256 values, else embeddings).
    max_rows: each window is subsampled (seeded) to at most this many rows.
    seed: subsampling, noise, MMD permutations.
    thresholds: ``monitor.Thresholds`` fields to override.
    metrics_file: where alert lines go (default ``RUN/metrics.jsonl``).

  Returns:
    The report (``monitor.DriftMonitor.check`` plus what was compared).
  """
  if features not in ('auto', 'inputs', 'embeddings'):
    raise ConfigError('features', f"must be auto, inputs or embeddings (got "
                      f'{features!r})')
  flt = parse_filter(live_filter)
  is_file = live.endswith('.npz')
  if is_file and flt:
    raise ConfigError('live_filter', 'filters apply to splits, not to .npz '
                      'files')
  if is_file and not os.path.isfile(live):
    raise ConfigError('live', f'{live} does not exist')
  data = split_data(run, '' if is_file else live, (flt[0],) if flt else ())
  task = data.task
  sample = data.train.get(np.arange(1), None)
  dim = np.asarray(_inputs(task, sample)[0][0]).size
  if features == 'auto':
    features = 'inputs' if dim <= 256 else 'embeddings'
  embed = features == 'embeddings'
  ref_rows = _sample(data.train.num_examples, max_rows, seed)
  ref = predict(run, data.train, task, rows=ref_rows, embeddings=embed)
  if is_file:
    with np.load(live) as f:
      key = task.input_key if task.input_key in f else 'x'
      if key not in f:
        raise ConfigError('live', f'{live} has no array {task.input_key!r} '
                          f'or x; it has {", ".join(f.files)}')
      x = f[key]
      labels = f['label'] if 'label' in f else None
    has_labels = labels is not None
    live_ds = pipeline.ArrayDataset({
        task.input_key: x,
        task.label_key: labels if has_labels else np.zeros(len(x), np.int64)})
  else:
    live_ds, has_labels = data.dataset, True
  rows = np.arange(live_ds.num_examples)
  if flt:
    names = dict(data.groups)[flt[0]]
    if flt[1] not in names:
      raise ConfigError('live_filter', f'{flt[0]} has no group {flt[1]!r}; '
                        f'its groups: {", ".join(names)}')
    column = live_ds.get(rows, None)[flt[0]]
    rows = rows[np.asarray(column) == names.index(flt[1])]
  rows = rows[_sample(len(rows), max_rows, seed + 1)]
  if not len(rows):
    raise ConfigError('live', 'the live window has no rows')
  if live_transform:
    transform_inputs(np.zeros((1, 2, 2, 1), np.float32), live_transform)
    inner = live_ds.batch_fn
    rng = np.random.default_rng(seed)

    def batch_fn(batch):
      batch = inner(batch) if inner else batch
      x = np.asarray(batch[task.input_key])
      return {**batch, task.input_key: transform_inputs(
          x, live_transform, rng)}

    live_ds = dataclasses.replace(live_ds, batch_fn=batch_fn)
  cur = predict(run, live_ds, task, rows=rows, embeddings=embed)
  ref_x, ref_s = _drift_view(run, ref, features)
  live_x, live_s = _drift_view(run, cur, features)
  names = (_feature_names(run.config, ref_x.shape[1])
           if features == 'inputs' else
           [f'embedding_{i}' for i in range(ref_x.shape[1])])
  mon = monitor.DriftMonitor(ref_x, ref_s, thresholds,
                             reference_labels=ref[task.label_key],
                             feature_names=names, seed=seed)
  report = mon.check(live_x, live_s,
                     cur[task.label_key] if has_labels else None)
  psis = report['feature_psi']
  report['top_feature_psi'] = dict(sorted(
      psis.items(), key=lambda kv: -(kv[1] or 0))[:10])
  report['accuracy'] = {
      'reference': float(np.mean(ref['logits'].argmax(-1)
                                 == ref[task.label_key])),
      'live': (float(np.mean(cur['logits'].argmax(-1) == cur[task.label_key]))
               if has_labels else None)}
  report.update(workdir=run.workdir, step=run.step, live=live,
                live_filter=live_filter, live_transform=live_transform,
                features=features, reference_rows=len(ref_rows),
                thresholds=dataclasses.asdict(mon.thresholds))
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  _write_json(out / 'report.json', report)
  path = metrics_file or os.path.join(run.workdir, 'metrics.jsonl')
  monitor.append_alerts(path, report['alerts'], step=run.step, live=live,
                        live_filter=live_filter,
                        live_transform=live_transform)
  return audit.jsonable(report)


# ---------------------------------------------------------------- summaries --


def step_arg(text: str) -> int | str | None:
  """A ``--step`` flag: '' -> latest (None), 'best', or an int."""
  if not text:
    return None
  if text == 'best':
    return text
  try:
    return int(text)
  except ValueError:
    raise ConfigError('step', f"expected a step number or 'best' (got "
                      f'{text!r})') from None


def _fmt(entry, pct=True) -> str:
  value, ci = entry['value'], entry.get('ci')
  if value is None:
    return 'n/a'
  scale = 100 if pct else 1
  text = f'{scale * value:.1f}' if pct else f'{value:.3f}'
  if ci and ci[0] is not None:
    text += (f' [{scale * ci[0]:.1f}, {scale * ci[1]:.1f}]' if pct else
             f' [{ci[0]:.3f}, {ci[1]:.3f}]')
  return text


def audit_summary(report: dict) -> str:
  """A few lines: per group accuracy/selection rate/TPR/FPR (%), gaps."""
  lines = [f'{report["n"]} examples, step {report["step"]}; accuracy '
           f'{_fmt(report["overall"]["accuracy"])}% (95% bootstrap CI)']
  for attr, groups in report['groups'].items():
    for name, g in groups.items():
      lines.append(f'  {attr}={name} (n={g["count"]}): accuracy '
                   f'{_fmt(g["accuracy"])}, selection '
                   f'{_fmt(g["selection_rate"])}, TPR {_fmt(g["tpr"])}, '
                   f'FPR {_fmt(g["fpr"])}')
    gaps = report['gaps'][attr]
    lines.append(f'  {attr} gaps: ' + ', '.join(
        f'{k} {_fmt(v, pct=False)}' for k, v in gaps.items()))
  return '\n'.join(lines)


def explain_summary(report: dict) -> str:
  line = (f'{report["method"]} on {len(report["examples"])} {report["modality"]}'
          f' examples (step {report["step"]})')
  gap = report.get('completeness_gap')
  if gap:
    line += (f'; IG completeness gap max {gap["max"]:.3g}, mean '
             f'{gap["mean"]:.3g} ({gap["steps"]} steps)')
  return line


def monitor_summary(report: dict) -> str:
  acc = report['accuracy']
  lines = [f'live {report["live"]} {report["live_filter"]} '
           f'{report["live_transform"]} ({report["rows"]} rows) vs train '
           f'({report["reference_rows"]} rows), {report["features"]}: '
           f'MMD^2 {report["mmd"]["mmd2"]:.4f} p {report["mmd"]["p_value"]:.3g}; '
           f'prediction PSI {report["prediction"]["predicted_class_psi"]:.3f}, '
           f'score PSI {report["prediction"]["score_psi"]:.3f}; accuracy '
           f'{acc["reference"]:.3f} -> {acc["live"] if acc["live"] is None else round(acc["live"], 3)}']
  lines += [f'  ALERT {a}' for a in report['alerts']] or ['  no alerts']
  return '\n'.join(lines)
