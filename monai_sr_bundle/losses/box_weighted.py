"""Box-weighted L1 loss: the pixel loss of the CNN methods with the abnormality boxes weighted up, after the
bounding-box loss of the anomaly-focused SR paper (MIDL 2024), which adds the loss inside the boxes to the
whole-image loss so that small findings are not averaged away by the much larger normal anatomy."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.errors import InputError


class BoxWeightedL1Loss(nn.Module):
    """``mean(|pred - hr|) + box_weight * mean(mask * |pred - hr|)`` over all pixels.

    The box mask travels as the last channel of the target, so that MONAI's trainers, crops and flips carry
    it with the HR image untouched (see the train config: ``BoxesToMaskd`` then ``ConcatItemsd``).
    With ``box_weight=0``, or a target without the mask channel, this is exactly ``nn.L1Loss()``.

    Args:
        box_weight: extra weight of the pixels inside the boxes (>= 0).
    """

    def __init__(self, box_weight: float = 0.0) -> None:
        super().__init__()
        if not box_weight >= 0:
            raise InputError(f"box_weight must be a number >= 0, got {box_weight!r}.")
        self.box_weight = float(box_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hr, mask = split_target(pred, target)
        err = (pred - hr).abs()
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
