r"""TF-IDF + logistic regression on Rotten Tomatoes: the classical baseline.

    python benchmarks/tfidf_rotten_tomatoes.py --num_train_examples=1000

Reads the same TFDS splits as ``experiments/finetune.py
--preset=minilm_rotten_tomatoes`` and, with ``--num_train_examples``, the
same stratified subset (``data.subset.stratified_indices``, same seed);
word 1-2-grams (sublinear tf, min_df 2), scikit-learn's LogisticRegression
(C=10 on the full split, lbfgs). Prints the test accuracy.
"""

import argparse
import os
import sys

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dlresearch.config import Config  # pylint: disable=g-import-not-at-top,wrong-import-position
from dlresearch.data import subset  # pylint: disable=g-import-not-at-top,wrong-import-position
from dlresearch.problems import text_inputs  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_train_examples', type=int, default=0)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--data_dir', default='~/tensorflow_datasets')
  args = parser.parse_args(argv)
  cfg = Config(dataset='rotten_tomatoes', data_dir=args.data_dir)
  cols = []
  splits = text_inputs.text_splits(cfg)
  for split in (splits.train, splits.eval):
    source = text_inputs.open_source(cfg, split)
    cols.append(text_inputs.read_columns(cfg, source,
                                         ('text_key', 'label_key')))
  texts, labels = cols[0]['text'], np.asarray(cols[0]['label'])
  if args.num_train_examples:
    idx = subset.stratified_indices(labels, args.num_train_examples, args.seed)
    texts, labels = [texts[i] for i in idx], labels[idx]
  vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
  clf = LogisticRegression(C=10.0, max_iter=2000)
  clf.fit(vec.fit_transform(texts), labels)
  pred = clf.predict(vec.transform(cols[1]['text']))
  acc = float(np.mean(pred == np.asarray(cols[1]['label'])))
  print(f'tfidf+logreg train={len(labels)} test={len(pred)} '
        f'accuracy={acc:.4f}')


if __name__ == '__main__':
  main()
