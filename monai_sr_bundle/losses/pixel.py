"""The pixel term of SR training, with the abnormality boxes optionally weighted up, after the bounding-box
loss of the anomaly-focused SR paper (MIDL 2024), which adds the loss inside the boxes to the whole-image
loss so that small findings are not averaged away by the much larger normal anatomy."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.errors import InputError

_DISTANCES = {"l1": lambda d: d.abs(), "mse": lambda d: d.square()}


class PixelLoss(nn.Module):
    """``mean(dist(pred - hr)) + box_weight * mean(mask * dist(pred - hr))`` over all pixels, ``dist`` the
    absolute (``l1``) or squared (``mse``) difference.

    The box mask travels through the transforms as its own item (``box_mask``, cropped and flipped with the
    HR image) and reaches the loss as the target's last channel (``training.SRPrepareBatch``).
    With ``box_weight=0``, or a target without the mask channel, this is exactly ``nn.L1Loss()`` /
    ``nn.MSELoss()``.

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

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hr, mask = split_target(pred, target)
        err = _DISTANCES[self.distance](pred - hr)
        if mask is None or self.box_weight == 0:
            return err.mean()
        return (err * (1 + self.box_weight * mask)).mean()


def split_target(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The HR image and the box mask (``None`` when the target carries none) of a training target, whose
    last channel may hold the mask; a target of another shape is one sentence."""
    c = pred.shape[1]
    if target.shape[1] not in (c, c + 1) or target.shape[2:] != pred.shape[2:]:
        raise InputError(
            f"target {tuple(target.shape)} must be the prediction's shape {tuple(pred.shape)}, "
            "optionally with one extra channel holding the box mask."
        )
    return target[:, :c], (target[:, c:] if target.shape[1] == c + 1 else None)
