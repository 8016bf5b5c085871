r"""Image classification with CNNs (LeNet, AlexNet, ResNet) and MLPs.

    python -m experiments.cnn_imagenet --preset=quickstart
    python -m experiments.cnn_imagenet --preset=fashion_mnist --workdir=runs/fm
    python -m experiments.cnn_imagenet --preset=resnet50_imagenet \
        --data_dir=/path/to/tensorflow_datasets --workdir=gs://...

Any preset takes ``--tiny`` (its few-step CI form) and every common flag
(``--batch_size --num_steps --learning_rate ...``; see ``--helpfull``).

Presets:

quickstart
  LeNet-5 on scikit-learn's bundled digits (1,437 train / 360 test 8x8
  images; prepared locally, no download), Adam 3e-3 cosine, batch 64, 30
  epochs (674 steps). Measured 2026-12-07 (``python -m experiments.cnn_imagenet
  --preset=quickstart --seed=S``, 2-core AMD EPYC Zen 4, 1 CPU device,
  idle): 97.8% test accuracy with the default seed 0 (seeds 1 and 2: 95.8%,
  96.9%; mean 96.9%); 8-10 s wall per run once installed and the dataset
  is prepared. Before the CPU levers (Eigen convolutions, reshape max-pool)
  the same seeds gave 97.5/95.8/96.9% (float32 rounding of the convs
  differs).

fashion_mnist
  LeNet-5 on Fashion-MNIST (60k/10k 28x28, the Debian dataset-fashion-mnist
  IDX files; fetch once, see README "Data"; pass --manual_dir), Adam 1e-3
  cosine, batch 128, 10 epochs (4,688 steps), random flips. Measured
  2026-12-07 (``python -m experiments.cnn_imagenet --preset=fashion_mnist
  --manual_dir=DIR``, 2-core AMD EPYC Zen 4, 1 CPU device, idle (load average below 2.2), the dataset already prepared): **90.4% test
  accuracy** (88.7% at epoch 5), 139 s wall.

resnet50_imagenet  (not run here: needs ImageNet and accelerators)
  ResNet-50 v1.5 with torchvision's "new recipe" where it is expressible
  here (Vryniotis 2021, "How to Train State-Of-The-Art Models Using
  TorchVision's Latest Primitives"; torchvision references/classification,
  ResNet50_Weights.IMAGENET1K_V2, published acc@1 80.858): batch 1024, SGD
  momentum 0.9, lr 0.5, 5 warmup epochs then cosine, 600 epochs, weight
  decay 2e-5 (not on biases and batch-norm parameters), label smoothing
  0.1, Mixup 0.2, CutMix 1.0, random erasing 0.1, an EMA of the weights,
  random-resized crop 224 + flip, eval resize 256 + centre crop 224. Not
  reproduced: TrivialAugmentWide (RandAugment n2 m9 stands in), repeated
  augmentation (ra_sampler, 4 repeats), the FixRes sizes (train 176, eval
  resize 232 / crop 224), the EMA's schedule (torchvision updates every 32
  steps with decay 0.99998 adjusted for the batch; ours decays 0.99997 per
  step, warmed up), bilinear instead of bicubic-interpolated eval. Expect
  below 80.9%. The classic 90-epoch recipe (76.1% acc@1,
  IMAGENET1K_V1) is this preset with --num_epochs=90 --learning_rate=0.4
  --optimizer=nesterov --weight_decay=1e-4 --randaugment_ops=0
  --mixup_alpha=0 --cutmix_alpha=0 --random_erase=0 --ema_decay=0. Its
  --tiny form keeps the recipe (RandAugment, Mixup/CutMix, erasing) on a
  tiny ResNet, 2 steps at 32 px, so CI takes the whole augmentation path.

alexnet_imagenet  (not run here: needs ImageNet and accelerators)
  AlexNet as in Krizhevsky et al. 2012: SGD momentum 0.9, batch 128,
  lr 0.01 divided by 10 three times (here at 1/3, 2/3 and 8/9 of training),
  weight decay 5e-4, dropout 0.5, 90 epochs, 224 crops + flips, LRN.
  Published (one CNN, ILSVRC-2012 val): 40.7% top-1 error, 18.2% top-5
  error, i.e. 59.3% top-1. Not run here.
"""

from dlresearch import cli
from dlresearch.config import Config

IMAGENET = Config(
    dataset='imagenet2012', pipeline='grain', image_size=224,
    augment='crop_flip', normalize='imagenet', grain_workers=8, num_epochs=90,
    log_every=100, checkpoint_every=5000, eval_every=12500)
TINY_IMAGENET = dict(model='resnet_tiny', image_size=32, batch_size=16,
                     eval_batch_size=16, num_steps=2, grain_workers=1,
                     log_every=1, checkpoint_every=2, warmup_steps=0)

PRESETS = {
    'quickstart': cli.Preset(
        Config(dataset='digits', model='lenet5', batch_size=64, num_epochs=30,
               optimizer='adam', learning_rate=3e-3, schedule='cosine',
               log_every=50, checkpoint_every=200),
        tiny=dict(num_steps=20, log_every=5, checkpoint_every=10)),
    'fashion_mnist': cli.Preset(
        Config(dataset='fashion_mnist_local', model='lenet5', batch_size=128,
               num_epochs=10, optimizer='adam', learning_rate=1e-3,
               schedule='cosine', augment='flip', log_every=200,
               checkpoint_every=2000, eval_every=2345),
        tiny=dict(num_steps=10, log_every=5, checkpoint_every=5, eval_every=0)),
    'resnet50_imagenet': cli.Preset(
        IMAGENET.replace(model='resnet50', batch_size=1024, eval_batch_size=1024,
                         num_epochs=600, optimizer='sgd', learning_rate=0.5,
                         momentum=0.9, schedule='cosine', warmup_steps=5 * 1252,
                         weight_decay=2e-5, label_smoothing=0.1,
                         randaugment_ops=2, randaugment_magnitude=9.0,
                         mixup_alpha=0.2, cutmix_alpha=1.0, random_erase=0.1,
                         ema_decay=0.99997),
        tiny=TINY_IMAGENET),
    'alexnet_imagenet': cli.Preset(
        IMAGENET.replace(model='alexnet', batch_size=128, eval_batch_size=128,
                         optimizer='sgd', learning_rate=0.01, momentum=0.9,
                         schedule='step', weight_decay=5e-4),
        tiny={**TINY_IMAGENET, 'model': 'alexnet_tiny'}),
}

if __name__ == '__main__':
  cli.main('cnn_imagenet', PRESETS, default_preset='quickstart')
