from monai_sr_bundle.losses.adversarial import AdversarialLoss
from monai_sr_bundle.losses.anomaly_focused import AnomalyFocusedLoss
from monai_sr_bundle.losses.box_weighted import BoxWeightedL1Loss
from monai_sr_bundle.losses.kl import LatentKLLoss
from monai_sr_bundle.losses.lpips_loss import LPIPSLoss
from monai_sr_bundle.losses.perceptual import PerceptualLoss
from monai_sr_bundle.losses.weighted_sum import WeightedSumLoss

__all__ = [
    "AdversarialLoss",
    "AnomalyFocusedLoss",
    "BoxWeightedL1Loss",
    "LatentKLLoss",
    "LPIPSLoss",
    "PerceptualLoss",
    "WeightedSumLoss",
]
