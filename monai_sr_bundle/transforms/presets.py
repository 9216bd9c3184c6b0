"""Named LR-synthesis presets: ``configs/degradations/<name>.json`` at the repository root.

A preset is a JSON object of ``Degraded`` keyword arguments (scale, downsample, blur_sigma, noise,
noise_std, poisson_peak, pre_upsample), a ``description``, and optionally ``artifacts``: keyword
arguments of :class:`~monai_sr_bundle.transforms.artifacts.RandArtifactsd`, to apply on the LR key only.
Naming them keeps experiments comparable: a results table says which degradation it was measured on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai_sr_bundle.errors import InputError

__all__ = ["PRESET_DIR", "PRESET_KEYS", "available_presets", "load_preset"]

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "degradations"

# keys a preset may hold: the Degraded keyword arguments, plus "description" and "artifacts"
PRESET_KEYS = frozenset(
    {
        "description",
        "artifacts",
        "keys",
        "lr_key",
        "scale",
        "downsample",
        "blur_sigma",
        "noise",
        "noise_std",
        "poisson_peak",
        "pre_upsample",
    }
)


def available_presets() -> list[str]:
    """Names of the presets in ``configs/degradations``, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json")) if PRESET_DIR.is_dir() else []


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Load a degradation preset by name (``"bicubic_x4"``) or by path to a JSON file.

    Args:
        name_or_path: a preset name in ``configs/degradations`` (with or without ``.json``) or a file path.

    Returns:
        a fresh dict of the preset's keys.

    Raises:
        InputError: if the preset is missing, is not a JSON object, or has keys other than
            :data:`PRESET_KEYS`.
    """
    path = Path(name_or_path)
    if not path.is_file():
        stem = path.name[:-5] if path.name.endswith(".json") else path.name
        path = PRESET_DIR / f"{stem}.json"
    if not path.is_file():
        raise InputError(
            f"Degradation preset {str(name_or_path)!r} not found; available presets: "
            f"{', '.join(available_presets()) or '(none)'} (or give a path to a JSON file)."
        )
    try:
        preset = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"Degradation preset {str(path)!r} is not readable JSON ({e}).") from e
    if not isinstance(preset, dict):
        raise InputError(f"Degradation preset {str(path)!r} must hold a JSON object of Degraded arguments.")
    unknown = sorted(set(preset) - PRESET_KEYS)
    if unknown:
        raise InputError(
            f"Degradation preset {str(path)!r} has unknown keys {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(PRESET_KEYS))}."
        )
    if "artifacts" in preset and not isinstance(preset["artifacts"], dict):
        raise InputError(f"Degradation preset {str(path)!r}: `artifacts` must be an object of RandArtifactsd arguments.")
    return preset
