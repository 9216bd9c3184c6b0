"""monai-sr: super-resolution of chest X-rays and chest CT for the MONAI ecosystem.

This folder is both the Python package and the MONAI bundle root (``configs/``, ``models/``, ``docs/``).
"""

__version__ = "0.1.0"
