"""Datasets (TFDS by name, offline builders) and input pipelines."""
