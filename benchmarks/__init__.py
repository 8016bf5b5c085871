"""Benchmarks: ``python -m benchmarks.<name>`` (train_step, compare, startup, ...)."""
