from monai_sr_bundle.losses.adversarial import AdversarialLoss, WeightedSumLoss
from monai_sr_bundle.losses.box_weighted import BoxWeightedL1Loss
from monai_sr_bundle.losses.perceptual import PerceptualLoss

__all__ = ["AdversarialLoss", "BoxWeightedL1Loss", "PerceptualLoss", "WeightedSumLoss"]
