"""The values every layer may read: the bottom module of the package, which imports nothing of it, so a
transform, a data reader or the registry can share them without importing each other."""

from __future__ import annotations

from pathlib import Path

#: the bundle root (``configs/``, ``models/``): this package's folder, or, when the code is an exported zoo
#: bundle's ``scripts/`` (:mod:`monai_sr_bundle.zoo`), the folder above it
BUNDLE_ROOT = next(p for p in Path(__file__).resolve().parents[:2] if (p / "configs").is_dir())
#: the weights families (``models/<method>_<modality>_x<scale>.pt``) and how each reads an image into [0, 1]
#: unless its weights record another map: chest radiographs min-max, chest CT the HU window of the lungs and
#: mediastinum (HU outside it clip). Declared here only: training records it with the weights, and inference,
#: evaluation, the CT data preparation and the federated jobs read it back
#: (:meth:`~monai_sr_bundle.methods.Method.intensity`).
MODALITIES: dict[str, str | tuple[float, float]] = {"cxr": "minmax", "ct": (-1000.0, 400.0)}
#: the largest SR factor any surface takes (weights exist for x2 and x4; interpolation serves any)
MAX_SCALE = 8
#: the LR tile edge when neither the caller nor the network names one (memory grows with its square)
DEFAULT_TILE_SIZE = 256
