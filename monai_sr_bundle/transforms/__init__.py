"""Transforms, MONAI-style (array ``Foo`` and dictionary ``Food`` pairs): LR synthesis (degradation,
artifacts), abnormality boxes, and the named degradation presets in ``configs/degradations``."""

from monai_sr_bundle.transforms.artifacts import ARTIFACT_KINDS, ArtifactSpec, RandArtifacts, RandArtifactsd
from monai_sr_bundle.transforms.boxes import (
    BoxesToMask,
    BoxesToMaskd,
    CropBoxesd,
    ScaleBoxes,
    ScaleBoxesd,
    as_boxes,
    crop_boxes,
    validate_boxes,
)
from monai_sr_bundle.transforms.degradation import (
    CropToScaled,
    RandBlurd,
    RandElectronicNoised,
    RandPoissonNoised,
    RandSRCropd,
    Resized,
    downsample,
    upsample,
    zoom_geometry,
)
from monai_sr_bundle.transforms.presets import PRESET_KEYS, available_presets, load_preset, lr_synthesis

__all__ = [
    "ARTIFACT_KINDS",
    "ArtifactSpec",
    "BoxesToMask",
    "BoxesToMaskd",
    "CropBoxesd",
    "CropToScaled",
    "RandSRCropd",
    "PRESET_KEYS",
    "RandArtifacts",
    "RandArtifactsd",
    "RandBlurd",
    "RandElectronicNoised",
    "RandPoissonNoised",
    "Resized",
    "ScaleBoxes",
    "ScaleBoxesd",
    "as_boxes",
    "available_presets",
    "crop_boxes",
    "downsample",
    "load_preset",
    "lr_synthesis",
    "upsample",
    "validate_boxes",
    "zoom_geometry",
]
