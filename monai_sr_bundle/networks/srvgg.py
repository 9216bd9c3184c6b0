"""SRVGGNetCompact, the compact real-world SR network of Real-ESRGAN's ``realesr-general-x4v3`` and
``realesr-animevideov3`` models (X. Wang, L. Xie, C. Dong, Y. Shan, "Real-ESRGAN: Training Real-World Blind
Super-Resolution with Pure Synthetic Data", ICCVW 2021): a plain stack of 3x3 convolutions with PReLUs at the
LR size, a pixel shuffle, and the nearest-neighbour interpolant added. Here it carries pretrained weights read
from their published files (:mod:`monai_sr_bundle.pretrained`), so that what users run in upscaler apps is a
row of every table."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_sr_bundle.errors import InputError


class SRVGGNetCompact(nn.Module):
    """conv (in -> ``channels``), PReLU, ``convs`` x (conv ``channels`` -> ``channels``, PReLU), conv to
    ``in_channels * scale**2``, pixel shuffle, plus the nearest-upsampled input.

    Args:
        scale: integer SR factor.
        in_channels: image channels (1 for radiographs; pretrained RGB weights are folded to one channel by
            the reader).
        channels: width of every convolution.
        convs: 3x3 convolutions between the first and the last.
    """

    def __init__(self, scale: int = 4, in_channels: int = 1, channels: int = 64, convs: int = 32) -> None:
        super().__init__()
        if int(scale) < 1 or int(convs) < 0 or int(channels) < 1:
            raise InputError(
                f"SRVGGNetCompact needs scale >= 1, convs >= 0, channels >= 1, got {scale}, {convs}, {channels}."
            )
        self.scale, self.in_channels = int(scale), int(in_channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.PReLU(channels)]
        for _ in range(int(convs)):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.PReLU(channels)]
        layers.append(nn.Conv2d(channels, in_channels * self.scale**2, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.shuffle = nn.PixelShuffle(self.scale)
        self.halo = int(convs) + 2  # one LR pixel per 3x3 convolution; nearest interpolation reads no more
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.body(x)) + F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
