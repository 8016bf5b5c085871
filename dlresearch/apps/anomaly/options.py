"""The anomaly application's config section: ``--normal_class``,
``--alert_rate``, ``--feature_scaling``, ``--time_feature``,
``--anomaly_score``, ``--score_holdout``.

Found by ``dlresearch.config`` (a scan of ``apps/*/options.py``) and composed
into ``Config``; its flags exist in experiments that use the ``anomaly`` data
kind.
"""

from dlresearch.config.declare import MAY_CHANGE, _f, check, register_options, section


@section('anomaly')
class Anomaly:
  """anomaly: the normal class, the alert rate, the tabular features and the
  autoencoder's anomaly score."""

  normal_class: int = _f(0, 'One-class anomaly detection on a labelled image '
                         'dataset: the class id trained on as normal (>= 0; '
                         'every other class is an anomaly at test time). -1: '
                         'each class in turn, one run per class and a '
                         'per-class table (experiments.anomaly).')
  alert_rate: float = _f(0.001, 'Anomaly evals (--data_kind=anomaly): the '
                         'fraction of eval examples flagged, highest scores '
                         'first, for precision_at_alert_rate and '
                         'recall_at_alert_rate; in (0, 1] (0.001 = 0.1%).',
                         on_resume=MAY_CHANGE)
  feature_scaling: str = _f('standard', 'Tabular anomaly data (creditcard, '
                            'shuttle): how the features are scaled with the '
                            'train rows\' statistics. standard: mean and std; '
                            'robust: median and interquartile range (heavy-'
                            'tailed columns keep their bulk spread out). '
                            'creditcard maps Amount by log1p first either way. '
                            'The IsolationForest baseline always sees the '
                            'standard features.',
                            choices=('standard', 'robust'))
  time_feature: str = _f('none', '--dataset=creditcard: none: Time is not a '
                         'feature; hour: append sin and cos of the time of '
                         'day (Time mod 24 h) as two more features.',
                         choices=('none', 'hour'))
  anomaly_score: str = _f('mse', 'The autoencoder\'s anomaly score. mse: mean '
                          'squared reconstruction error over the features; '
                          'standardized: the mean of each feature\'s squared '
                          'error divided by its error variance on held-out '
                          'normal rows (--score_holdout); mahalanobis: the '
                          'Mahalanobis distance of the error vector under the '
                          'mean and covariance of the held-out rows\' errors.',
                          choices=('mse', 'standardized', 'mahalanobis'))
  score_holdout: float = _f(0.1, 'With --anomaly_score=standardized or '
                            'mahalanobis: the fraction of the normal train '
                            'rows (the latest ones) held out of training; '
                            'their reconstruction errors fit the score\'s '
                            'statistics. In (0, 1).')

  def validate(self):
    check(0 < self.alert_rate <= 1, 'alert_rate', 'in (0, 1]', self.alert_rate)
    check(self.normal_class >= -1, 'normal_class', '>= 0 (or -1 for every '
          'class in turn)', self.normal_class)
    check(0 < self.score_holdout < 1, 'score_holdout', 'in (0, 1)',
          self.score_holdout)


register_options(Anomaly, kinds=('anomaly',))
