"""VDSR: J. Kim, J. K. Lee, K. M. Lee, "Accurate Image Super-Resolution Using Very Deep Convolutional
Networks", CVPR 2016."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.networks.bicubic import pre_upsampled_halo, upsample


class VDSR(nn.Module):
    """20 3x3 convolutions with 64 channels and ReLUs on the pre-upsampled image, predicting the residual
    (HR minus interpolated LR) that is added back — the residual learning that lets the paper train a
    deep plain network quickly.

    Args:
        scale: integer SR factor; the LR input is pre-upsampled by it inside ``forward``.
        in_channels: image channels (1 for radiographs).
        depth: number of convolution layers (20 in the paper).
        channels: width of the hidden layers (64 in the paper).
        pre_upsample: interpolation used for pre-upsampling (``bicubic``, ``bilinear``, ``nearest``).
    """

    def __init__(
        self, scale: int = 4, in_channels: int = 1, depth: int = 20, channels: int = 64, pre_upsample: str = "bicubic"
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"VDSR needs depth >= 2, got {depth}.")
        self.scale = int(scale)
        self.pre_upsample = pre_upsample
        self.halo = pre_upsampled_halo(depth, self.scale)  # each 3x3 layer reads one more HR pixel
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, in_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        for m in self.body:
            if isinstance(m, nn.Conv2d):  # He init, as in the paper
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # a zero last layer starts training exactly at the interpolated image instead of at noise added to it,
        # which shortens training (the paper reached the same with 80 epochs of SGD and gradient clipping)
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = upsample(x, self.scale, self.pre_upsample)
        return up + self.body(up)
