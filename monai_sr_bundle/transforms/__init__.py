from monai_sr_bundle.transforms.artifacts import ARTIFACT_KINDS, ArtifactSpec, RandArtifacts, RandArtifactsd, render_artifact
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
from monai_sr_bundle.transforms.presets import PRESET_KEYS, available_presets, load_preset
