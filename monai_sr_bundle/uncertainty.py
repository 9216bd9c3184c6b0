"""The hallucination guard of the stochastic methods: from several SR samples of one LR image, the mean SR
image, a per-pixel standard deviation (where the samples disagree, the model is guessing) and an
LR-consistency map (|degrade(SR) - LR|, shown at HR: detail that the LR image does not support)."""

from __future__ import annotations

import torch
from torch.nn.functional import interpolate

from monai_sr_bundle.transforms.degradation import downsample

#: the maps beside the mean SR image, in the order they are written; each name is its file suffix
MAPS = ("std", "lr_consistency")


def uncertainty_maps(
    lr: torch.Tensor, draws: torch.Tensor, scale: int, degradation: str = "bicubic_aa"
) -> dict[str, torch.Tensor]:
    """``{"sr": mean, "std": ..., "lr_consistency": ...}`` for an LR batch (B, C, X, Y[, Z]) and its SR
    ``draws`` (N, B, C, sX, sY[, Z]) in [0, 1]; each map has the SR's shape. A single draw has zero spread.

    Args:
        lr: the LR images the draws were made from.
        draws: the SR samples, stacked first.
        scale: the SR factor.
        degradation: how the LR was made from an HR image (a ``downsample`` mode), to degrade the SR alike.
    """
    mean = draws.mean(0)
    std = draws.std(0, correction=0)
    volume = mean.ndim == 5
    flat = mean.movedim(-1, 1).flatten(0, 1) if volume else mean  # CT slices into the batch
    shrunk = torch.stack([downsample(img, scale, degradation) for img in flat])
    low = lr.to(shrunk).movedim(-1, 1).flatten(0, 1) if volume else lr.to(shrunk)
    gap = interpolate((shrunk - low).abs(), scale_factor=scale, mode="nearest")
    if volume:
        gap = gap.unflatten(0, (mean.shape[0], mean.shape[-1])).movedim(1, -1)
    return {"sr": mean, "std": std, "lr_consistency": gap}
