"""SRCNN: C. Dong et al., "Image Super-Resolution Using Deep Convolutional Networks", TPAMI 2016."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.networks.bicubic import pre_upsampled_halo, upsample


class SRCNN(nn.Module):
    """Three convolutions (patch extraction 9x9, non-linear mapping 5x5, reconstruction 5x5; 64/32 filters,
    the paper's 9-5-5 setting) on the pre-upsampled image. Zero padding keeps the size, so the whole image
    is predicted (the paper trained on valid crops only).

    Args:
        scale: integer SR factor; the LR input is pre-upsampled by it inside ``forward``.
        in_channels: image channels (1 for radiographs).
        filters: widths of the first two layers.
        kernels: kernel sizes of the three layers.
        pre_upsample: interpolation used for pre-upsampling (``bicubic``, ``bilinear``, ``nearest``).
        residual: add the pre-upsampled image to the output, so the layers learn only the missing detail
            (VDSR's global residual). Off in the paper; on in the shipped x4 model, because the plain
            network stayed below bicubic within the CPU training budget (see docs/results.md).
    """

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        filters: tuple[int, int] = (64, 32),
        kernels: tuple[int, int, int] = (9, 5, 5),
        pre_upsample: str = "bicubic",
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.scale = int(scale)
        self.pre_upsample = pre_upsample
        self.residual = residual
        self.halo = pre_upsampled_halo(sum(k // 2 for k in kernels), self.scale)
        f1, f2 = filters
        k1, k2, k3 = kernels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, f1, k1, padding=k1 // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(f1, f2, k2, padding=k2 // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(f2, in_channels, k3, padding=k3 // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = upsample(x, self.scale, self.pre_upsample)
        return up + self.body(up) if self.residual else self.body(up)
