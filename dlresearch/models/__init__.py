"""Model families; build them by name with ``dlresearch.models.registry.build``."""
