r"""PyTorch eager on a CUDA GPU: the ``resnet50`` and ``vit_s16`` workloads.

    python benchmarks/torch_gpu.py --model=resnet50,vit_s16 --dtype=bfloat16

The PyTorch column next to ``python -m benchmarks.train_step
--model=resnet50,vit_s16 --dtype=bfloat16 --json`` on the same GPU, in the
same command: torchvision's ``resnet50`` (SGD momentum 0.9, lr 0.1,
channels-last) and a ViT-S/16 built with torchvision's
``VisionTransformer`` (patch 16, 12 layers, 6 heads, width 384, MLP 1536;
Adam 1e-3), 224x224x3 random images, 1,000 classes: the shapes and
optimizers of benchmarks/workloads.py. ``--dtype=bfloat16`` runs forward and
loss under ``torch.autocast`` (parameters float32, as our ``--dtype``);
float32 allows TF32 matmuls and convolutions, as XLA does by default on GPU.

A step is zero_grad, forward, loss, backward, optimizer step on one of 4
random batches in turn; a round is ``--steps`` steps ending with
``loss.item()`` (a sync); the first two rounds are warm-up. Prints one JSON
object per model with the keys of benchmarks.train_step (model, batch_size,
dtype, examples_per_sec median/min/max, rounds, steps_per_round) plus
framework, torch version and device. Imports nothing from dlresearch or jax.
Nothing is asserted.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

WARMUP = 2


def build(name: str):
  if name == 'resnet50':
    model = torchvision.models.resnet50(num_classes=1000)
    model = model.to(memory_format=torch.channels_last)
    return model, lambda p: torch.optim.SGD(p, 0.1, momentum=0.9)
  if name == 'vit_s16':
    model = torchvision.models.VisionTransformer(
        image_size=224, patch_size=16, num_layers=12, num_heads=6,
        hidden_dim=384, mlp_dim=1536, num_classes=1000)
    return model, lambda p: torch.optim.Adam(p, 1e-3)
  raise SystemExit(f'unknown --model={name!r}; choose resnet50 or vit_s16')


def measure(name: str, batch_size: int, dtype: str, rounds: int, steps: int):
  torch.manual_seed(0)
  model, make_opt = build(name)
  model = model.cuda().train()
  opt = make_opt(model.parameters())
  xs = [torch.randn(batch_size, 3, 224, 224, device='cuda').contiguous(
      memory_format=torch.channels_last) for _ in range(4)]
  ys = [torch.randint(0, 1000, (batch_size,), device='cuda') for _ in range(4)]
  amp = dtype == 'bfloat16'
  count, rates = 0, []
  for r in range(rounds + WARMUP):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
      opt.zero_grad(set_to_none=True)
      with torch.autocast('cuda', dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(xs[count % 4]), ys[count % 4])
      loss.backward()
      opt.step()
      count += 1
    loss.item()
    if r >= WARMUP:
      rates.append(steps * batch_size / (time.perf_counter() - t0))
  return {'model': name, 'framework': 'torch_eager', 'batch_size': batch_size,
          'dtype': dtype, 'examples_per_sec': round(statistics.median(rates), 2),
          'examples_per_sec_min': round(min(rates), 2),
          'examples_per_sec_max': round(max(rates), 2), 'rounds': rounds,
          'steps_per_round': steps, 'torch': torch.__version__,
          'device': torch.cuda.get_device_name()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet50,vit_s16')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=10)
  args = parser.parse_args()
  if not torch.cuda.is_available():
    raise SystemExit('torch_gpu: no CUDA device visible to torch; run it on a GPU machine')
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  for name in args.model.split(','):
    print(json.dumps(measure(name, args.batch_size, args.dtype, args.rounds,
                             args.steps)), flush=True)


if __name__ == '__main__':
  main()
