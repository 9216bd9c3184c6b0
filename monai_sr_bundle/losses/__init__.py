from monai_sr_bundle.losses.adversarial import AdversarialLoss
from monai_sr_bundle.losses.batch import SRBatch
from monai_sr_bundle.losses.box import BoxLoss
from monai_sr_bundle.losses.distillation import DistillationLoss
from monai_sr_bundle.losses.lpips_loss import LPIPSLoss
from monai_sr_bundle.losses.perceptual import PerceptualLoss
from monai_sr_bundle.losses.pixel import PixelLoss
from monai_sr_bundle.losses.terms import TrainingTermsLoss
from monai_sr_bundle.losses.weighted_sum import WeightedSumLoss

__all__ = [
    "AdversarialLoss",
    "BoxLoss",
    "DistillationLoss",
    "LPIPSLoss",
    "PerceptualLoss",
    "PixelLoss",
    "SRBatch",
    "TrainingTermsLoss",
    "WeightedSumLoss",
]
