"""Export a trained model for serving: StableHLO via ``jax.export``.

    python -m dlresearch.export --workdir=RUN --out=DIR [--step=best]
        [--platforms=cpu,cuda]

writes ``DIR/model.jaxexport``, the serialized ``jax.export.Exported`` of
``x -> apply_fn(variables, x)`` with the parameters baked in as constants
and a symbolic batch dimension, and ``DIR/signature.json`` (input and output
shapes with the batch dimension as ``null``, dtypes, platforms, the
preprocessing, label names, ...). Loading needs only JAX (and the
``flatbuffers`` package that ``jax.export`` serialization uses)::

    import jax, numpy as np
    with open('DIR/model.jaxexport', 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    logits = exported.call(np.zeros((5, 28, 28, 1), np.float32))  # any batch size

Platforms: by default the current backend's and CPU (a model trained on a
GPU also runs on a CPU server); ``platforms=('cpu', 'cuda')`` lowers for
both from any machine. A TensorFlow SavedModel (``jax2tf``) is written too
with ``saved_model=True`` when TensorFlow is importable, and skipped with a
warning otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import numpy as np

from dlresearch import config as config_lib
from dlresearch.tools import entry

# Loaded when first used, after the flags are checked (jax takes seconds).
jax = entry.lazy('jax')
checkpoint = entry.lazy('dlresearch.checkpoint')
lora = entry.lazy('dlresearch.models.lora')

PROG = 'python -m dlresearch.export'


def ERRORS() -> tuple:  # pylint: disable=invalid-name
  """Bad input beyond entry.ERRORS: no TensorFlow/flatbuffers, a bad checkpoint
  (only raised once the checkpoint module is loaded: asked no sooner)."""
  if 'dlresearch.checkpoint' not in sys.modules:
    return (ImportError,)
  return (ImportError, checkpoint.CheckpointError)

MODEL_FILE = 'model.jaxexport'
SIGNATURE_FILE = 'signature.json'
SAVED_MODEL_DIR = 'saved_model'
_RESERVED = ('format', 'file', 'input', 'outputs', 'platforms', 'jax_version',
             'calling_convention_version', 'load')


def _spec(aval) -> dict:
  return {'shape': [None if jax.export.is_symbolic_dim(d) else int(d) for d in aval.shape],
          'dtype': str(np.dtype(aval.dtype))}


def _write_atomic(path: str, data: bytes) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def _platforms(platforms: Sequence[str] | None) -> tuple[str, ...]:
  if platforms:
    return tuple(platforms)
  default = jax.export.default_export_platform()
  return (default,) if default == 'cpu' else (default, 'cpu')


def export(apply_fn: Callable[[Any, jax.Array], Any], variables: Any, example_batch: Any,
           out_dir: str, *, signature: Mapping[str, Any] | None = None,
           platforms: Sequence[str] | None = None,
           saved_model: bool = False) -> jax.export.Exported:
  """Serializes ``x -> apply_fn(variables, x)`` to ``out_dir``; returns the Exported.

  Args:
    apply_fn: ``(variables, x) -> outputs``, e.g. ``functools.partial(
      model.apply, train=False)``.
    variables: the pytree baked into the exported program as constants
      (fetched to host first, so sharded arrays work).
    example_batch: an array ``[batch, ...]``; its dtype and non-batch
      dimensions define the input; the batch dimension is symbolic.
    out_dir: created if needed; ``model.jaxexport`` and ``signature.json``
      are replaced atomically.
    signature: JSON-able entries added to ``signature.json``, e.g.
      ``preprocessing`` (a description) and ``label_names``.
    platforms: lowering platforms (default: the current backend and 'cpu').
    saved_model: also write ``out_dir/saved_model`` with jax2tf when
      TensorFlow is importable.
  """
  try:
    import flatbuffers  # noqa: F401  (what Exported.serialize needs)
  except ImportError:
    raise ImportError("jax.export serialization needs the 'flatbuffers' package "
                      '(pip install flatbuffers)') from None
  signature = dict(signature or {})
  clash = sorted(set(signature) & set(_RESERVED))
  if clash:
    raise ValueError(f'signature keys {clash} are written by export itself')
  example = np.asarray(example_batch)
  if example.ndim < 1 or example.shape[0] < 1:
    raise ValueError(f'example_batch must be an array [batch >= 1, ...]; got shape '
                     f'{example.shape}')
  constants = jax.tree.map(np.asarray, jax.device_get(variables))
  fn = jax.jit(lambda x: apply_fn(constants, x))
  shape = jax.export.symbolic_shape('b, ...', like=(None, *example.shape[1:]))
  exported = jax.export.export(fn, platforms=_platforms(platforms))(
      jax.ShapeDtypeStruct(shape, example.dtype))

  os.makedirs(out_dir, exist_ok=True)
  _write_atomic(os.path.join(out_dir, MODEL_FILE), bytes(exported.serialize()))
  record = {
      'format': 'jax.export',
      'file': MODEL_FILE,
      'input': _spec(exported.in_avals[0]),
      'outputs': [_spec(a) for a in exported.out_avals],
      'platforms': list(exported.platforms),
      'jax_version': jax.__version__,
      'calling_convention_version': exported.calling_convention_version,
      'load': ("exported = jax.export.deserialize(bytearray(open('model.jaxexport', 'rb')"
               '.read())); outputs = exported.call(x)'),
      **signature,
  }
  _write_atomic(os.path.join(out_dir, SIGNATURE_FILE),
                (json.dumps(record, indent=2) + '\n').encode('utf-8'))
  if saved_model:
    _saved_model(fn, example, os.path.join(out_dir, SAVED_MODEL_DIR))
  return exported


def _saved_model(fn: Callable, example: np.ndarray, path: str) -> bool:
  """A TF SavedModel of ``fn`` (batch dimension polymorphic) when TF is importable."""
  if importlib.util.find_spec('tensorflow') is None:
    logging.warning('TensorFlow is not installed: no SavedModel written')
    return False
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  module = tf.Module()
  module.f = tf.function(
      jax2tf.convert(fn, polymorphic_shapes=['(b, ...)'], with_gradient=False),
      autograph=False,
      input_signature=[tf.TensorSpec((None, *example.shape[1:]), example.dtype)])
  tf.saved_model.save(module, path)
  return True


def flax_variables(variables: Mapping[str, Any]) -> dict:
  """``{'params', 'model_state': {...}}`` (checkpoint layout) as flax collections."""
  variables = dict(variables)
  if 'model_state' in variables:
    return {'params': variables.pop('params'), **variables.pop('model_state'), **variables}
  return variables


def export_run(model, variables: Mapping[str, Any], example_batch: Any, out_dir: str,
               signature: Mapping[str, Any] | None = None, **kwargs) -> jax.export.Exported:
  """``export`` of a registry model in eval mode: ``model.apply(v, x, train=False)``.

  ``variables`` is flax's ``{'params': ..., 'batch_stats': ...}`` or the
  checkpoint layout ``{'params': ..., 'model_state': {...}}``. ``kwargs``
  go to ``export`` (``platforms``, ``saved_model``).
  """
  return export(functools.partial(model.apply, train=False), flax_variables(variables),
                example_batch, out_dir, signature=signature, **kwargs)


def _preprocessing(config: Mapping[str, Any]) -> str:
  from dlresearch.data import transforms  # pylint: disable=g-import-not-at-top
  steps = {
      'none': 'uint8 NHWC image -> float32, values unchanged',
      'scale': 'uint8 NHWC image -> float32 / 255',
      'imagenet': ('uint8 NHWC image -> (x / 255 - mean) / std, mean='
                   f'{list(transforms.IMAGENET_MEAN)}, std={list(transforms.IMAGENET_STD)}'),
  }
  text = steps.get(config.get('normalize'), f"normalize={config.get('normalize')!r}")
  if config.get('image_size'):
    size = config['image_size']
    text = f'resize (PIL bilinear) and centre-crop to {size}x{size}; ' + text
  return text


def signature_from_config(workdir: str, out_dir: str | None = None) -> dict:
  """What ``WORKDIR/config.json`` says about the inputs, for ``signature.json``.

  ``run.workdir`` is relative to ``out_dir`` (the export's directory; default
  the current one), so an export moved together with its run still finds it
  and names no machine's absolute path.
  """
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    record = json.load(f)
  config = config_lib.flatten(record.get('config', {}))  # sectioned or flat
  where = os.path.relpath(os.path.abspath(workdir),
                          os.path.abspath(out_dir or os.curdir))
  out = {'run': {'workdir': where, 'git_commit': record.get('git_commit'),
                 **{k: config.get(k) for k in ('dataset', 'model', 'model_kwargs', 'dtype')}}}
  if 'normalize' in config:
    out['preprocessing'] = _preprocessing(config)
  return out


def restore_for_export(workdir: str, step: int | str | None = None):
  """``(model, variables, example_batch, signature)`` of a trained run.

  ``dlresearch.restore`` gives the model and variables; one batch of the
  run's eval split (rebuilt from its recorded config, read-only) gives the
  input's shape and dtype after preprocessing, and the class names.
  """
  from dlresearch.tools import inference  # pylint: disable=g-import-not-at-top
  from dlresearch import problems  # pylint: disable=g-import-not-at-top
  run = inference.restore(workdir, step)
  data = problems.build(run.config.replace(eval_only=True), run.workdir,
                     fresh=False)
  args, kwargs = data.task.model_inputs(data.eval.get(np.arange(2), None))
  if kwargs or len(args) != 1:
    raise ValueError(f'{run.config.model} takes {len(args)} input(s) and '
                     f'{sorted(kwargs)}; the export serves models of one input '
                     'array (use dlresearch.export.export(apply_fn, ...) with '
                     'your own apply_fn)')
  signature = {'step': run.step}
  if data.label_names:
    signature['label_names'] = list(data.label_names)
  model, variables = run.model, run.variables
  if isinstance(model, lora.LoRA):  # the merged plain model, same outputs
    variables = {**variables, 'params': lora.merge(variables['params'], model.scale)}
    model = model.model
    signature['lora'] = 'merged'
  return model, variables, np.asarray(args[0]), signature


@dataclasses.dataclass(frozen=True)
class Options:
  """``python -m dlresearch.export``'s flags."""

  workdir: str = entry.option(help='run directory', required=True)
  out: str = entry.option(help='output directory', required=True)
  platforms: str = entry.option('', "comma-separated, e.g. 'cpu,cuda' "
                                '(default: this backend and cpu)')
  saved_model: bool = entry.option(False, 'also a TF SavedModel (needs '
                                   'TensorFlow)')
  step: str = entry.option('', "checkpoint: empty = latest, 'best' = "
                           'keep-best, or a step number')

  def __post_init__(self):
    if self.step not in ('', 'best') and not self.step.isdigit():
      raise ValueError(f"--step: expected a step number or 'best' (got "
                       f'{self.step!r})')


def main(options: Options) -> None:
  """Restores the run, exports it, prints the path of the exported model."""
  step = (None if not options.step else
          options.step if options.step == 'best' else int(options.step))
  print(f'restoring {options.workdir} (step {options.step or "latest"}) and '
        'one batch of its eval split', flush=True)
  model, variables, example, extra = restore_for_export(options.workdir, step)
  signature = signature_from_config(options.workdir, options.out)
  signature.update(extra)
  platforms = _platforms([p for p in options.platforms.split(',') if p] or None)
  count = sum(int(np.size(v)) for v in jax.tree.leaves(variables))
  print(f'exporting {type(model).__name__} ({count:,} parameters, input '
        f'{list(example.shape[1:])} {example.dtype}) for {", ".join(platforms)}'
        f' to {options.out}', flush=True)
  export_run(model, variables, example, options.out, signature,
             platforms=platforms, saved_model=options.saved_model)
  if 'cuda' not in platforms and 'rocm' not in platforms:
    print(f'note: exported for {", ".join(platforms)} only: it does not run '
          'on a GPU (export with --platforms=cpu,cuda for both)', flush=True)
  print(os.path.join(options.out, MODEL_FILE))
