"""Named LR-synthesis presets: ``configs/degradations/<name>.json`` in the bundle, read by the ``degradation``
key of the train and evaluate configs (``--degradation realistic_x4``).

A preset is a JSON object of ``Degrade`` keyword arguments (scale, downsample, blur_sigma, noise,
noise_std, poisson_peak, pre_upsample), a ``description``, and optionally ``artifacts``: keyword
arguments of :class:`~monai_sr_bundle.transforms.artifacts.RandArtifactsd`, applied to the LR image only
so that the HR target stays clean. Naming them keeps experiments comparable: a results table says which
degradation it was measured on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.transforms import Compose

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.jsonfile import read_json_object
from monai_sr_bundle.methods import BUNDLE_ROOT
from monai_sr_bundle.transforms.artifacts import RandArtifactsd
from monai_sr_bundle.transforms.degradation import Degraded

__all__ = ["PRESET_DIR", "PRESET_KEYS", "available_presets", "degradation_args", "load_preset", "lr_synthesis"]

PRESET_DIR = BUNDLE_ROOT / "configs" / "degradations"

# keys a preset may hold: the Degrade keyword arguments, plus "description" and "artifacts"
PRESET_KEYS = frozenset(
    {
        "description",
        "artifacts",
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
    what = f"Degradation preset {str(path)!r}"
    return _checked(read_json_object(path, what, sorted(PRESET_KEYS)), what)


def _checked(preset: dict, what: str) -> dict:
    """``preset`` if its keys are preset keys and its ``artifacts`` (if any) an object."""
    unknown = sorted(set(preset) - PRESET_KEYS)
    if unknown:
        raise InputError(f"{what} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(PRESET_KEYS))}.")
    if not isinstance(preset.get("artifacts", {}), Mapping):
        raise InputError(f"{what}: `artifacts` must be an object of RandArtifactsd arguments.")
    return preset


def degradation_args(degradation: str | os.PathLike | Mapping | None, scale: int) -> tuple[dict, dict | None]:
    """``Degrade`` keyword arguments (without ``scale``) and ``RandArtifacts`` ones (None without
    artifacts) of a preset name or path, or of a mapping with the same keys; a preset made for another
    scale is refused."""
    if isinstance(degradation, (str, os.PathLike)):
        name, preset = str(degradation), load_preset(degradation)
    else:
        name, preset = "degradation", _checked(dict(degradation or {}), "the degradation")
    if preset.get("scale", scale) != scale:
        raise InputError(f"degradation {name!r} is made for x{preset['scale']}, not x{scale}; pick one for x{scale}.")
    kwargs = {k: v for k, v in preset.items() if k not in ("description", "artifacts", "scale")}
    return kwargs, preset.get("artifacts")


def lr_synthesis(
    degradation: str | os.PathLike | Mapping | None, scale: int, hr_key: str = "label", lr_key: str = "image"
) -> Compose:
    """The dictionary transforms that make the LR input ``lr_key`` from the HR image ``hr_key``: the
    degradation, then the preset's artifacts on the LR image only."""
    kwargs, artifacts = degradation_args(degradation, scale)
    transforms = [Degraded(keys=hr_key, lr_key=lr_key, scale=scale, **kwargs)]
    if artifacts:
        transforms.append(RandArtifactsd(keys=lr_key, **artifacts))
    return Compose(transforms)
