"""The bounding-box term L_B of ADSR (MIDL 2024): the squared error inside the abnormality boxes alone."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.losses.batch import SRBatch


class BoxLoss(nn.Module):
    """The MSE between the prediction and the batch's ``target`` inside the boxes (the batch's ``mask``), per
    image over its box pixels, averaged over the images that have boxes: an image without boxes adds nothing,
    and a batch without any (or without a mask) gives zero, never a NaN."""

    def forward(self, pred: torch.Tensor, batch: SRBatch) -> torch.Tensor:
        hr, mask = batch.target, batch.mask
        if mask is None:
            return pred.new_zeros(())
        area = mask.flatten(1).sum(1)
        boxed = area > 0
        if not boxed.any():
            return pred.new_zeros(())
        per_image = (mask * (pred - hr).square()).flatten(1).sum(1)[boxed] / (area[boxed] * pred.shape[1])
        return per_image.mean()
