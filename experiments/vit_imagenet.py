r"""Vision Transformers on images: ViT-S/16 on ImageNet, a small ViT on Fashion-MNIST.

    python -m experiments.vit_imagenet --preset=fashion_mnist_vit \
        --manual_dir=/path/to/fashion-mnist
    python -m experiments.vit_imagenet --preset=vit_s16_i1k \
        --data_dir=/path/to/tensorflow_datasets --workdir=gs://...

The image classification path of ``experiments/cnn_imagenet.py`` (same data
pipeline, task and flags), with ``vit_*`` models. Fashion-MNIST's IDX files
come from Debian's ``dataset-fashion-mnist`` package; without root, fetch
and unpack them with

    python -c "from dlresearch.data.datasets import fetch_fashion_mnist; \
print(fetch_fashion_mnist('DIR'))"

which prints the directory to pass as ``--manual_dir`` (the default is the
package's own location, /usr/share/datasets/fashion-mnist).

Presets:

fashion_mnist_vit
  ``vit_tiny``: 4x4 patches (49 + class token), 2 layers, width 64, 4 heads,
  MLP 128; 72k parameters. AdamW 1e-3 (weight decay 0.05), batch 128, 300
  warmup steps then cosine, random flips, 5 epochs (2344 steps). Measured
  2026-12-07 (``python -m experiments.vit_imagenet --preset=fashion_mnist_vit
  --manual_dir=DIR``, 2-core AMD EPYC Zen 4, 1 CPU device, idle (load average below 2.2), the dataset already prepared): **85.2% test
  accuracy** (top-5 99.8%), 179 s wall including compilation (83.0% at step
  1000, 85.0% at 2000). The 85.6% measured before the weight-decay mask and
  variance fixes is not reproduced by this code.

vit_s16_i1k  (not run here: needs ImageNet and accelerators)
  ViT-S/16 (DeiT-S) with the DeiT recipe, Touvron et al. 2021, "Training
  data-efficient image transformers & distillation through attention",
  Table 9 and facebookresearch/deit main.py defaults: batch 1024, 300
  epochs, AdamW lr 5e-4 x 1024/512 = 1e-3, weight decay 0.05 (optax adamw
  multiplies it by the lr, as torch's AdamW), 5 warmup epochs then cosine
  to 1e-5, no gradient clipping; RandAugment n2 m9 mstd0.5 (timm
  rand-m9-mstd0.5-inc1), Mixup 0.8 and CutMix 1.0 (switch probability 0.5,
  every batch), label smoothing 0.1 folded into the mixed targets, random
  erasing 0.25, inception crop 224 + flip, eval resize 256 + centre crop
  224, ImageNet mean/std. AugReg (Steiner et al. 2022, "How to train your
  ViT?") uses the same op family (RandAugment l=2, m=10-20, Mixup 0.2-0.8)
  without CutMix. Published DeiT-S: **79.8%** top-1 on ImageNet val (no
  distillation); not run here. Not reproduced: stochastic depth 0.1 (our
  ``ViT`` has none), repeated augmentation (3 repeats), bicubic
  interpolation and mean-colour fill in the crop and RandAugment (ours:
  bilinear, grey 128), random erasing with normal noise in normalised space
  (ours: uniform pixels before normalisation). Expect lower accuracy than
  79.8%. Its --tiny form keeps the recipe on a tiny ViT, 2 steps at 32 px,
  so CI takes the whole augmentation path.
"""

from dlresearch import cli
from dlresearch.config import Config

PRESETS = {
    'fashion_mnist_vit': cli.Preset(
        Config(dataset='fashion_mnist_local', model='vit_tiny',
               batch_size=128, eval_batch_size=500, num_epochs=5,
               optimizer='adamw', learning_rate=1e-3, weight_decay=0.05,
               schedule='cosine', warmup_steps=300, augment='flip',
               log_every=100, eval_every=1000, checkpoint_every=1000,
               keep_checkpoints=1),
        tiny=dict(batch_size=32, eval_batch_size=64, num_steps=20,
                  warmup_steps=0, log_every=5, eval_every=0,
                  checkpoint_every=20)),
    'vit_s16_i1k': cli.Preset(
        Config(dataset='imagenet2012', pipeline='grain', image_size=224,
               augment='crop_flip', normalize='imagenet', grain_workers=8,
               model='vit_s16', batch_size=1024, eval_batch_size=1024,
               num_epochs=300, optimizer='adamw', learning_rate=1e-3,
               weight_decay=0.05, schedule='cosine', warmup_steps=5 * 1251,
               min_lr_ratio=0.01, label_smoothing=0.1, randaugment_ops=2,
               randaugment_magnitude=9.0, randaugment_magnitude_std=0.5,
               mixup_alpha=0.8, cutmix_alpha=1.0, random_erase=0.25,
               log_every=100, checkpoint_every=5000, eval_every=12_510),
        tiny=dict(model='vit_tiny', image_size=32, batch_size=16,
                  eval_batch_size=16, num_steps=2, grain_workers=1,
                  log_every=1, checkpoint_every=2, warmup_steps=0)),
}

if __name__ == '__main__':
  cli.main('vit_imagenet', PRESETS, default_preset='fashion_mnist_vit')
