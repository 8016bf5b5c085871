r"""Transfer learning: pretrained weights in, fine-tuning on a few examples.

    python -m dlresearch.data.fetch mobilenet_v2_imagenet   # once each
    python -m dlresearch.data.fetch minilm_l6
    python -m dlresearch.data.fetch rotten_tomatoes
    python -m experiments.finetune --preset=mobilenet_fashion_mnist \
        --manual_dir=DIR --num_train_examples=100 [--probe] [--init_from=]
    python -m experiments.finetune --preset=minilm_rotten_tomatoes --probe

A fine-tuning run is an ordinary run: ``--init_from`` converts the weights to
the run's model (``dlresearch/init.py``; ``WORKDIR/init_report.json`` lists
what loaded), ``--new_head='^head/'`` gives a fresh head sized to the data,
``--probe`` trains only that head (the backbone in eval mode, batch-norm
statistics included), ``--freeze=REGEX`` and ``--lr_multipliers=REGEX=F,...``
tune what trains how fast, ``--num_train_examples=N`` takes a stratified,
seeded subset of the train split, and ``--init_from=`` trains the same
network from scratch.

Presets (measured on 2 shared CPU cores, AMD EPYC Zen 4; the whole table
and its exact commands are in docs/transfer.md):

mobilenet_fashion_mnist
  torchvision's ImageNet MobileNetV2 on Fashion-MNIST (60k/10k;
  --manual_dir as in README "Running experiments"), the grey 28x28 images
  repeated to 3 channels, resized (shorter side 37, centre crop 32) and
  ImageNet-normalised. 32x32,
  not 224: MobileNetV2 trains at 52 images/s at 32x32 and 15 images/s at
  64x64 on these cores (measured, batch 64), and 224x224 would be ~50 times
  slower than 32; 32 is the smallest size that keeps the 28x28 images whole
  and still leaves a 1x1 map after the 32x downsampling. Adam 1e-3 cosine,
  the new head at 10x (``--lr_multipliers=^head/=10``), batch 32, evaluated
  on the first 1,000 test images. Measured (final-step test accuracy, 2
  shared CPU cores, AMD EPYC Zen 4; linear probe / full fine-tune / from
  scratch, mean of seeds 0-2): 100 examples, 30 steps: 64.6 / 59.4 /
  10.0%; 1,000 examples, 60 steps: 76.4 / 75.2 / 9.6%; all 60,000, 100
  steps: 78.5 / 79.7 / 47.2%. 50-160 s wall per run on a quiet machine
  (conversion, compilation and the final 10,000-image test eval included).
  Table: docs/transfer.md.

minilm_rotten_tomatoes
  sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, mean
  pooling over real tokens) on Rotten Tomatoes (11,477/1,275), its own
  WordPiece tokenizer, 48 tokens, AdamW 1e-4 (weight decay 0.01), the head
  at 20x, batch 32, cosine, one epoch of a 1,000-example subset. Measured
  (``python -m experiments.finetune --preset=minilm_rotten_tomatoes``, 32
  steps, seed 0, 2 idle CPU cores, AMD EPYC Zen 4, 2026-12-08): 77.1% test
  accuracy on all 1,275 test snippets, 75 s wall. Trained longer, 3 seeds
  (docs/transfer.md, with the commands): fine-tune 68.0 / 80.3 / 84.4%
  on 100 / 1,000 / all 11,477 examples, LoRA r=8 70.0 / 78.8 / 83.2%,
  ``--probe`` (to convergence) 65.2 / 73.8 / 76.6%.
"""

from dlresearch import cli
from dlresearch.config import Config

MOBILENET = '~/.cache/dlresearch/raw/mobilenet_v2_imagenet/mobilenet_v2-b0353104.pth'
MINILM = '~/.cache/dlresearch/raw/minilm_l6/model'

PRESETS = {
    'mobilenet_fashion_mnist': cli.Preset(
        Config(dataset='fashion_mnist_local', model='mobilenet_v2',
               init_from=f'torch:{MOBILENET}', new_head='^head/',
               image_size=32, image_channels=3, normalize='imagenet',
               eval_split='test[:1000]', batch_size=32, eval_batch_size=200,
               num_steps=150, optimizer='adam', learning_rate=1e-3,
               lr_multipliers='^head/=10', schedule='cosine', log_every=10,
               checkpoint_every=1000, keep_checkpoints=1),
        tiny=dict(num_train_examples=64, num_steps=2, batch_size=16,
                  eval_split='test[:32]', test_split='test[:64]',
                  eval_batch_size=16, log_every=1)),
    'minilm_rotten_tomatoes': cli.Preset(
        Config(data_kind='hf_text_classification', dataset='rotten_tomatoes',
               model='bert_base',
               model_kwargs={'hidden_size': 384, 'num_layers': 6,
                             'num_heads': 12, 'mlp_dim': 1536,
                             'pooling': 'mean'},
               init_from=f'hf:{MINILM}', pretrained_tokenizer=MINILM,
               new_head='^head/', max_len=48, batch_size=32,
               eval_batch_size=255, num_epochs=1, num_train_examples=1000,
               optimizer='adamw', learning_rate=1e-4, weight_decay=0.01,
               lr_multipliers='^head/=20', schedule='cosine',
               grad_clip_norm=1.0, log_every=10, checkpoint_every=1000,
               keep_checkpoints=1),
        tiny=dict(num_train_examples=64, num_steps=2, batch_size=16,
                  eval_split='test[:32]', eval_batch_size=16, max_len=16,
                  log_every=1)),
}

if __name__ == '__main__':
  cli.main('finetune', PRESETS, default_preset='mobilenet_fashion_mnist')
