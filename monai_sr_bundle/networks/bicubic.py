"""Bicubic interpolation as a network, so the baseline runs through the same bundle, export and
inference paths as the learned methods."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.transforms.degradation import upsample


class Bicubic(nn.Module):
    """Interpolation-only SR: (B, C, X, Y) -> (B, C, scale*X, scale*Y). No weights.

    Args:
        scale: integer SR factor.
        mode: ``bicubic`` (default), ``bilinear`` or ``nearest``.
    """

    def __init__(self, scale: int = 4, mode: str = "bicubic") -> None:
        super().__init__()
        self.scale = int(scale)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(x, self.scale, self.mode)
