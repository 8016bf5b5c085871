"""Model summary (``--model_summary``): what the run is, before step one.

Compiles the train step ahead of time on the first batch, prints the summary
(``summary.summary``: layers, parameters, memory and the compiled step's
costs) to stdout and writes ``WORKDIR/model_summary.txt`` (process 0), then
hands the compiled step to the loop, so nothing is compiled twice.
"""

import jax
from absl import logging

from dlresearch import summary as summary_lib
from dlresearch.callbacks.base import Callback


class ModelSummary(Callback):
  """``args``/``kwargs``: example model inputs, as for ``model.init``."""

  def __init__(self, args, kwargs, batch_size: int):
    self.args, self.kwargs, self.batch_size = args, kwargs, batch_size

  def on_train_start(self, loop):
    try:
      compiled = loop.step_fn.lower(loop.state, loop.batch).compile()
    except Exception as e:  # pylint: disable=broad-exception-caught
      logging.warning('no ahead-of-time compile for the summary: %s', e)
      compiled = None
    if jax.process_index() == 0:
      text = summary_lib.summary(loop.model, self.args, self.kwargs,
                                 loop.state, compiled,
                                 batch_size=self.batch_size)
      summary_lib.write(loop.workdir, text)
      print(text, flush=True)  # stdout: what the run is; stderr stays for logs
    if compiled is not None:
      loop.step_fn = compiled
