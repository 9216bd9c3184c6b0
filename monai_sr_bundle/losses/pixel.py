"""The pixel term of SR training, with the abnormality boxes optionally weighted up, after the bounding-box
loss of the anomaly-focused SR paper (MIDL 2024), which adds the loss inside the boxes to the whole-image
loss so that small findings are not averaged away by the much larger normal anatomy."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.losses.batch import SRBatch

_DISTANCES = {"l1": lambda d: d.abs(), "mse": lambda d: d.square()}


class PixelLoss(nn.Module):
    """``mean(dist(pred - hr)) + box_weight * mean(mask * dist(pred - hr))`` over all pixels, ``dist`` the
    absolute (``l1``) or squared (``mse``) difference.

    ``hr`` is the batch's ``target`` and ``mask`` its box mask (:class:`~monai_sr_bundle.losses.batch.SRBatch`:
    the mask travels through the transforms as its own item, cropped and flipped with the HR image). With
    ``box_weight=0``, or a batch without a mask, this is exactly ``nn.L1Loss()`` / ``nn.MSELoss()``.

    Args:
        distance: ``"l1"`` (the CNN methods) or ``"mse"`` (ADSR's reconstruction term).
        box_weight: extra weight of the pixels inside the boxes (>= 0).
    """

    def __init__(self, distance: str = "l1", box_weight: float = 0.0) -> None:
        super().__init__()
        if distance not in _DISTANCES:
            raise InputError(f"the pixel distance must be one of {', '.join(_DISTANCES)}, got {distance!r}.")
        if isinstance(box_weight, bool) or not isinstance(box_weight, (int, float)) or not box_weight >= 0:
            raise InputError(f"box_weight must be a number >= 0, got {box_weight!r}.")
        self.distance, self.box_weight = distance, float(box_weight)

    def forward(self, pred: torch.Tensor, batch: SRBatch) -> torch.Tensor:
        err, mask = _DISTANCES[self.distance](pred - batch.target), batch.mask
        if mask is None or self.box_weight == 0:
            return err.mean()
        return (err * (1 + self.box_weight * mask)).mean()
