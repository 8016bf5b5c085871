"""``--init_from``: the initial parameters of a fresh run, and what loaded.

A fresh run may start from

- an earlier run of ours: its workdir, its ``checkpoints/`` directory or one
  ``checkpoints/<step>``. The earlier run must have trained the same
  ``--model`` (read from its ``config.json``), so nothing loads into another
  architecture because a path and a shape happen to match;
- pretrained weights of another framework: ``torch:PATH`` (a torchvision
  state dict), ``safetensors:PATH`` or ``hf:DIR`` (a Hugging Face BERT-family
  directory, or a Llama or GPT-2 one: ``model_type`` in its ``config.json``,
  loaded into a ``TransformerLM`` such as ``llama*`` or ``gpt2_small`` whose
  sizes equal the config's). They are converted (``dlresearch.weights.convert``) to the
  run's model, chosen by its registry name: ``resnet*``, ``vgg*``,
  ``mobilenet_v2``, ``bert*``. The source is converted with its own head
  size, so every one of its tensors has to fit.

Every parameter and batch statistic of the new model is then either

- *loaded*: the source has it under the same path with the same shape;
- *new*: its path matches ``--new_head`` (e.g. ``'^head/'``): it keeps its
  fresh initialisation, sized to this run's data;

and anything else is an error: a shape mismatch names the path and both
shapes, a variable the source lacks names the path. Source variables that
the new model does not take (the old head) are *skipped*. The three lists go
to the log at WARNING level and to ``WORKDIR/init_report.json``::

  {"source": SPEC, "model": NAME, "loaded": [PATH, ...],
   "new": [PATH, ...], "skipped": [PATH, ...]}

Paths are ``'/'``-joined with the collection first (``params/head/kernel``,
``batch_stats/stem_bn/mean``).

``--lora_save=adapters``: the checkpoints of a LoRA run keep only the
parameters that train (``state.to_checkpoint``); the frozen rest is the base
loaded here. ``initialize`` records it in ``WORKDIR/lora_base.json``::

  {"init_from": SPEC, "sha256": HEX, "params": {PATH: {"shape": [...],
   "dtype": "float32"}, ...}}

(``sha256`` over the frozen parameters' paths, dtypes, shapes and bytes as
loaded), and ``complete`` puts them back into restored params, re-reading
SPEC: a base that is missing, unreadable or changed (another sha256) is
refused in one line, never trained on or restored against.
"""

import hashlib

import json
import os
import re
from typing import Any

import flax
import jax
import numpy as np
from absl import logging

from dlresearch import checkpoint, config as config_lib
from dlresearch import logging as log_lib
from dlresearch.config import Config, ConfigError

REPORT_FILE = 'init_report.json'
BASE_FILE = 'lora_base.json'
FOREIGN = ('torch:', 'safetensors:', 'hf:')


def is_foreign(spec: str) -> bool:
  """Whether ``spec`` names another framework's weights (not a run of ours)."""
  return spec.startswith(FOREIGN)


def describe_source(spec: str) -> str | None:
  """Why ``--init_from=spec`` cannot be read (one line), or None.

  Checked at start-up, before anything is written: a foreign spec's path
  must exist; a run or checkpoint directory is checked by ``checkpoint``.
  """
  if is_foreign(spec):
    path = os.path.expanduser(spec.partition(':')[2])
    return None if os.path.exists(path) else f'{path} does not exist'
  return checkpoint.describe_init_from(spec)


def _flat(tree) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


# ---------------------------------------------------------------------------
# Sources.


def _source_config(path: str) -> Config | None:
  """The config of the run that holds checkpoint ``path`` (up to 2 levels up)."""
  path = os.path.abspath(os.path.expanduser(path))
  for directory in (path, os.path.dirname(path),
                    os.path.dirname(os.path.dirname(path))):
    if os.path.isfile(os.path.join(directory, config_lib.CONFIG_FILE)):
      return config_lib.read_recorded(directory)
  return None


def run_variables(cfg: Config) -> dict:
  """``{'params': ..., **model_state}`` of the run named by ``--init_from``."""
  source = _source_config(cfg.init_from)
  if source is None:
    raise ConfigError('init_from', f'{cfg.init_from} has no config.json '
                      '(nor its parents): cannot check which model it holds')
  if source.model != cfg.model:
    raise ConfigError('init_from', f'{cfg.init_from} holds a {source.model} '
                      f'model, not --model={cfg.model}; initialise only from '
                      'a run of the same model (or from converted weights)')
  if adapters_only(source):
    raise ConfigError('init_from', f'{cfg.init_from} saved only its LoRA '
                      'adapters (--lora_save=adapters); initialise from its '
                      f'base ({source.init_from}) or from a --lora_save=full run')
  try:
    loaded = checkpoint.load_variables(cfg.init_from)
  except FileNotFoundError as e:
    raise ConfigError('init_from', str(e)) from None
  return {'params': loaded['params'], **loaded['model_state']}


def _hf_source_model(directory: str, model):
  """HF ``BertModel`` from ``config.json``; its architecture must be ``model``'s."""
  from dlresearch.weights import hf_bert  # pylint: disable=g-import-not-at-top
  from dlresearch.weights.errors import WeightsError  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.expanduser(directory), 'config.json')
  try:
    with open(path, encoding='utf-8') as f:
      hf_config = json.load(f)
  except (OSError, ValueError) as e:
    raise WeightsError(f'{path}: {e}') from None
  source = hf_bert.model_from_config(hf_config)
  for field in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads',
                'mlp_dim', 'max_len', 'type_vocab_size', 'norm_first',
                'activation', 'layer_norm_epsilon'):
    want, got = getattr(source, field), getattr(model, field, None)
    if want != got:
      raise ConfigError('model_kwargs', f'{directory} has {field}={want!r} but '
                        f'the model has {got!r}; set it with --model_kwargs')
  return source


def _hf_config(directory: str) -> dict:
  """``DIR/config.json`` of a Hugging Face model directory."""
  from dlresearch.weights.errors import WeightsError  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.expanduser(directory), 'config.json')
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WeightsError(f'{path}: {e}') from None


def _hf_decoder(spec: str, model, state: dict, hf_config: dict):
  """``(model, variables)`` of a HF Llama or GPT-2 directory.

  Every size and setting of the config must equal the model's (set them
  with ``--model_kwargs``), so nothing loads into another architecture.
  """
  from dlresearch.models import lora  # pylint: disable=g-import-not-at-top
  from dlresearch.weights import convert  # pylint: disable=g-import-not-at-top
  base = model.model if isinstance(model, lora.LoRA) else model
  want = convert.hf_decoder_kwargs(hf_config)
  for field, value in want.items():
    got = getattr(base, field, None)
    if field == 'num_kv_heads':
      got = got or getattr(base, 'num_heads', None)
    if field == 'mlp_dim':
      got = got or 4 * getattr(base, 'd_model', 0)
    if got != value:
      raise ConfigError('model_kwargs', f'{spec} has {field}={value!r} but '
                        f'the model has {got!r}; set it with --model_kwargs')
  converter = convert.llama if hf_config['model_type'] == 'llama' else convert.gpt2
  return base, converter(state, base)


def foreign_variables(cfg: Config, model) -> dict:
  """Another framework's weights (``cfg.init_from``) converted for ``model``.

  The source keeps its own head: it is converted into ``model`` with the
  source's number of classes, and the merge decides what loads. Announced
  with the file's size, then a done line (``logging.Phase``).
  """
  path = os.path.expanduser(cfg.init_from.split(':', 1)[-1])
  size = (f'{os.path.getsize(path) / 1e6:,.1f} MB' if os.path.isfile(path)
          else '')
  with log_lib.Phase(f'init_from: reading and converting {cfg.init_from} '
                     f'into {cfg.model}', detail=size, progress=cfg.progress):
    return foreign_model(cfg, model)[1]


def foreign_model(cfg: Config, model) -> tuple[Any, dict]:
  """``(source model, its variables)``: ``model`` with the source's head."""
  from dlresearch import weights  # pylint: disable=g-import-not-at-top
  from dlresearch.weights import convert  # pylint: disable=g-import-not-at-top
  spec = cfg.init_from
  state = weights.read(spec)
  name = cfg.model
  hf_config = _hf_config(spec[len('hf:'):]) if spec.startswith('hf:') else {}
  if hf_config.get('model_type') in ('llama', 'gpt2'):
    return _hf_decoder(spec, model, state, hf_config)
  if name.startswith('bert'):
    state = convert.hf_bert_state(state)
    source = (_hf_source_model(spec[len('hf:'):], model)
              if spec.startswith('hf:') else model.clone(num_classes=None))
    head = state.get('classifier.weight')
    source = source.clone(num_classes=None if head is None else head.shape[0])
    return source, convert.bert(state, source)
  families = (('resnet', convert.resnet, 'fc.weight'),
              ('vgg', convert.vgg, 'classifier.6.weight'),
              ('mobilenet_v2', convert.mobilenet_v2, 'classifier.1.weight'))
  for prefix, converter, head_key in families:
    if name.startswith(prefix):
      if head_key not in state:
        raise ConfigError('init_from', f'{spec} has no {head_key}: not a '
                          f'torchvision {prefix} state dict')
      source = model.clone(num_classes=state[head_key].shape[0])
      return source, converter(state, source)
  raise ConfigError('init_from', f'no converter for --model={name} (converted '
                    'weights load into resnet*, vgg*, mobilenet_v2 and bert*)')


# ---------------------------------------------------------------------------
# The merge.


def merge(target: dict, source: dict, new_head: str = '') -> tuple[dict, dict]:
  """Loads ``source`` into ``target`` (variable trees with collections).

  Returns ``(merged, report)``; ``report`` has the sorted path lists
  ``loaded``, ``new`` and ``skipped``. Target leaves may be jax arrays (the
  loaded values are put on the same sharding) or NumPy arrays.

  Raises:
    ConfigError: a target variable outside ``new_head`` is missing from the
      source or has another shape there (naming the path and both shapes).
  """
  pattern = re.compile(new_head) if new_head else None
  flat_t, flat_s = _flat(target), _flat(source)
  if pattern is not None and not any(
      pattern.search(p.split('/', 1)[1]) for p in flat_t):
    raise ConfigError('new_head', f'{new_head!r} matches no parameter of the '
                      'model')
  loaded, new = [], []
  for path, value in flat_t.items():
    param_path = path.split('/', 1)[1]
    if pattern is not None and pattern.search(param_path):
      new.append(path)
      continue
    if path not in flat_s and path.rsplit('/', 1)[-1] in ('lora_a', 'lora_b'):
      new.append(path)  # LoRA adapters start fresh on pretrained weights
      continue
    if path not in flat_s:
      raise ConfigError('init_from', f'{path} is not in the source; add it to '
                        '--new_head to initialise it fresh')
    src = np.asarray(flat_s[path])
    if src.shape != tuple(value.shape):
      raise ConfigError('init_from', f'{path} has shape {src.shape} in the '
                        f'source but {tuple(value.shape)} in the model; '
                        'use --new_head to replace it')
    src = src.astype(value.dtype)
    sharding = getattr(value, 'sharding', None)
    flat_t[path] = jax.device_put(src, sharding) if sharding else src
    loaded.append(path)
  skipped = sorted(set(flat_s) - set(loaded))
  report = {'loaded': sorted(loaded), 'new': sorted(new), 'skipped': skipped}
  return flax.traverse_util.unflatten_dict(flat_t, sep='/'), report


def describe(report: dict, path: str) -> str:
  """The report in one line, each path in one place: a new head's paths are
  "fresh" (the source's variables at those paths, of another shape, are not
  listed again as skipped); "skipped" are the source's other leftovers."""
  new = report['new']
  replaced = set(new) & set(report['skipped'])
  leftover = [p for p in report['skipped'] if p not in replaced]
  text = (f'init_from {report["source"]}: loaded {len(report["loaded"])} '
          f'variables; {len(new)} initialised fresh '
          f'({", ".join(new) or "none"})')
  if replaced:
    text += (f', replacing the source\'s {len(replaced)} at the same '
             f'path{"s" if len(replaced) > 1 else ""}')
  return (f'{text}; {len(leftover)} source variable'
          f'{"s" if len(leftover) != 1 else ""} the model does not take, '
          f'skipped ({", ".join(leftover) or "none"}); details in {path}')


def initialize(cfg: Config, model, params, model_state, workdir: str,
               write: bool = True) -> tuple[Any, Any, dict]:
  """``(params, model_state, report)`` with ``cfg.init_from`` loaded.

  Logs the report at WARNING level and writes ``WORKDIR/init_report.json``
  (with ``write``; process 0 only).
  """
  if is_foreign(cfg.init_from):
    from dlresearch.weights.errors import WeightsError  # pylint: disable=g-import-not-at-top
    try:
      source = foreign_variables(cfg, model)
    except WeightsError as e:
      raise ConfigError('init_from', str(e)) from None
  else:
    source = run_variables(cfg)
  target = {'params': params, **model_state}
  merged, report = merge(target, source, cfg.new_head)
  report = {'source': cfg.init_from, 'model': cfg.model, **report}
  logging.warning('%s', describe(report, os.path.join(workdir, REPORT_FILE)))
  if write and jax.process_index() == 0:
    path = os.path.join(workdir, REPORT_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump(report, f, indent=1)
    os.replace(path + '.tmp', path)
  params = merged.pop('params')
  if adapters_only(cfg):
    _record_base(cfg, source, params, workdir, write)
  return params, merged, report


# ---------------------------------------------------------------------------
# --lora_save=adapters: the frozen base, recorded and put back.


def adapters_only(cfg: Config) -> bool:
  """Whether the run's checkpoints hold only its trained parameters."""
  return bool(cfg.lora_rank) and cfg.lora_save == 'adapters'


def _fingerprint(flat: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for path in sorted(flat):
    value = np.ascontiguousarray(flat[path])
    digest.update(f'{path}|{value.dtype.str}|{value.shape}\n'.encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def frozen_paths(cfg: Config, params) -> list[str]:
  """The '/'-joined paths (without 'params/') of the parameters that do not
  train; ``state.to_checkpoint`` leaves them out under adapters-only."""
  from dlresearch import optim  # pylint: disable=g-import-not-at-top
  mask = optim.trainable(cfg, params)
  return sorted(p for p, t in _flat(mask).items() if not t) if mask else []


def _record_base(cfg: Config, source: dict, params, workdir: str,
                 write: bool) -> None:
  flat_s, flat_p = _flat(source), _flat(params)
  base = {}
  for path in frozen_paths(cfg, params):
    if 'params/' + path not in flat_s:
      raise ConfigError('lora_save', f'adapters: {path} is frozen but not '
                        'loaded from --init_from, so it could not be restored')
    base[path] = np.asarray(flat_s['params/' + path]).astype(flat_p[path].dtype)
  spec = cfg.init_from  # made absolute: restored from any directory
  kind, _, path = spec.partition(':') if is_foreign(spec) else ('', '', spec)
  spec = (kind + ':' if kind else '') + os.path.abspath(os.path.expanduser(path))
  record = {'init_from': spec, 'sha256': _fingerprint(base),
            'params': {p: {'shape': list(v.shape), 'dtype': v.dtype.name}
                       for p, v in base.items()}}
  if write and jax.process_index() == 0:
    path = os.path.join(workdir, BASE_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=1)
    os.replace(path + '.tmp', path)


def complete(cfg: Config, model, params, workdir: str, like=None):
  """``params`` of an adapters-only checkpoint with the frozen base put back.

  The base is re-read from the ``--init_from`` recorded in
  ``WORKDIR/lora_base.json`` and must have the recorded sha256. ``like``: a
  tree of the full params whose leaves' shardings the base is put on (else
  host NumPy arrays). Params that already hold the base come back as they
  are. Raises ConfigError (one line) for a missing record or a missing,
  unreadable or changed base.
  """
  flat = _flat(params)
  path = os.path.join(workdir, BASE_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    spec, want, shapes = record['init_from'], record['sha256'], record['params']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError('lora_save', f'{workdir} saved only LoRA adapters '
                      f'but its {BASE_FILE}, naming the base, is unreadable '
                      f'({type(e).__name__}: {e})') from None
  missing = [p for p in shapes if p not in flat]
  if not missing:
    return params
  what = f'the base of the adapters-only LoRA run {workdir}, --init_from={spec},'
  why = describe_source(spec)
  if why is None:
    try:
      source = _flat(foreign_variables(cfg.replace(init_from=spec), model)
                     if is_foreign(spec) else
                     run_variables(cfg.replace(init_from=spec)))
    except Exception as e:  # pylint: disable=broad-exception-caught
      why = ' '.join(str(e).split())[:300] or type(e).__name__
  if why is not None:
    raise ConfigError('init_from', f'{what} cannot be read ({why}); put the '
                      'original base back at that path')
  base = {}
  for p, meta in shapes.items():
    value = source.get('params/' + p)
    if value is None or list(np.shape(value)) != meta['shape']:
      raise ConfigError('init_from', f'{what} has changed: {p} is '
                        f'{"missing" if value is None else "reshaped"}; put '
                        'the original base back at that path')
    base[p] = np.asarray(value).astype(meta['dtype'])
  got = _fingerprint(base)
  if got != want:
    raise ConfigError('init_from', f'{what} has changed (sha256 {got[:12]} '
                      f'now, {want[:12]} when trained); put the original '
                      'base back at that path')
  shardings = {p: getattr(v, 'sharding', None) for p, v in _flat(like).items()} if like else {}
  for p in missing:
    sharding = shardings.get(p)
    flat[p] = jax.device_put(base[p], sharding) if sharding else base[p]
  return flax.traverse_util.unflatten_dict(flat, sep='/')
