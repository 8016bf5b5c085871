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
  epochs (674 steps). Measured 2026-11-29 on 2 CPU cores (the CI machine
  kind), with this version (Eigen convolutions, reshape max-pool): 97.8%
  test accuracy with the default seed 0 (seeds 1 and 2: 95.8%, 96.9%;
  mean 96.9%); 11 s wall per run once installed and the dataset is
  prepared, while another job shared the cores. Before those CPU levers
  the same seeds gave 97.5/95.8/96.9% (float32 rounding of the convs
  differs).

fashion_mnist
  LeNet-5 on Fashion-MNIST (60k/10k 28x28, the Debian dataset-fashion-mnist
  IDX files; fetch once, see README "Data"; pass --manual_dir), Adam 1e-3
  cosine, batch 128, 10 epochs (4,688 steps), random flips. Measured on 2
  CPU cores shared with other jobs (load average ~6, so slower than on an
  idle machine): 90.4% test accuracy (88.6% at epoch 5), 7 min 7 s wall
  including the one-time dataset preparation.

resnet50_imagenet  (not run here: needs ImageNet and accelerators)
  ResNet-50 v1.5, the standard 90-epoch SGD recipe: batch 1024 across
  devices, Nesterov momentum 0.9, lr 0.1 x 1024/256 = 0.4, 5 warmup epochs
  then cosine, weight decay 1e-4 (not on biases and batch-norm parameters),
  label smoothing 0.1, random-resized crop 224 + flip, eval resize 256 +
  centre crop 224. Published top-1 for this architecture and recipe family:
  76.1% (torchvision ResNet50_Weights.IMAGENET1K_V1, acc@1 76.130) to 76.3%
  (Goyal et al. 2017, "Accurate, Large Minibatch SGD", 23.74% top-1 error
  at batch 8k); NVIDIA DeepLearningExamples report 76.5-77% for v1.5 with
  90 epochs. Not run here.

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
                         optimizer='nesterov', learning_rate=0.4, momentum=0.9,
                         schedule='cosine', warmup_steps=5 * 1252,
                         weight_decay=1e-4, label_smoothing=0.1),
        tiny=TINY_IMAGENET),
    'alexnet_imagenet': cli.Preset(
        IMAGENET.replace(model='alexnet', batch_size=128, eval_batch_size=128,
                         optimizer='sgd', learning_rate=0.01, momentum=0.9,
                         schedule='step', weight_decay=5e-4),
        tiny={**TINY_IMAGENET, 'model': 'alexnet_tiny'}),
}

if __name__ == '__main__':
  cli.main('cnn_imagenet', PRESETS, default_preset='quickstart')
