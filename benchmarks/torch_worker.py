"""PyTorch eager versions of the compared workloads, driven over a pipe.

Runs in a Python that has torch and numpy (the ``bench`` extra, or a venv of
its own: ``--torch_python`` of ``benchmarks.compare``); imports nothing from
dlresearch or jax. Reads one JSON command per line on stdin and answers one
JSON line on stdout:

  {"cmd": "setup", "model": "lenet", "batch_size": 128} -> {"setup_s": ...}
  {"cmd": "round", "steps": 10}  -> {"seconds": ..., "loss": ...}
  {"cmd": "quit"}

A step is zero_grad, forward, loss, backward, optimizer step, on one of 4
random batches in turn; a round ends with ``loss.item()`` (a sync).

``nanogpt_char`` is nanoGPT's architecture and CPU configuration
(github.com/karpathy/nanoGPT, ``model.py`` and the Shakespeare-char command
of its README run on CPU), written here from its description, not its code:
pre-LayerNorm blocks, causal self-attention through one fused ``c_attn``
projection and ``F.scaled_dot_product_attention``, a 4x GELU MLP, learned
positions, a final LayerNorm and a head tied to the token embedding;
``bias=False`` (its ``train.py`` default) in the Linears and LayerNorms;
N(0, 0.02) init with residual projections scaled by ``1/sqrt(2 layers)``;
AdamW with weight decay on the 2-D parameters only, betas (0.9, 0.99), and
gradient clipping at norm 1, as its training loop does.
"""

import json
import math
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class LeNet(nn.Module):

  def __init__(self):
    super().__init__()
    self.c1, self.c2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3)
    self.f1, self.f2 = nn.Linear(64 * 12 * 12, 128), nn.Linear(128, 10)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 2)
    return self.f2(F.relu(self.f1(x.flatten(1))))


class Block(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.b1 = nn.BatchNorm2d(cout)
    self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.b2 = nn.BatchNorm2d(cout)
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
    return F.relu(y + (x if self.proj is None else self.proj(x)))


class ResNet18(nn.Module):
  """CIFAR stem: 3x3 conv, BN, ReLU, no pool; stages 64-128-256-512 x 2."""

  def __init__(self):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False),
                              nn.BatchNorm2d(64), nn.ReLU())
    blocks, cin = [], 64
    for i, c in enumerate((64, 128, 256, 512)):
      for j in range(2):
        blocks.append(Block(cin, c, 2 if (i > 0 and j == 0) else 1))
        cin = c
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(512, 10)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class LSTMLM(nn.Module):

  def __init__(self):
    super().__init__()
    self.embed = nn.Embedding(128, 64)
    self.lstm = nn.LSTM(64, 256, batch_first=True)
    self.head = nn.Linear(256, 128)

  def forward(self, t):
    return self.head(self.lstm(self.embed(t))[0])


class GPTBlock(nn.Module):

  def __init__(self, d, heads, mlp):
    super().__init__()
    self.heads = heads
    self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
    self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
    self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads
                                         ).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
    return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
  """Pre-LN, learned positions: 4 layers, d 256, 4 heads, MLP 1024, vocab 512."""

  def __init__(self, vocab=512, d=256, layers=4, heads=4, mlp=1024, length=128):
    super().__init__()
    self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(length, d)
    self.blocks = nn.Sequential(*[GPTBlock(d, heads, mlp) for _ in range(layers)])
    self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

  def forward(self, t):
    x = self.tok(t) + self.pos(torch.arange(t.shape[1]))
    return self.head(self.ln(self.blocks(x)))


class NanoLayerNorm(nn.Module):
  """LayerNorm with an optional bias (nanoGPT's ``bias`` switch)."""

  def __init__(self, d, bias):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(d))
    self.bias = nn.Parameter(torch.zeros(d)) if bias else None

  def forward(self, x):
    return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoBlock(nn.Module):

  def __init__(self, d, heads, bias):
    super().__init__()
    self.heads = heads
    self.ln_1, self.ln_2 = NanoLayerNorm(d, bias), NanoLayerNorm(d, bias)
    self.c_attn = nn.Linear(d, 3 * d, bias=bias)
    self.attn_proj = nn.Linear(d, d, bias=bias)
    self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
    q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
               for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, d))
    return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
  """nanoGPT's architecture (module docstring): 4 x d128, 4 heads, block 64."""

  def __init__(self, vocab=65, d=128, layers=4, heads=4, length=64, bias=False):
    super().__init__()
    self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(length, d)
    self.h = nn.Sequential(*[NanoBlock(d, heads, bias) for _ in range(layers)])
    self.ln_f = NanoLayerNorm(d, bias)
    self.lm_head = nn.Linear(d, vocab, bias=False)
    self.wte.weight = self.lm_head.weight  # tied
    for name, p in self.named_parameters():
      if name.endswith('proj.weight'):
        nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
      elif p.dim() == 2:
        nn.init.normal_(p, 0.0, 0.02)
      elif name.endswith('bias'):
        nn.init.zeros_(p)

  def forward(self, t):
    x = self.wte(t) + self.wpe(torch.arange(t.shape[1]))
    return self.lm_head(self.ln_f(self.h(x)))


def setup(name, batch_size):
  rng = np.random.default_rng(0)
  if name == 'lenet':
    model = LeNet()
    xs = [torch.from_numpy(rng.normal(size=(batch_size, 1, 28, 28)).astype(np.float32))
          for _ in range(4)]
    ys = [torch.from_numpy(rng.integers(0, 10, batch_size)) for _ in range(4)]
    opt = torch.optim.Adam(model.parameters(), 1e-3)
  elif name == 'resnet18_cifar':
    model = ResNet18().to(memory_format=torch.channels_last)
    xs = [torch.from_numpy(rng.normal(size=(batch_size, 3, 32, 32)).astype(np.float32)
                           ).to(memory_format=torch.channels_last) for _ in range(4)]
    ys = [torch.from_numpy(rng.integers(0, 10, batch_size)) for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
  elif name in ('lstm_lm', 'gpt_small'):
    vocab, length = (128, 64) if name == 'lstm_lm' else (512, 128)
    model = LSTMLM() if name == 'lstm_lm' else GPT()
    toks = [torch.from_numpy(rng.integers(0, vocab, (batch_size, length + 1)))
            for _ in range(4)]
    xs, ys = [t[:, :-1] for t in toks], [t[:, 1:] for t in toks]
    opt = torch.optim.Adam(model.parameters(), 1e-3)
  elif name == 'nanogpt_char':
    model = NanoGPT()
    toks = [torch.from_numpy(rng.integers(0, 65, (batch_size, 65))) for _ in range(4)]
    xs, ys = [t[:, :-1] for t in toks], [t[:, 1:] for t in toks]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
         {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
        lr=1e-3, betas=(0.9, 0.99))
  else:
    raise ValueError(name)
  model.train()
  clip = name == 'nanogpt_char'

  def step(i):
    opt.zero_grad(set_to_none=True)
    logits = model(xs[i % 4])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys[i % 4].reshape(-1))
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss

  return step


def main():
  step, count = None, 0
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd['cmd'] == 'quit':
      break
    t0 = time.perf_counter()
    if cmd['cmd'] == 'setup':
      step = setup(cmd['model'], cmd['batch_size'])
      out = {'setup_s': time.perf_counter() - t0,
             'torch': torch.__version__, 'threads': torch.get_num_threads()}
    else:
      for _ in range(cmd['steps']):
        loss = step(count)
        count += 1
      value = loss.item()
      out = {'seconds': time.perf_counter() - t0,
             'loss': value if math.isfinite(value) else str(value)}
    print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
