"""Offline TFDS builders that prepare locally with no network access."""
