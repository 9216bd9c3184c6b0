from monai_sr_bundle.losses.box_weighted import BoxWeightedL1Loss

__all__ = ["BoxWeightedL1Loss"]
