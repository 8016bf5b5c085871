"""The recommendation application's config section: ``--ranking_k``.

Found by ``dlresearch.config`` (a scan of ``apps/*/options.py``) and composed
into ``Config``; its flags exist in experiments that use the ``retrieval``
data kind.
"""

from dlresearch.config.declare import MAY_CHANGE, _f, check, register_options, section


@section('retrieval')
class Retrieval:
  """retrieval: the length of the ranked lists of retrieval evals."""

  ranking_k: int = _f(10, 'Retrieval evals (--data_kind=retrieval): the '
                      'length K of each recommended list for recall@K and '
                      'ndcg@K (>= 1).', on_resume=MAY_CHANGE)

  def validate(self):
    check(self.ranking_k >= 1, 'ranking_k', '>= 1', self.ranking_k)


register_options(Retrieval, kinds=('retrieval',))
