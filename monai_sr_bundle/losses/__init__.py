from monai_sr_bundle.losses.box_weighted import BoxWeightedL1Loss
from monai_sr_bundle.losses.perceptual import PerceptualLoss

__all__ = ["BoxWeightedL1Loss", "PerceptualLoss"]
