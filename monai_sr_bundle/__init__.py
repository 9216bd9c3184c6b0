"""monai-sr: super-resolution of chest X-rays and chest CT for the MONAI ecosystem.

This folder is both the Python package and the MONAI bundle root (``configs/``, ``models/``, ``docs/``).
"""

__version__ = "0.3.0"


def flag(value: bool | str) -> bool:
    """A bundle config switch as a bool. ``python -m monai.bundle run --x false`` passes the text ``"false"``
    (only ``False`` becomes a bool), which Python would read as true; every config switch goes through here."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", "none", ""):
        return False
    from monai_sr_bundle.errors import InputError

    raise InputError(f"{value!r} is not a true/false setting; use True or False.")
