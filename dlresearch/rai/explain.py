"""Attributions for trained models: gradients, Grad-CAM, attention rollout.

Gradient methods take ``fn``: a function from a batch ``x [B, ...]`` to one
scalar per example ``[B]`` (e.g. ``lambda x: model.apply(v, x)[:, c]``).
Examples must not interact inside ``fn`` (eval mode: no batch statistics),
so the gradient of ``fn(x).sum()`` is every example's own gradient. Each
method is one ``jax.jit`` program, cached per ``fn`` object. Arrays that
``fn`` closes over become compile-time constants; for a large model pass
``jax.tree_util.Partial(f, variables)`` (with ``f(variables, x)``) instead,
which makes the variables traced arguments.

- ``saliency``: d fn / d x (Simonyan et al. 2014), signed.
- ``smoothgrad``: the mean gradient over noisy copies (Smilkov et al. 2017).
- ``integrated_gradients``: (x - baseline) times the path-averaged gradient
  (Sundararajan et al. 2017), with the completeness gap per example.
- ``grad_cam``: Grad-CAM (Selvaraju et al. 2017) at any submodule of a flax
  model, found by its path (no change to the model needed).
- ``attention_rollout``: Abnar & Zuidema 2020.
- ``token_attributions``: integrated gradients on the output of a text
  model's token embedding, summed over the embedding dimension.

Renderers: ``overlay_png`` (heatmap over an image), ``tokens_html`` and
``tokens_html_page`` (several examples on one page).
"""

from collections.abc import Callable, Sequence
import functools
import html
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScalarFn = Callable[[Array], Array]


def _check_scalar_per_example(y: Array, batch: int) -> None:
  if y.shape != (batch,):
    raise ValueError(f'fn must map a batch of {batch} to shape ({batch},); '
                     f'got {y.shape}')


def _grad(fn: ScalarFn, x: Array) -> Array:
  def total(z):
    y = fn(z)
    _check_scalar_per_example(y, z.shape[0])
    return jnp.sum(y)
  return jax.grad(total)(x)


def _as_partial(fn: ScalarFn) -> jax.tree_util.Partial:
  """``fn`` as a pytree: its bound arrays are leaves, the function static."""
  if isinstance(fn, jax.tree_util.Partial):
    return fn
  return jax.tree_util.Partial(fn)


def saliency(fn: ScalarFn, x: Array) -> Array:
  """Gradient of ``fn`` at each example, same shape as ``x``."""
  return _saliency(_as_partial(fn), x)


@jax.jit
def _saliency(fn, x):
  return _grad(fn, jnp.asarray(x, jnp.float32))


def smoothgrad(fn: ScalarFn, x: Array, *, rng: Array, num_samples: int = 25,
               sigma: float = 0.15) -> Array:
  """SmoothGrad: the mean gradient over ``x + noise``.

  The noise is Gaussian with standard deviation ``sigma`` times each
  example's value range (max - min), the paper's "noise level". Samples are
  drawn one at a time in a loop (memory of one gradient) from
  ``fold_in(rng, i)``: the same ``rng`` gives the same result.
  """
  return _smoothgrad(_as_partial(fn), x, rng, num_samples, sigma)


@functools.partial(jax.jit, static_argnums=3)
def _smoothgrad(fn, x, rng, num_samples, sigma):
  x = jnp.asarray(x, jnp.float32)
  axes = tuple(range(1, x.ndim))
  scale = sigma * (jnp.max(x, axes, keepdims=True)
                   - jnp.min(x, axes, keepdims=True))

  def body(i, acc):
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    return acc + _grad(fn, x + scale * noise)

  total = jax.lax.fori_loop(0, num_samples, body, jnp.zeros_like(x))
  return total / num_samples


def _path_weights(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
  """Interpolation points alpha in [0, 1] and their quadrature weights."""
  if method == 'trapezoid':
    alphas = np.linspace(0.0, 1.0, steps + 1)
    weights = np.full(steps + 1, 1.0 / steps)
    weights[[0, -1]] /= 2
  elif method == 'midpoint':
    alphas = (np.arange(steps) + 0.5) / steps
    weights = np.full(steps, 1.0 / steps)
  else:
    raise ValueError(f"unknown method {method!r}; use 'trapezoid' or "
                     "'midpoint'")
  return alphas.astype(np.float32), weights.astype(np.float32)


def integrated_gradients(fn: ScalarFn, x: Array, *,
                         baseline: Array | None = None, steps: int = 64,
                         method: str = 'trapezoid') -> tuple[Array, Array]:
  """Integrated gradients along the straight path from ``baseline`` to ``x``.

  Args:
    fn: batch -> one scalar per example.
    x: [B, ...] inputs.
    baseline: broadcastable to ``x``; zeros when None.
    steps: number of path intervals (a loop; memory of one gradient).
    method: 'trapezoid' (steps + 1 gradient evaluations) or 'midpoint'.

  Returns:
    ``(attributions, gap)``: attributions like ``x``, and per example the
    completeness gap ``|sum(attributions) - (fn(x) - fn(baseline))|``, which
    shrinks as ``steps`` grows.
  """
  return _integrated_gradients(_as_partial(fn), x, baseline, steps, method)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _integrated_gradients(fn, x, baseline, steps, method):
  x = jnp.asarray(x, jnp.float32)
  baseline = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(
      jnp.asarray(baseline, jnp.float32), x.shape)
  alphas, weights = map(jnp.asarray, _path_weights(steps, method))
  delta = x - baseline

  def body(i, acc):
    return acc + weights[i] * _grad(fn, baseline + alphas[i] * delta)

  avg_grad = jax.lax.fori_loop(0, len(alphas), body, jnp.zeros_like(x))
  attributions = delta * avg_grad
  change = fn(x) - fn(baseline)
  total = jnp.sum(attributions.reshape(x.shape[0], -1), axis=1)
  return attributions, jnp.abs(total - change)


# --------------------------------------------------------- layer hooks --


def _path_name(module: nn.Module) -> str:
  return '/'.join(module.path)


def _apply_with_hook(model: nn.Module, variables, x, layer: str,
                     hook: Callable[[Array], Array], apply_kwargs):
  """``model.apply`` with the output of submodule ``layer`` mapped by hook.

  ``layer`` is the module's path of names joined by '/' (e.g. 'conv2',
  'stage4_block2', 'encoder/layer_0'). Only its first call is hooked.
  """
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == '__call__' and not seen
        and _path_name(context.module) == layer):
      seen.append(True)
      out = hook(out)
    return out

  with nn.intercept_methods(interceptor):
    out = model.apply(variables, x, **apply_kwargs)
  if not seen:
    raise ValueError(f'no submodule at path {layer!r} was called; see '
                     'module_paths(model, variables, x) for the names')
  return out


def module_paths(model: nn.Module, variables, x, **apply_kwargs) -> list[str]:
  """Paths of the submodules a forward pass calls (valid ``layer`` values)."""
  paths = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      name = _path_name(context.module)
      if name and name not in paths:
        paths.append(name)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(functools.partial(model.apply, **apply_kwargs), variables,
                   x)
  return paths


def feature_map_layers(model: nn.Module, variables, x,
                       **apply_kwargs) -> list[str]:
  """Paths of the submodules whose output is a ``[B, h, w, K]`` feature map
  (Grad-CAM candidates), in call order; the last is the usual choice."""
  out = []
  for path in module_paths(model, variables, x, **apply_kwargs):
    shape = _layer_shape(model, variables, x, path, apply_kwargs)
    if len(shape.shape) == 4:
      out.append(path)
  return out


def _layer_shape(model, variables, x, layer, apply_kwargs):
  shapes = []

  def run(v, z):
    def hook(a):
      shapes.append(jax.ShapeDtypeStruct(a.shape, a.dtype))
      return a
    return _apply_with_hook(model, v, z, layer, hook, apply_kwargs)

  jax.eval_shape(run, variables, x)
  return shapes[0]


def _split_kwargs(kwargs) -> tuple[tuple[tuple[str, Any], ...], dict]:
  """(hashable non-array kwargs as sorted items, array kwargs)."""
  arrays = {k: v for k, v in kwargs.items()
            if isinstance(v, (jax.Array, np.ndarray))}
  static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in arrays))
  return static, arrays


def _target_logit(logits: Array, target) -> Array:
  """[B] logits of the target classes (predicted class when None)."""
  if target is None:
    target = jnp.argmax(logits, -1)
  target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), logits.shape[:1])
  return jnp.take_along_axis(logits, target[:, None], 1)[:, 0]


def grad_cam(model: nn.Module, variables, x: Array, *, layer: str,
             target: int | Array | None = None, resize: bool = True,
             normalize: bool = True, **apply_kwargs) -> Array:
  """Grad-CAM heatmaps ``[B, H, W]`` at submodule ``layer`` of a CNN.

  ``A = output of layer`` ([B, h, w, K], NHWC); ``w_k`` = spatial mean of
  d logit[target] / d A_k; heatmap = ReLU(sum_k w_k A_k). The gradient is
  taken by adding a zero perturbation to the layer's output through
  ``flax.linen.intercept_methods``, so the model itself needs no change.

  For ``cnn.ResNet`` the block paths (``stage4_block2``: the block output,
  after its ReLU) are the natural layers; for ``cnn.LeNet5`` the module
  ``conv2`` is the convolution *before* its ReLU (the ReLU is a function,
  not a module).

  Args:
    model: a flax module; ``model.apply(variables, x, **apply_kwargs)``
      gives logits [B, C].
    variables: its variables (with ``batch_stats`` for BatchNorm models; eval
      mode is the default ``train=False``).
    x: [B, H, W, C] images.
    layer: the submodule path ('/'-joined names; see ``module_paths``).
    target: class per example (int or [B]); None: the predicted class.
    resize: bilinearly resize the maps to the input's H, W.
    normalize: divide each map by its maximum (maps stay >= 0).
    **apply_kwargs: passed to ``model.apply``.

  Returns:
    ``[B, H, W]`` (or ``[B, h, w]`` without ``resize``).
  """
  static, dynamic = _split_kwargs(apply_kwargs)
  return _grad_cam(model, layer, resize, normalize, static, variables,
                   jnp.asarray(x), target, dynamic)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _grad_cam(model, layer, resize, normalize, static, variables, x, target,
              dynamic):
  apply_kwargs = {**dict(static), **dynamic}
  shape = _layer_shape(model, variables, x, layer, apply_kwargs)
  if len(shape.shape) != 4:
    raise ValueError(f'layer {layer!r} gives shape {shape.shape}; Grad-CAM '
                     'needs a [B, h, w, K] feature map')

  def logit_of(delta):
    acts = []

    def hook(a):
      a = a + delta
      acts.append(a)
      return a

    logits = _apply_with_hook(model, variables, x, layer, hook, apply_kwargs)
    return jnp.sum(_target_logit(logits, target)), acts[0]

  grads, acts = jax.grad(logit_of, has_aux=True)(
      jnp.zeros(shape.shape, shape.dtype))
  weights = jnp.mean(grads.astype(jnp.float32), axis=(1, 2), keepdims=True)
  cam = jax.nn.relu(jnp.sum(weights * acts.astype(jnp.float32), axis=-1))
  if resize:
    cam = jax.image.resize(cam, (cam.shape[0], *x.shape[1:3]), 'bilinear')
    cam = jax.nn.relu(cam)
  if normalize:
    peak = jnp.max(cam, axis=(1, 2), keepdims=True)
    cam = cam / jnp.where(peak > 0, peak, 1.0)
  return cam


# ----------------------------------------------------------- attention --


@functools.partial(jax.jit, static_argnames=('head_fusion', 'residual'))
def attention_rollout(attention_weights: Sequence[Array], *,
                      head_fusion: str = 'mean',
                      residual: bool = True) -> Array:
  """Attention rollout over layers (Abnar & Zuidema 2020).

  Args:
    attention_weights: per layer, first to last, ``[B, heads, T, T]`` (or
      ``[B, T, T]``) with rows = queries summing to 1, e.g.
      ``feats['attention_weights']`` of our Transformer classifier, BERT or
      ViT applied with ``return_features=True, return_attention=True``.
    head_fusion: 'mean', 'max' or 'min' over heads.
    residual: mix in the identity for the skip connection,
      ``0.5 * A + 0.5 * I``, then renormalise rows.

  Returns:
    ``[B, T, T]``: row i is how much each input token flows into position
    i's final representation (row ``0`` for a class token).
  """
  fuse = {'mean': jnp.mean, 'max': jnp.max, 'min': jnp.min}
  if head_fusion not in fuse:
    raise ValueError(f'unknown head_fusion {head_fusion!r}; choose one of '
                     f'{sorted(fuse)}')
  rollout = None
  for a in attention_weights:
    a = jnp.asarray(a, jnp.float32)
    if a.ndim == 4:
      a = fuse[head_fusion](a, axis=1)
    if residual:
      a = 0.5 * a + 0.5 * jnp.eye(a.shape[-1], dtype=a.dtype)
      a = a / jnp.sum(a, axis=-1, keepdims=True)
    rollout = a if rollout is None else a @ rollout
  if rollout is None:
    raise ValueError('attention_weights is empty')
  return rollout


# ----------------------------------------------------------------- text --


def token_attributions(model: nn.Module, variables, tokens: Array, *,
                       target: int | Array | None = None,
                       layer: str = 'token_embed',
                       baseline: Array | None = None, steps: int = 64,
                       method: str = 'trapezoid',
                       **apply_kwargs) -> tuple[Array, Array]:
  """Integrated gradients per token, on the token embedding's output.

  The output of submodule ``layer`` (``token_embed`` in our
  TransformerClassifier and BERT) is replaced by points on the path from
  ``baseline`` (zeros: the all-zero embedding) to the real embeddings;
  attributions are summed over the embedding dimension.

  Args:
    model: the text classifier; ``model.apply(variables, tokens,
      **apply_kwargs)`` gives logits [B, C].
    variables: its variables.
    tokens: [B, T] int token ids.
    target: class per example; None: the predicted class.
    layer: path of the embedding module.
    baseline: [B, T, D] (or broadcastable) baseline embeddings.
    steps, method: as in ``integrated_gradients``.
    **apply_kwargs: e.g. ``mask=`` for padded sequences.

  Returns:
    ``(scores [B, T], gap [B])``, the gap as in ``integrated_gradients``.
  """
  tokens = jnp.asarray(tokens)
  static, dynamic = _split_kwargs(apply_kwargs)
  embedding, logits = _embedding_output(model, layer, static, variables,
                                        tokens, dynamic)
  if target is None:
    target = jnp.argmax(logits, -1)
  fn = jax.tree_util.Partial(
      functools.partial(_embedding_logit, model, layer, static),
      variables, tokens, jnp.asarray(target), dynamic)
  attr, gap = integrated_gradients(fn, embedding, baseline=baseline,
                                   steps=steps, method=method)
  return jnp.sum(attr, axis=-1), gap


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _embedding_output(model, layer, static, variables, tokens, dynamic):
  """(output of ``layer``, logits) of one forward pass."""
  embeds = []

  def grab(e):
    embeds.append(e)
    return e

  logits = _apply_with_hook(model, variables, tokens, layer, grab,
                            {**dict(static), **dynamic})
  return embeds[0], logits


def _embedding_logit(model, layer, static, variables, tokens, target,
                     dynamic, embedding):
  """Target logit [B] with ``layer``'s output replaced by ``embedding``."""
  logits = _apply_with_hook(model, variables, tokens, layer,
                            lambda _: embedding, {**dict(static), **dynamic})
  return _target_logit(logits, target)


# ------------------------------------------------------------ rendering --


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.stack([image] * 3, -1)
  if image.dtype != np.uint8:
    image = image.astype(np.float64)
    lo, hi = image.min(), image.max()
    image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    image = np.round(image * 255).astype(np.uint8)
  return image[..., :3]


def overlay_png(image: Any, heatmap: Any, path: str | os.PathLike, *,
                alpha: float = 0.5, cmap: str = 'jet',
                scale: int = 1) -> None:
  """Writes ``image`` with ``heatmap`` (resized to it) blended on top.

  ``image``: [H, W], [H, W, 1] or [H, W, 3], uint8 or float (min-max
  scaled); ``heatmap``: [h, w], min-max scaled to the colormap;
  ``scale``: nearest-neighbour upscaling of the output (small images).
  """
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rgb = _to_rgb_uint8(image)
  height, width = rgb.shape[:2]
  heat = np.asarray(heatmap, np.float64)
  lo, hi = heat.min(), heat.max()
  heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
  heat = Image.fromarray(np.float32(heat)).resize((width, height),
                                                  Image.BILINEAR)
  colored = colormaps[cmap](np.clip(np.asarray(heat), 0, 1))[..., :3] * 255
  out = (1 - alpha) * rgb + alpha * colored
  img = Image.fromarray(np.round(out).astype(np.uint8))
  if scale > 1:
    img = img.resize((width * scale, height * scale), Image.NEAREST)
  img.save(path, format='PNG')


def _token_spans(tokens: Sequence[str], scores: Any) -> str:
  scores = np.asarray(scores, np.float64).reshape(-1)
  if len(tokens) != scores.shape[0]:
    raise ValueError(f'{len(tokens)} tokens but {scores.shape[0]} scores')
  peak = np.max(np.abs(scores)) if scores.size else 0.0
  spans = []
  for token, score in zip(tokens, scores):
    strength = abs(score) / peak if peak > 0 else 0.0
    color = '255,0,0' if score > 0 else '0,0,255'
    spans.append(
        f'<span style="background-color: rgba({color},{strength:.3f});'
        f' padding: 1px 2px" title="{score:.6g}">{html.escape(str(token))}'
        '</span>')
  return ' '.join(spans)


def _page(body: str) -> str:
  return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>'
          '<body style="font-family: monospace; line-height: 1.8">\n'
          + body + '\n</body></html>\n')


def tokens_html_page(rows: Sequence[tuple[str, Sequence[str], Any]],
                     path: str | os.PathLike | None = None) -> str:
  """One HTML page of several examples: ``(caption, tokens, scores)`` each.

  Each row is shaded as in ``tokens_html`` (scaled by its own largest
  magnitude) under its caption. Returns the HTML; writes it to ``path``.
  """
  body = '\n'.join(f'<p><b>{html.escape(caption)}</b><br>\n'
                   f'{_token_spans(tokens, scores)}</p>'
                   for caption, tokens, scores in rows)
  text = _page(body)
  if path is not None:
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text)
  return text


def tokens_html(tokens: Sequence[str], scores: Any,
                path: str | os.PathLike | None = None) -> str:
  """HTML with each token shaded by its score (red > 0, blue < 0).

  Scores are scaled by the largest magnitude; each token's exact score is in
  its ``title``. Returns the HTML and writes it to ``path`` when given.
  """
  text = _page(_token_spans(tokens, scores))
  if path is not None:
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text)
  return text
