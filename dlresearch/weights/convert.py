"""Convert torchvision / Hugging Face state dicts to our flax variable trees.

Each converter takes the flat state dict (``dlresearch.weights.read``) and
the flax module it is for, and returns ``{'params': ..., 'batch_stats': ...}``
(only the collections the model has) as NumPy arrays, ready for
``model.apply``. The model's variable names and shapes come from
``jax.eval_shape`` of its ``init`` (nothing is initialised); each variable
is looked up under its torch name and put in flax's layout:

==========================  ==========================  =====================
torch                       flax                        layout
==========================  ==========================  =====================
Conv2d ``weight``           Conv ``kernel``             OIHW -> HWIO
Linear ``weight``           Dense ``kernel``            (out, in) -> (in, out)
BatchNorm ``weight/bias``   ``params`` ``scale/bias``
``running_mean/var``        ``batch_stats`` ``mean/var``
Embedding ``weight``        Embed ``embedding``
==========================  ==========================  =====================

A tensor that is missing, or whose shape does not fit, raises
``WeightsError`` naming the torch key; so does a tensor the model has no
place for (``num_batches_tracked`` and HF's ``position_ids`` are ignored).
"""

from collections.abc import Callable, Mapping
import fnmatch
import re
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from dlresearch.weights.errors import WeightsError

Path = tuple[str, ...]
# (flax path) -> (torch key, fn(torch array, flax shape) -> flax array).
Rule = Callable[[Path], tuple[str, Callable[[np.ndarray, tuple], np.ndarray]]]

IMAGE_INPUT = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
TOKEN_INPUT = jax.ShapeDtypeStruct((1, 8), jnp.int32)


def abstract_variables(model: nn.Module, example: Any) -> dict[str, Any]:
  """The model's variables as ``ShapeDtypeStruct``s (nothing is computed)."""
  return jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), example)


def from_torch(state: Mapping[str, np.ndarray], abstract: Mapping[str, Any],
               rule: Rule, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
  """Fills every leaf of ``abstract`` from ``state`` as ``rule`` says.

  ``ignore`` holds fnmatch patterns of torch keys the model may leave unused.
  """
  out, used = {}, set()
  for path, leaf in traverse_util.flatten_dict(dict(abstract)).items():
    key, fn = rule(path)
    where = '/'.join(path)
    if key not in state:
      raise WeightsError(
          f'torch tensor {key!r} (for {where}) is missing from the state dict')
    used.add(key)
    source = np.asarray(state[key])
    try:
      value = fn(source, tuple(leaf.shape))
    except ValueError:
      value = None
    if value is None or value.shape != tuple(leaf.shape):
      raise WeightsError(
          f'torch tensor {key!r} has shape {source.shape}, which does not fit '
          f'{where} of shape {tuple(leaf.shape)}')
    out[path] = np.asarray(value, leaf.dtype)
  unused = sorted(k for k in state if k not in used
                  and not any(fnmatch.fnmatchcase(k, p) for p in ignore))
  if unused:
    raise WeightsError(
        f'{len(unused)} torch tensors have no place in the model: '
        f'{", ".join(unused[:6])}{", ..." if len(unused) > 6 else ""}')
  return traverse_util.unflatten_dict(out)


# ---------------------------------------------------------------- layouts --


def _kernel(w: np.ndarray, shape: tuple) -> np.ndarray:
  del shape
  if w.ndim == 4:  # Conv2d OIHW -> HWIO (depthwise: (C,1,h,w) -> (h,w,1,C)).
    return w.transpose(2, 3, 1, 0)
  if w.ndim == 2:  # Linear (out, in) -> Dense (in, out).
    return w.T
  raise ValueError(f'no kernel layout for rank {w.ndim}')


def _same(w: np.ndarray, shape: tuple) -> np.ndarray:
  del shape
  return w


# flax leaf name -> (torch parameter name, layout).
_LEAVES = {
    'kernel': ('weight', _kernel),
    'bias': ('bias', _same),
    'scale': ('weight', _same),
    'mean': ('running_mean', _same),
    'var': ('running_var', _same),
    'embedding': ('weight', _same),
}
_BN_IGNORE = ('*num_batches_tracked',)


def _module_rule(module_map: Callable[[Path], str],
                 special: Mapping[str, Callable] | None = None) -> Rule:
  """A rule from a map (flax module path -> torch module) and leaf names."""

  def rule(path: Path):
    modules, leaf = path[1:-1], path[-1]
    if leaf not in _LEAVES:
      raise WeightsError(f'no torch name for the flax variable {"/".join(path)}')
    prefix = module_map(modules)
    name, fn = _LEAVES[leaf]
    if special and (prefix, leaf) in special:
      fn = special[prefix, leaf]
    return f'{prefix}.{name}', fn

  return rule


def _unknown(modules: Path) -> WeightsError:
  return WeightsError(f'no torch name for the flax module {"/".join(modules)}')


# ----------------------------------------------------------------- ResNet --

_RESNET_BLOCK = {'proj_conv': 'downsample.0', 'proj_bn': 'downsample.1'}


def _resnet_module(modules: Path) -> str:
  top = modules[0]
  if top in ('stem_conv', 'stem_bn', 'head'):
    return {'stem_conv': 'conv1', 'stem_bn': 'bn1', 'head': 'fc'}[top]
  m = re.fullmatch(r'stage(\d+)_block(\d+)', top)
  if m and len(modules) == 2:
    inner = _RESNET_BLOCK.get(modules[1], modules[1])
    return f'layer{m[1]}.{int(m[2]) - 1}.{inner}'
  raise _unknown(modules)


def resnet(state: Mapping[str, np.ndarray], model: nn.Module) -> dict:
  """torchvision ``resnet18``..``resnet152`` -> ``dlresearch.models.cnn.ResNet``.

  Names: ``conv1``/``bn1`` -> ``stem_conv``/``stem_bn``, ``layer{i}.{j}.*``
  -> ``stage{i}_block{j+1}/*`` (``downsample.0/1`` -> ``proj_conv/bn``),
  ``fc`` -> ``head``.
  """
  return from_torch(state, abstract_variables(model, IMAGE_INPUT),
                    _module_rule(_resnet_module), _BN_IGNORE)


# -------------------------------------------------------------------- VGG --


def vgg(state: Mapping[str, np.ndarray], model: nn.Module) -> dict:
  """torchvision ``vgg11``/``vgg16`` (``_bn``) -> ``dlresearch.models.vgg.VGG``.

  ``features.{i}`` (conv, then BN in the ``_bn`` variants) -> ``conv{k}``/
  ``bn{k}``, ``classifier.0/3/6`` -> ``fc1``/``fc2``/``head``; ``fc1``'s
  input is permuted from torch's CHW flattening to our HWC.
  """
  names, index, k = {}, 0, 0
  for layer in model.layers:
    if layer == 'M':
      index += 1
      continue
    k += 1
    names[f'conv{k}'] = f'features.{index}'
    if model.batch_norm:
      names[f'bn{k}'] = f'features.{index + 1}'
    index += 3 if model.batch_norm else 2
  names.update(fc1='classifier.0', fc2='classifier.3', head='classifier.6')
  pool = model.pool_size

  def fc1_kernel(w, shape):
    del shape
    out = w.shape[0]
    return w.reshape(out, -1, pool, pool).transpose(2, 3, 1, 0).reshape(-1, out)

  def module(modules):
    if modules[0] not in names:
      raise _unknown(modules)
    return names[modules[0]]

  rule = _module_rule(module, {('classifier.0', 'kernel'): fc1_kernel})
  return from_torch(state, abstract_variables(model, IMAGE_INPUT), rule,
                    _BN_IGNORE)


# ------------------------------------------------------------ MobileNetV2 --


def mobilenet_v2(state: Mapping[str, np.ndarray], model: nn.Module) -> dict:
  """torchvision ``mobilenet_v2`` -> ``dlresearch.models.mobilenet.MobileNetV2``.

  ``features.0`` -> ``stem_*``; ``features.{k}.conv`` -> ``block{k}``: with
  an expansion ``0.0/0.1`` -> ``expand_conv/bn``, ``1.0/1.1`` ->
  ``dw_conv/bn``, ``2``/``3`` -> ``project_conv/bn`` (block 1 has no
  expansion, so its indices start one lower); ``features.18`` ->
  ``final_*``; ``classifier.1`` -> ``head``.
  """
  abstract = abstract_variables(model, IMAGE_INPUT)
  expands = {name for name, sub in abstract['params'].items()
             if 'expand_conv' in sub}
  top = {'stem_conv': 'features.0.0', 'stem_bn': 'features.0.1',
         'final_conv': 'features.18.0', 'final_bn': 'features.18.1',
         'head': 'classifier.1'}

  def module(modules):
    if modules[0] in top and len(modules) == 1:
      return top[modules[0]]
    m = re.fullmatch(r'block(\d+)', modules[0])
    if m and len(modules) == 2:
      parts = ['expand_conv', 'expand_bn', 'dw_conv', 'dw_bn', 'project_conv',
               'project_bn']
      torch = ['0.0', '0.1', '1.0', '1.1', '2', '3']
      if modules[0] not in expands:
        parts, torch = parts[2:], ['0.0', '0.1', '1', '2']
      if modules[1] in parts:
        return f'features.{m[1]}.conv.{torch[parts.index(modules[1])]}'
    raise _unknown(modules)

  return from_torch(state, abstract, _module_rule(module), _BN_IGNORE)


# ------------------------------------------------------------- HF BERT --

_BERT_TOP = {
    'token_embed': 'embeddings.word_embeddings',
    'pos_embed': 'embeddings.position_embeddings',
    'token_type_embed': 'embeddings.token_type_embeddings',
    'embed_norm': 'embeddings.LayerNorm',
    'pooler': 'pooler.dense',
    'head': 'classifier',
}
_BERT_BLOCK = {
    'attn/query': 'attention.self.query',
    'attn/key': 'attention.self.key',
    'attn/value': 'attention.self.value',
    'attn/out': 'attention.output.dense',
    'ln_attn': 'attention.output.LayerNorm',
    'mlp/fc1': 'intermediate.dense',
    'mlp/fc2': 'output.dense',
    'ln_mlp': 'output.LayerNorm',
}


def hf_bert_state(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Normalises HF BERT names: drops a ``bert.`` prefix, gamma/beta -> weight/bias."""
  if ('embeddings.word_embeddings.weight' not in state
      and 'bert.embeddings.word_embeddings.weight' in state):
    state = {k[len('bert.'):]: v for k, v in state.items()
             if k.startswith('bert.')}
  out = {}
  for k, v in state.items():
    k = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', k)
    out[re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', k)] = v
  return out


def bert(state: Mapping[str, np.ndarray], model: nn.Module) -> dict:
  """HF ``BertModel`` (BERT, MiniLM, ...) -> ``dlresearch.models.transformer.BERT``.

  Our BERT is HF's layout exactly (word + position + token-type embeddings,
  embedding LayerNorm, post-LN blocks, erf GELU, tanh pooler); only the
  attention kernels are reshaped, to ``[d, heads, head_dim]`` (query, key,
  value) and ``[heads, head_dim, d]`` (out). A ``head`` (``num_classes``
  set) is read from HF's ``classifier``.
  """
  state = hf_bert_state(state)

  def kernel(w, shape):  # Linear (out, in) -> (in, out) -> DenseGeneral shape.
    return w.T.reshape(shape)

  def reshape(w, shape):
    return w.reshape(shape)

  def rule(path: Path):
    modules, leaf = path[1:-1], path[-1]
    if modules[0] in _BERT_TOP and len(modules) == 1:
      prefix = _BERT_TOP[modules[0]]
    else:
      m = re.fullmatch(r'block_(\d+)', modules[1]) if len(modules) > 2 else None
      inner = '/'.join(modules[2:])
      if modules[0] != 'encoder' or not m or inner not in _BERT_BLOCK:
        raise _unknown(modules)
      prefix = f'encoder.layer.{m[1]}.{_BERT_BLOCK[inner]}'
    if leaf in ('embedding', 'scale'):
      return f'{prefix}.weight', _same
    if leaf == 'kernel':
      return f'{prefix}.weight', kernel
    if leaf == 'bias':
      return f'{prefix}.bias', reshape
    raise WeightsError(f'no torch name for the flax variable {"/".join(path)}')

  return from_torch(state, abstract_variables(model, TOKEN_INPUT), rule,
                    ('embeddings.position_ids',))


# -------------------------------------------------- Hugging Face decoders --


def hf_decoder_kwargs(hf_config: Mapping[str, Any]) -> dict[str, Any]:
  """``TransformerLM`` arguments of a HF Llama or GPT-2 ``config.json``.

  Raises WeightsError for another architecture or a setting our model lacks.
  """
  kind = hf_config.get('model_type')
  try:
    if kind == 'llama':
      d, heads = hf_config['hidden_size'], hf_config['num_attention_heads']
      if hf_config.get('head_dim', d // heads) != d // heads:
        raise WeightsError(f'head_dim={hf_config["head_dim"]} != hidden_size / '
                           'num_attention_heads is not supported')
      # transformers >= 5 writes rope_parameters; older ones rope_theta and
      # rope_scaling.
      rope = dict(hf_config.get('rope_parameters') or {})
      rope_type = rope.get('rope_type', 'default')
      if hf_config.get('rope_scaling') or rope_type != 'default':
        raise WeightsError(f'RoPE scaling ({rope_type}) is not supported (plain '
                           'RoPE only)')
      theta = rope.get('rope_theta', hf_config.get('rope_theta', 10000.0))
      if hf_config.get('hidden_act', 'silu') != 'silu':
        raise WeightsError(f'hidden_act={hf_config["hidden_act"]!r}: only silu')
      if hf_config.get('attention_bias', False) != hf_config.get('mlp_bias', False):
        raise WeightsError('attention_bias and mlp_bias must agree')
      return dict(
          vocab_size=hf_config['vocab_size'], num_layers=hf_config['num_hidden_layers'],
          d_model=d, num_heads=heads,
          num_kv_heads=hf_config.get('num_key_value_heads') or heads,
          mlp_dim=hf_config['intermediate_size'], positions='rotary',
          rotary_base=float(theta), norm='rms',
          gated_mlp=True, activation='silu',
          use_bias=bool(hf_config.get('attention_bias', False)),
          layer_norm_epsilon=hf_config.get('rms_norm_eps', 1e-6),
          tie_embeddings=bool(hf_config.get('tie_word_embeddings', False)))
    if kind == 'gpt2':
      act = hf_config.get('activation_function', 'gelu_new')
      if act not in ('gelu_new', 'gelu_pytorch_tanh'):
        raise WeightsError(f'activation_function={act!r}: only gelu_new')
      d = hf_config['n_embd']
      return dict(
          vocab_size=hf_config['vocab_size'], num_layers=hf_config['n_layer'],
          d_model=d, num_heads=hf_config['n_head'],
          mlp_dim=hf_config.get('n_inner') or 4 * d,
          max_len=hf_config['n_positions'], positions='learned',
          activation='gelu_tanh', norm='layer', use_bias=True,
          layer_norm_epsilon=hf_config.get('layer_norm_epsilon', 1e-5),
          tie_embeddings=bool(hf_config.get('tie_word_embeddings', True)))
  except KeyError as e:
    raise WeightsError(f'config.json lacks {e.args[0]!r}') from None
  raise WeightsError(f'model_type={kind!r}: HF decoders load from llama or '
                     'gpt2 configs')


def _prefixed(state: Mapping[str, np.ndarray], prefix: str,
              probe: str) -> dict[str, np.ndarray]:
  """``state`` with ``prefix`` added when it holds the bare base model."""
  if prefix + probe not in state and probe in state:
    return {prefix + k: v for k, v in state.items()}
  return dict(state)


def _heads_in(w, shape):  # Linear (out = heads*hd, in) -> [in, heads, hd].
  return w.T.reshape(shape)


def llama(state: Mapping[str, np.ndarray], model: nn.Module) -> dict:
  """HF ``LlamaForCausalLM``/``LlamaModel`` -> a ``llama*`` ``TransformerLM``.

  HF stores q/k so that ``rotate_half`` pairs channel ``i`` with ``i +
  head_dim/2``, as our ``rotary_embedding`` does, so the projections only
  change layout: ``q_proj [heads*hd, d]`` -> ``query [d, heads, hd]``,
  ``o_proj [d, heads*hd]`` -> ``out [heads, hd, d]``, MLP and ``lm_head``
  transposed, RMSNorm ``weight`` -> ``scale``.
  """
  state = _prefixed(state, 'model.', 'embed_tokens.weight')
  block = {'attn/query': 'self_attn.q_proj', 'attn/key': 'self_attn.k_proj',
           'attn/value': 'self_attn.v_proj', 'attn/out': 'self_attn.o_proj',
           'mlp/gate': 'mlp.gate_proj', 'mlp/up': 'mlp.up_proj',
           'mlp/down': 'mlp.down_proj', 'ln_attn': 'input_layernorm',
           'ln_mlp': 'post_attention_layernorm'}

  def rule(path: Path):
    modules, leaf = path[1:-1], path[-1]
    top = {('token_embed',): 'model.embed_tokens', ('lm_head',): 'lm_head',
           ('transformer', 'ln_final'): 'model.norm'}
    if modules in top:
      prefix = top[modules]
    else:
      m = re.fullmatch(r'block_(\d+)', modules[1]) if len(modules) > 2 else None
      inner = '/'.join(modules[2:])
      if modules[0] != 'transformer' or not m or inner not in block:
        raise _unknown(modules)
      prefix = f'model.layers.{m[1]}.{block[inner]}'
    if leaf in ('embedding', 'scale'):
      return f'{prefix}.weight', _same
    if leaf == 'kernel' and modules[-1] == 'out':
      return f'{prefix}.weight', lambda w, shape: w.T.reshape(shape)
    if leaf == 'kernel':
      return f'{prefix}.weight', _heads_in
    if leaf == 'bias':
      return f'{prefix}.bias', lambda w, shape: w.reshape(shape)
    raise WeightsError(f'no torch name for the flax variable {"/".join(path)}')

  ignore = ('model.rotary_emb.inv_freq', 'model.layers.*.self_attn.rotary_emb.inv_freq')
  if getattr(model, 'tie_embeddings', False):
    ignore += ('lm_head.weight',)
  return from_torch(state, abstract_variables(model, TOKEN_INPUT), rule, ignore)


def gpt2(state: Mapping[str, np.ndarray], model: nn.Module) -> dict:
  """HF ``GPT2LMHeadModel``/``GPT2Model`` -> a GPT-2 ``TransformerLM``.

  GPT-2's ``Conv1D`` weights are already ``(in, out)``; ``c_attn`` holds
  query, key and value side by side (split into thirds), ``wpe`` is the
  learned position table, and the head is tied to ``wte``.
  """
  state = _prefixed(state, 'transformer.', 'wte.weight')
  d = model.d_model
  block = {'ln_attn': 'ln_1', 'ln_mlp': 'ln_2', 'attn/out': 'attn.c_proj',
           'mlp/fc1': 'mlp.c_fc', 'mlp/fc2': 'mlp.c_proj'}
  qkv = {'attn/query': 0, 'attn/key': 1, 'attn/value': 2}
  norm = {'scale': 'weight', 'bias': 'bias'}

  def rule(path: Path):
    modules, leaf = path[1:-1], path[-1]
    top = {('token_embed',): 'transformer.wte', ('pos_embed',): 'transformer.wpe',
           ('transformer', 'ln_final'): 'transformer.ln_f'}
    if modules in top:
      return f'{top[modules]}.{norm.get(leaf, "weight")}', _same
    m = re.fullmatch(r'block_(\d+)', modules[1]) if len(modules) > 2 else None
    inner = '/'.join(modules[2:])
    if modules[0] != 'transformer' or not m or inner not in {**block, **qkv}:
      raise _unknown(modules)
    layer = f'transformer.h.{m[1]}'
    if inner in qkv:
      part = slice(qkv[inner] * d, (qkv[inner] + 1) * d)
      if leaf == 'kernel':
        return f'{layer}.attn.c_attn.weight', lambda w, shape: w[:, part].reshape(shape)
      return f'{layer}.attn.c_attn.bias', lambda w, shape: w[part].reshape(shape)
    prefix = f'{layer}.{block[inner]}'
    if inner.startswith('ln_'):
      return f'{prefix}.{norm[leaf]}', _same
    return f'{prefix}.{"weight" if leaf == "kernel" else "bias"}', (
        lambda w, shape: w.reshape(shape))

  ignore = ('lm_head.weight', 'transformer.h.*.attn.bias',
            'transformer.h.*.attn.masked_bias')
  return from_torch(state, abstract_variables(model, TOKEN_INPUT), rule, ignore)
