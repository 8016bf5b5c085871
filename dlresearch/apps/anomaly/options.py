"""The anomaly application's config section: ``--normal_class``, ``--alert_rate``.

Found by ``dlresearch.config`` (a scan of ``apps/*/options.py``) and composed
into ``Config``; its flags exist in experiments that use the ``anomaly`` data
kind.
"""

from dlresearch.config.declare import MAY_CHANGE, _f, check, register_options, section


@section('anomaly')
class Anomaly:
  """anomaly: the normal class and the alert rate of anomaly detection."""

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

  def validate(self):
    check(0 < self.alert_rate <= 1, 'alert_rate', 'in (0, 1]', self.alert_rate)
    check(self.normal_class >= -1, 'normal_class', '>= 0 (or -1 for every '
          'class in turn)', self.normal_class)


register_options(Anomaly, kinds=('anomaly',))
