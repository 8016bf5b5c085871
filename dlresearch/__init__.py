"""dlresearch: a JAX functional research framework for deep learning."""

__version__ = '0.1.0'
