r"""Encoder-decoder Transformer translation, scored with sacrebleu.

    python -m experiments.transformer_translate --preset=number_words
    python -m experiments.transformer_translate --preset=number_words --tiny
    python -m experiments.transformer_translate --preset=wmt14_base \
        --data_dir=/path/to/tensorflow_datasets --workdir=gs://...

One byte-level BPE (``--vocab_size``) is trained on both sides of the train
split and saved as ``WORKDIR/tokenizer.json``; source and target share it
and the tied embedding. Training pairs longer than ``--max_len`` tokens (with
``<eos>``) are dropped. Every eval decodes the eval split (its first
``--bleu_examples``; greedy, or beam search with ``--beam_size``), writes
``WORKDIR/translations.txt`` and adds ``bleu`` (sacrebleu corpus BLEU on the
detokenized text, tokenizer ``--bleu_tokenize``), ``chrf`` and
``exact_match`` to the eval line, besides the teacher-forced ``loss``,
``perplexity`` and token ``accuracy`` (label smoothing is left out of eval).

Presets:

number_words  (offline; prepared locally on first use, ~1 min)
  English -> German number words from num2words (``number_words/en-de``:
  90,000 train / 5,000 test pairs, e.g. 'twenty-one' -> 'einundzwanzig').
  ``transformer_seq2seq`` 2+2 layers, d_model 128, 4 heads, MLP 512,
  dropout 0.1; BPE 500 (sentences average 9.5 English, 4 German tokens),
  max_len 16; batch 128, AdamW 1e-3 (weight decay 0.01), 200 warmup steps,
  cosine, label smoothing 0.1, 1500 steps; greedy decoding. German number
  words are single compounds, so 13a-tokenized BLEU has no 2- to 4-grams (it
  is 0 even for perfect output): this preset scores character BLEU
  (``--bleu_tokenize=char``); ``exact_match`` is the stricter figure. Measured
  2026-12-07 (``python -m experiments.transformer_translate
  --preset=number_words``, 2-core AMD EPYC Zen 4, 1 CPU device, idle, load
  average below 2; its matmuls on the native GEMM, ``--cpu_kernels=auto``):
  on the 5,000 test pairs (decoded once, at the end), **exact match
  99.96%** (2 errors: 'thirty-nine' -> 'neununddreißigtausend', 'fifty-one'
  -> 'einundneunzig'; numbers below 100 are 0.1% of the training data),
  **character BLEU 99.99**, chrF 99.996, token accuracy 99.99%, after 1500
  steps; on the 5,000 validation pairs exact match 99.92 / 99.98 / 99.98%
  at steps 500 / 1000 / 1500. 225 s wall including compilation and four
  greedy decodes of 5,000 pairs (the dataset already prepared).

wmt14_base  (not run here: needs WMT14 prepared with TensorFlow, and GPUs)
  Transformer base (Vaswani et al. 2017, "Attention Is All You Need"):
  ``transformer_base`` = 6+6 layers, d_model 512, 8 heads, FF 2048, post-LN,
  dropout 0.1, shared BPE of 37,000 tokens, label smoothing 0.1, beam 4 with
  length penalty 0.6. Data: TFDS ``wmt14_translate/de-en`` read en -> de
  (train 4.5M pairs; eval on ``test`` = newstest2014); ``wmt17_translate/de-en``
  works the same with ``--dataset``. Published: **27.3 BLEU** en-de on
  newstest2014 for the base model (tokenized BLEU, averaged last 5
  checkpoints); not run here. Optimiser as published: Adam b1 0.9, b2 0.98,
  epsilon 1e-9, ``--schedule=inverse_sqrt`` with 4000 warmup steps and peak
  lr d_model^-0.5 * warmup^-0.5 = 512^-0.5 * 4000^-0.5 = 6.99e-4 (the paper's
  lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)), label smoothing
  0.1. Remaining differences: batches are 1024 sentence pairs padded to 128
  tokens (~25-30k tokens a side; the paper's 25k-token batches are
  length-bucketed); no checkpoint averaging; sacrebleu 13a on detokenized
  text (typically ~0.5-1 BLEU below the paper's tokenized BLEU).
"""

from dlresearch import cli
from dlresearch.config import Config

PRESETS = {
    'number_words': cli.Preset(
        Config(data_kind='seq2seq', dataset='number_words/en-de',
               model='transformer_seq2seq',
               model_kwargs={'num_layers': 2, 'd_model': 128, 'num_heads': 4,
                             'dropout_rate': 0.1},
               tokenizer='bpe', vocab_size=500, max_len=16,
               source_key='source', target_key='target', bleu_tokenize='char',
               batch_size=128, eval_batch_size=256, num_steps=1500,
               optimizer='adamw', learning_rate=1e-3, weight_decay=0.01,
               schedule='cosine', warmup_steps=200, grad_clip_norm=1.0,
               label_smoothing=0.1, log_every=100, eval_every=500,
               checkpoint_every=500, keep_checkpoints=1),
        tiny=dict(model_kwargs={'num_layers': 1, 'd_model': 32,
                                'num_heads': 2},
                  batch_size=16, eval_batch_size=32, num_steps=30,
                  learning_rate=3e-3, warmup_steps=0, log_every=5,
                  eval_every=0, checkpoint_every=30, vocab_size=300,
                  max_len=24, bleu_examples=64)),
    'wmt14_base': cli.Preset(
        Config(data_kind='seq2seq', dataset='wmt14_translate/de-en',
               model='transformer_base', tokenizer='bpe', vocab_size=37000,
               max_len=128, source_key='en', target_key='de', beam_size=4,
               bleu_tokenize='13a',
               batch_size=1024, eval_batch_size=256, num_steps=100_000,
               optimizer='adam', learning_rate=512**-0.5 * 4000**-0.5,
               adam_b1=0.9, adam_b2=0.98, adam_eps=1e-9,
               schedule='inverse_sqrt', warmup_steps=4000, label_smoothing=0.1,
               log_every=100, eval_every=10_000, checkpoint_every=5000,
               keep_checkpoints=5),
        tiny=dict(model='transformer_seq2seq',
                  model_kwargs={'num_layers': 1, 'd_model': 32,
                                'num_heads': 2},
                  batch_size=16, eval_batch_size=16, num_steps=4,
                  warmup_steps=0, log_every=1, eval_every=0,
                  checkpoint_every=4, vocab_size=300, max_len=32, beam_size=2,
                  bleu_examples=16)),
}

if __name__ == '__main__':
  cli.main('transformer_translate', PRESETS, default_preset='number_words')
