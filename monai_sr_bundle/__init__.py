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


def off(value: bool | str) -> bool:
    """``not flag(value)``: a config component's ``_disabled_`` from the switch that turns it on
    (``"_disabled_": {"_target_": "monai_sr_bundle.off", "value": "@progress_bar"}``)."""
    return not flag(value)
