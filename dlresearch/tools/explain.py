r"""Explanations of a trained run's decisions.

    python -m experiments.explain --workdir=runs/quickstart --num_examples=16 \
        --method=grad_cam
    python -m experiments.explain --workdir=runs/rt --method=integrated_gradients
    python -m experiments.explain --workdir=runs/adult --num_examples=1 \
        --method=integrated_gradients

Restores the run and attributes the first ``--num_examples`` examples of
its eval split (or ``--split``) to their inputs, for the predicted class
(``--target=prediction``) or the true one (``--target=label``). Methods:

- images: ``saliency``, ``smoothgrad``, ``integrated_gradients``,
  ``grad_cam`` (CNNs; ``--layer``, default the last feature map): one PNG
  per example, the input and its attribution map side by side, upscaled,
  titled with the true label's and the prediction's names and the
  prediction's probability, with a colour bar;
- text: ``integrated_gradients`` (= ``token_attributions``, on the token
  embedding) and ``attention_rollout`` (Transformers): ``tokens.html``, one
  line of coloured tokens per example;
- feature vectors (tabular): ``saliency``, ``smoothgrad``,
  ``integrated_gradients``: the ``--top_k`` features per example, as JSON
  and a PNG bar chart.

``report.json`` (in ``--out``, default ``RUN/explain_<method>``) lists each
example (label, prediction, target logit, file) and, for integrated
gradients, the completeness gap ``|sum(attr) - (f(x) - f(baseline))|``.
The attributions are ``dlresearch.rai.explain``.
"""

import dataclasses
import functools
import pathlib

import numpy as np

import dlresearch
from dlresearch.config import ConfigError
from dlresearch.tools import entry

# Loaded when first used, after the flags are checked (jax takes seconds).
jax = entry.lazy('jax')
jnp = entry.lazy('jax.numpy')
plot = entry.lazy('dlresearch.plot')
audit = entry.lazy('dlresearch.rai.audit')
explain = entry.lazy('dlresearch.rai.explain')
pictures = entry.lazy('dlresearch.rai.pictures')
inference = entry.lazy('dlresearch.tools.inference')
run_data = entry.lazy('dlresearch.tools.run_data')

PROG = 'python -m experiments.explain'
IMAGE_METHODS = ('saliency', 'smoothgrad', 'integrated_gradients', 'grad_cam')
VECTOR_METHODS = ('saliency', 'smoothgrad', 'integrated_gradients')
TEXT_METHODS = ('integrated_gradients', 'token_attributions',
                'attention_rollout')


@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m experiments.explain``'s flags."""

  workdir: str = entry.option(help='The trained run to explain.',
                              required=True)
  method: str = entry.option('integrated_gradients', 'Attribution method.')
  num_examples: int = entry.option(16, 'Examples explained (> 0).')
  split: str = entry.option('', "Split (default: the run's eval split).")
  out: str = entry.option('', 'Output directory (default: '
                          'RUN/explain_<method>).')
  step: str = entry.option('', "Checkpoint: a step, 'best', or empty for the "
                           'latest.')
  steps: int = entry.option(64, 'Integrated-gradients path steps (> 0).')
  layer: str = entry.option('', 'Grad-CAM layer / text embedding module.')
  target: str = entry.option('prediction', "'prediction' or 'label'.")
  top_k: int = entry.option(10, 'Features listed per tabular example.')
  seed: int = entry.option(0, 'SmoothGrad noise seed.')

  def __post_init__(self):
    for name in ('num_examples', 'steps', 'top_k'):
      entry.above(self, name, 0)


def main(options: Options) -> None:
  """Restores the run, explains it, prints a summary and the files written."""
  run = dlresearch.restore(options.workdir, run_data.step_arg(options.step))
  out = options.out or f'{run.workdir}/explain_{options.method}'
  report = explain_run(
      run, options.method, out, num_examples=options.num_examples,
      split=options.split, steps=options.steps, layer=options.layer,
      target=options.target, top_k=options.top_k, seed=options.seed)
  print(explain_summary(report))
  print(f'wrote {len(report["files"]) + 1} files to {out}')


def _modality(run, inputs: np.ndarray) -> str:
  if np.issubdtype(inputs.dtype, np.integer) and run.tokenizer is not None:
    return 'text'
  return 'image' if inputs.ndim == 4 else 'vector'


def _target_logit(model, targets, variables, x):
  logits = model.apply(variables, x, train=False)
  return jnp.take_along_axis(logits, targets[:, None], 1)[:, 0]


def _bar_png(path, names, values, title):
  """The features' attributions as horizontal bars (red: towards the
  target class, blue: away from it), titled ``title``."""
  fig = plot.new_figure((600, int(30 * len(names) + 120)))
  ax = fig.subplots()
  colors = ['tab:red' if v > 0 else 'tab:blue' for v in values]
  ax.barh(range(len(names))[::-1], values, color=colors)
  ax.set_yticks(range(len(names))[::-1], names, fontsize=8)
  ax.axvline(0, color='black', linewidth=0.8)
  ax.set_xlabel('attribution (red: towards the class, blue: away)')
  ax.set_title(title, fontsize=9)
  plot.save(fig, str(path))


def class_names(run, num_classes: int) -> list[str]:
  """The dataset's label names, or 'class i' when it has none."""
  names = inference._label_names(run.config)  # pylint: disable=protected-access
  if names and len(names) == num_classes:
    return [str(n) for n in names]
  return [f'class {i}' for i in range(num_classes)]


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
  data = run_data.split_data(run, split)
  n = min(num_examples, data.dataset.num_examples)
  batch = data.dataset.get(np.arange(n), None)
  args, kwargs = run_data.inputs(data.task, batch)
  x = np.asarray(args[0])
  logits = run.predict(*args, **kwargs)
  labels = np.asarray(batch[data.task.label_key])
  if target not in ('prediction', 'label'):
    raise ConfigError('target', f"must be 'prediction' or 'label' (got "
                      f'{target!r})')
  targets = jnp.asarray(logits.argmax(-1) if target == 'prediction'
                        else labels, jnp.int32)
  kind = _modality(run, x)
  allowed = {'image': IMAGE_METHODS, 'vector': VECTOR_METHODS,
             'text': TEXT_METHODS}[kind]
  if method not in allowed:
    raise ConfigError('method', f'{method!r} does not apply to this {kind} '
                      f'run; choose one of {", ".join(allowed)}')
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  probs = run_data.softmax(np.asarray(logits))
  names = class_names(run, logits.shape[-1])
  examples = [{'index': i, 'label': int(labels[i]),
               'prediction': int(logits[i].argmax()),
               'target': int(targets[i]),
               'target_logit': float(logits[i, int(targets[i])]),
               'label_name': names[int(labels[i])],
               'prediction_name': names[int(logits[i].argmax())],
               'target_name': names[int(targets[i])],
               'probability': float(probs[i].max())}
              for i in range(n)]
  report = {'workdir': run.workdir, 'step': run.step, 'method': method,
            'modality': kind, 'split': split or run.config.eval_split
            or 'default eval split', 'target': target, 'examples': examples}
  if kind == 'text':
    gaps = _explain_text(run, method, x, kwargs, targets, layer, steps,
                         examples, out)
    report['files'] = ['tokens.html']
  else:
    attr, gaps, used_layer = _attribute(run, method, x, targets, layer, steps,
                                        seed)
    if used_layer:
      report['layer'] = used_layer
    write = _write_images if kind == 'image' else functools.partial(
        _write_vectors, top_k=top_k)
    report['files'] = write(run, method, x, attr, targets, examples, out)
  if gaps is not None:
    gaps = np.asarray(gaps, np.float64)
    for i in range(n):
      examples[i]['completeness_gap'] = float(gaps[i])
    report['completeness_gap'] = {'max': float(gaps.max()),
                                  'mean': float(gaps.mean()), 'steps': steps}
  run_data.write_json(out / 'report.json', report)
  return audit.jsonable(report)


def _explain_text(run, method, x, kwargs, targets, layer, steps, examples,
                  out):
  """Token scores into ``examples`` and ``out/tokens.html``; the
  integrated-gradients completeness gaps (None for attention rollout)."""
  tokens = jnp.asarray(x)
  mask = kwargs.get('mask')
  gaps = None
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
  for i, example in enumerate(examples):
    length = int(np.asarray(mask[i]).sum()) if mask is not None else x.shape[1]
    toks = [run.tokenizer.decode([int(t)]) for t in x[i, :length]]
    rows.append((f'#{i}: ' + pictures.explanation_title(
        example['label_name'], example['prediction_name'],
        example['probability']), toks, scores[i, :length]))
    example['tokens'] = toks
    example['scores'] = scores[i, :length]
  explain.tokens_html_page(rows, out / 'tokens.html')
  return gaps


def _attribute(run, method, x, targets, layer, steps, seed):
  """``(attributions or Grad-CAM heat, IG gaps or None, Grad-CAM layer or
  '')`` of image or feature-vector inputs ``x``."""
  fn = jax.tree_util.Partial(functools.partial(_target_logit, run.model),
                             targets, run.variables)
  if method == 'grad_cam':
    if x.ndim != 4:
      raise ConfigError('method', 'grad_cam needs image inputs')
    layer = layer or explain.feature_map_layers(run.model, run.variables,
                                                x[:1])[-1]
    heat = explain.grad_cam(run.model, run.variables, x, layer=layer,
                            target=targets)
    return np.asarray(heat), None, layer
  if method == 'saliency':
    return np.asarray(explain.saliency(fn, x)), None, ''
  if method == 'smoothgrad':
    return (np.asarray(explain.smoothgrad(fn, x, rng=jax.random.key(seed))),
            None, '')
  attr, gaps = explain.integrated_gradients(fn, x, steps=steps)
  return np.asarray(attr), gaps, ''


def _write_images(run, method, x, attr, targets, examples, out):
  """One PNG per example: the input beside its Grad-CAM heat or
  |attribution| summed over channels (``pictures.explanation_figure``);
  the file names."""
  del run, targets  # the same signature as _write_vectors
  heat = attr if method == 'grad_cam' else np.abs(attr).sum(-1)
  heat_name = ('Grad-CAM (ReLU of the gradient-weighted feature map)'
               if method == 'grad_cam' else
               f'|{method}| summed over channels')
  files = []
  for i, example in enumerate(examples):
    name = f'example_{i:03d}.png'
    fig = pictures.explanation_figure(
        x[i], heat[i], method=method, label=example['label_name'],
        prediction=example['prediction_name'],
        probability=example['probability'], target=example['target_name'],
        heat_name=heat_name)
    plot.save(fig, str(out / name))
    example['file'] = name
    files.append(name)
  return files


def _write_vectors(run, method, x, attr, targets, examples, out, *, top_k):
  """The ``top_k`` features of each example, in ``examples`` and as a bar
  chart PNG; the file names."""
  del targets  # named in ``examples``
  n = len(examples)
  flat = attr.reshape(n, -1)
  names = run_data.feature_names(run.config, flat.shape[1])
  files = []
  for i, example in enumerate(examples):
    order = np.argsort(-np.abs(flat[i]))[:top_k]
    example['top_features'] = [
        {'feature': names[j], 'value': float(x.reshape(n, -1)[i, j]),
         'attribution': float(flat[i, j])} for j in order]
    name = f'example_{i:03d}.png'
    _bar_png(out / name, [names[j] for j in order], flat[i, order],
             f'#{i}: {method} for {example["target_name"]}; '
             + pictures.explanation_title(example['label_name'],
                                          example['prediction_name'],
                                          example['probability']))
    example['file'] = name
    files.append(name)
  return files


def explain_summary(report: dict) -> str:
  line = (f'{report["method"]} on {len(report["examples"])} {report["modality"]}'
          f' examples (step {report["step"]})')
  gap = report.get('completeness_gap')
  if gap:
    line += (f'; IG completeness gap max {gap["max"]:.3g}, mean '
             f'{gap["mean"]:.3g} ({gap["steps"]} steps)')
  return line
