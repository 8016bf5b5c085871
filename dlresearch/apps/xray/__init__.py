"""The chest X-ray demo's data (``readers.py``); the demo itself is
``dlresearch/transfer.py``'s ``xray_demo``."""
