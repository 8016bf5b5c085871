"""Few-shot transfer: frozen features, leave-one-out linear probes, Grad-CAM.

For a handful of labelled images (too few to train or fine-tune on), the
honest workflow is: features of a frozen pretrained network, a linear
probe, accuracy estimated by leave-one-out with an exact binomial interval,
and a look at where the network looked.

- ``fit_probe``: L2-regularised logistic regression (scikit-learn) on
  standardised features, returned as a weight vector and bias on the *raw*
  features, so it can replace a network's head.
- ``leave_one_out``: one probe per held-out example.
- ``clopper_pearson``: the exact (Clopper-Pearson) binomial interval.
- ``probe_variables``: a 2-class MobileNetV2 whose head is a probe (for
  ``explain.grad_cam``).
- ``xray_demo``: all of it on the 16 chest X-rays of ``readers.xray``.
"""

import json
import os
import pathlib

import jax
import numpy as np

from dlresearch import plot, weights
from dlresearch.apps.xray import readers
from dlresearch.models import mobilenet
from dlresearch.rai import explain, pictures
from dlresearch.weights import convert, imagenet

GRAD_CAM_LAYER = 'final_bn'  # the last 7x7 feature map, before its ReLU6
CLASS_NAMES = ('normal', 'pneumonia')  # readers.xray_label's 0 and 1


def clopper_pearson(k: int, n: int,
                    confidence: float = 0.95) -> tuple[float, float]:
  """Exact two-sided interval of a binomial proportion ``k / n`` (scipy's
  ``binomtest(...).proportion_ci(method='exact')``)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if not 0 <= k <= n or n <= 0:
    raise ValueError(f'need 0 <= k <= n and n > 0 (got k={k}, n={n})')
  ci = stats.binomtest(k, n).proportion_ci(confidence, method='exact')
  return float(ci.low), float(ci.high)


def fit_probe(features: np.ndarray, labels: np.ndarray,
              c: float = 1.0) -> tuple[np.ndarray, float]:
  """Logistic regression on standardised features, as ``(w, b)`` on raw ones.

  ``features @ w + b`` is the log-odds of label 1. ``c`` is scikit-learn's
  inverse L2 strength on the standardised scale.
  """
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  x = np.asarray(features, np.float64)
  mean, std = x.mean(0), x.std(0)
  std = np.where(std > 0, std, 1.0)
  clf = linear_model.LogisticRegression(C=c, max_iter=5000)
  clf.fit((x - mean) / std, labels)
  w = clf.coef_[0] / std
  return w, float(clf.intercept_[0] - np.dot(w, mean))


def leave_one_out(features: np.ndarray, labels: np.ndarray,
                  c: float = 1.0) -> dict:
  """Each example scored by the probe fitted on all the others.

  Returns:
    ``logit`` [n] (log-odds of label 1 for each held-out example),
    ``prediction`` [n] (0/1), ``correct`` (count), ``probes`` (the n
    ``(w, b)``).
  """
  n = len(labels)
  logits, probes = np.zeros(n), []
  for i in range(n):
    keep = np.arange(n) != i
    w, b = fit_probe(features[keep], labels[keep], c)
    logits[i] = features[i] @ w + b
    probes.append((w, b))
  prediction = (logits > 0).astype(np.int32)
  return {'logit': logits, 'prediction': prediction,
          'correct': int((prediction == labels).sum()), 'probes': probes}


def probe_variables(variables: dict, w: np.ndarray, b: float) -> dict:
  """``variables`` of a MobileNetV2 with a 2-class head: logits ``[0, x.w+b]``.

  The softmax of those logits is the probe's probability.
  """
  kernel = np.stack([np.zeros_like(w), w], 1).astype(np.float32)
  params = {**variables['params'],
            'head': {'kernel': kernel,
                     'bias': np.array([0.0, b], np.float32)}}
  return {**variables, 'params': params}


def xray_demo(weights_path: str, out_dir: str, data_dir: str | None = None,
              crop: int = 224, c: float = 1.0) -> dict:
  """MobileNetV2 features, a leave-one-out probe and Grad-CAM on the X-rays.

  Images are preprocessed as for ImageNet (shorter side to ``crop * 8/7``,
  centre ``crop``), embedded by the ImageNet MobileNetV2 (``pre_logits``,
  1280-d), and each is classified by the probe fitted on the others. For
  each image ``OUT/gradcam/<name>.png`` shows it beside the Grad-CAM map of
  the class its held-out probe predicted, titled with the true class, the
  prediction and its probability (``rai.pictures.explanation_figure``); ``OUT/results.json`` holds the
  per-image results and the accuracy with its exact 95% interval.

  Returns:
    ``accuracy``, ``accuracy_ci_low``, ``accuracy_ci_high``, ``correct``,
    ``n``.
  """
  images, labels, names = readers.xray(data_dir)
  x = np.stack([imagenet.preprocess(im, resize=round(crop * 8 / 7), crop=crop)
                for im in images])
  model = mobilenet.MobileNetV2(num_classes=1000)
  variables = convert.mobilenet_v2(weights.read(f'torch:{weights_path}'),
                                   model)
  apply = jax.jit(lambda v, x: model.apply(v, x, return_features=True)[1][
      'pre_logits'])
  feats = np.concatenate([np.asarray(apply(variables, x[i:i + 4]))
                          for i in range(0, len(x), 4)]).astype(np.float64)
  loo = leave_one_out(feats, labels, c)
  k, n = loo['correct'], len(labels)
  lo, hi = clopper_pearson(k, n)
  out = pathlib.Path(out_dir)
  (out / 'gradcam').mkdir(parents=True, exist_ok=True)
  probed = mobilenet.MobileNetV2(num_classes=2)
  rows = []
  for i, name in enumerate(names):
    pred = int(loo['prediction'][i])
    cam = explain.grad_cam(probed, probe_variables(variables, *loo['probes'][i]),
                           x[i:i + 1], layer=GRAD_CAM_LAYER, target=pred)
    display = imagenet.preprocess(images[i], resize=round(crop * 8 / 7),
                                  crop=crop) * imagenet.STD + imagenet.MEAN
    png = out / 'gradcam' / (os.path.splitext(name)[0] + '.png')
    p_pneumonia = float(1 / (1 + np.exp(-loo['logit'][i])))
    plot.save(pictures.explanation_figure(
        display, np.asarray(cam[0]), method='Grad-CAM',
        label=CLASS_NAMES[int(labels[i])], prediction=CLASS_NAMES[pred],
        probability=p_pneumonia if pred else 1 - p_pneumonia,
        target=CLASS_NAMES[pred], heat_name=f'Grad-CAM ({GRAD_CAM_LAYER})'),
        str(png))
    rows.append({'file': name, 'label': int(labels[i]), 'prediction': pred,
                 'probability_pneumonia': p_pneumonia, 'gradcam_png': str(png)})
  result = {'accuracy': k / n, 'accuracy_ci_low': lo, 'accuracy_ci_high': hi,
            'correct': float(k), 'n': float(n)}
  (out / 'results.json').write_text(json.dumps(
      {**result, 'confidence': 0.95, 'interval': 'Clopper-Pearson',
       'images': rows}, indent=1) + '\n')
  return result
