"""Errors raised while reading pretrained weights."""


class WeightsError(ValueError):
  """A weights file is missing, unreadable, or does not fit the model."""


class UnsafeWeightsError(WeightsError):
  """A weights file asks to run code (a pickle global outside the allow-list).

  Raised before anything in the file is called; nothing from it has run.
  """
