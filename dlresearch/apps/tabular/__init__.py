"""Tabular classification's extra (``experiments/tabular.py``).

The network trains as problem ``classification``; ``baselines.py`` fits
scikit-learn's logistic regression and gradient boosting on the same
feature vectors and split.
"""
