"""dlresearch.apps.xray.probe: Clopper-Pearson intervals and the
leave-one-out logistic-regression probe."""

import numpy as np
import pytest

from dlresearch.apps.xray import probe


def test_clopper_pearson_closed_forms():
  # k = n: lower = (alpha/2)^(1/n); k = 0: upper = 1 - (alpha/2)^(1/n).
  assert probe.clopper_pearson(16, 16) == pytest.approx(
      (0.025 ** (1 / 16), 1.0))
  assert probe.clopper_pearson(0, 10) == pytest.approx(
      (0.0, 1 - 0.025 ** (1 / 10)))
  lo, hi = probe.clopper_pearson(12, 16)
  assert (round(lo, 4), round(hi, 4)) == (0.4762, 0.9273)  # R binom.test


def test_leave_one_out_probe_is_logistic_regression_on_the_rest():
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  y = np.arange(12) % 2
  x = rng.normal(size=(12, 5)) * [1, 10, 1, 1, 1] + y[:, None] * [2, 0, 0, 0,
                                                                   0]
  loo = probe.leave_one_out(x, y)
  keep = np.arange(12) != 3
  mean, std = x[keep].mean(0), x[keep].std(0)
  clf = linear_model.LogisticRegression(max_iter=5000).fit(
      (x[keep] - mean) / std, y[keep])
  want = clf.decision_function(((x[3] - mean) / std)[None])[0]
  assert loo['logit'][3] == pytest.approx(want, rel=1e-6)
  assert loo['correct'] == int(((loo['logit'] > 0) == y).sum())
