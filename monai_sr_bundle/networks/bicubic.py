"""Interpolation: the bicubic baseline as a network, and ``upsample``, the pre-upsampling that SRCNN, VDSR
and RUNet run inside their ``forward``. The baseline runs through the same bundle, export and inference
paths as the learned methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_sr_bundle.errors import InputError

UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest")
#: LR pixels that one output pixel of ``upsample`` reads on each side (the bicubic kernel's support)
UPSAMPLE_HALO = 2


def upsample(x: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    """Enlarge a batch (B, C, X, Y) by an integer ``scale``. Output is not clamped, so networks see the
    interpolant as is."""
    if mode == "nearest":
        return F.interpolate(x, scale_factor=float(scale), mode=mode)
    if mode != "bicubic" and mode != "bilinear":  # no f-string or global: this compiles to TorchScript
        raise InputError("unknown upsample mode " + mode + "; use bicubic, bilinear or nearest.")
    return F.interpolate(x, scale_factor=float(scale), mode=mode, align_corners=False)


def pre_upsampled_halo(hr_radius: int, scale: int) -> int:
    """LR context (pixels per side) of a network that upsamples first and then reads ``hr_radius`` HR pixels
    around each output pixel: what a tile must carry beyond its core for tiled SR to equal whole-image SR."""
    return -(-hr_radius // scale) + UPSAMPLE_HALO


class Bicubic(nn.Module):
    """Interpolation-only SR: (B, C, X, Y) -> (B, C, scale*X, scale*Y). No weights.

    Args:
        scale: integer SR factor.
        mode: ``bicubic`` (default), ``bilinear`` or ``nearest``.
    """

    #: no parameters; declared so that describing the method needs no build (:mod:`monai_sr_bundle.traits`)
    trainable = False

    def __init__(self, scale: int = 4, mode: str = "bicubic") -> None:
        super().__init__()
        self.scale = int(scale)
        self.mode = mode
        self.halo = UPSAMPLE_HALO

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(x, self.scale, self.mode)
