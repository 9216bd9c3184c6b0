"""SRResNet, the generator of SRGAN: C. Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a
Generative Adversarial Network", CVPR 2017."""

from __future__ import annotations

import math

import torch
from torch import nn

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.bicubic import UPSAMPLE_HALO, upsample


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class ResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN with an identity skip (conv-PReLU-conv without ``batch_norm``)."""

    def __init__(self, channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, batch_norm),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, batch_norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def upsampling_factors(scale: int) -> list[int]:
    """The sub-pixel steps that make ``scale``: x2 steps as in the paper (x4 = x2 x2), one x3 step for x3."""
    steps, rest = [], scale
    while rest % 2 == 0:
        steps, rest = steps + [2], rest // 2
    if rest == 3:
        steps, rest = steps + [3], 1
    if rest != 1 or not steps:
        raise InputError(f"SRResNet upsamples by 2^k or 3 * 2^k; scale {scale} is neither.")
    return steps


def subpixel_upsampler(channels: int, factors: list[int]) -> nn.Sequential:
    """SRResNet's upsampling stages, one per factor: conv to ``f * f`` times the channels, PixelShuffle(f),
    PReLU (also the upsampler of the SRGAN+VDSR hybrid)."""
    up: list[nn.Module] = []
    for f in factors:
        up += [nn.Conv2d(channels, channels * f * f, 3, padding=1), nn.PixelShuffle(f), nn.PReLU(channels)]
    return nn.Sequential(*up)


def subpixel_halo(lr_reach: int, factors: list[int], hr_tail: int) -> int:
    """LR context of one output pixel of a body reaching ``lr_reach`` LR pixels, then ``subpixel_upsampler``
    (each 3x3 conv reads 1 pixel at its own resolution) and a tail reaching ``hr_tail`` HR pixels: counted in
    HR pixels, where the resolutions nest, and rounded up to LR pixels."""
    scale, resolution = math.prod(factors), 1
    reach = lr_reach * scale + hr_tail
    for f in factors:
        reach += scale // resolution
        resolution *= f
    return max(-(-reach // scale), UPSAMPLE_HALO)


class SRResNet(nn.Module):
    """Residual blocks at LR resolution, then sub-pixel convolutions (conv, PixelShuffle, PReLU) to HR.

    A 9x9 head with PReLU; ``blocks`` residual blocks (conv-BN-PReLU-conv-BN); a conv-BN closing the body,
    added to the head's output (the global skip); an upsampling stage per factor of the scale; a 9x9
    convolution to the image. Every convolution but the last runs on at most ``scale / 2`` of the HR side, so
    the network computes on ~16x fewer pixels than a pre-upsampling one (VDSR, RUNet) at x4.

    Args:
        scale: SR factor, a power of two or three times one (x3 upsamples in one step).
        in_channels: image channels (1 for radiographs).
        channels: width of the body (64 in the paper).
        blocks: residual blocks (16 in the paper).
        residual: add the bicubic-upsampled input to the output, so the network learns HR minus bicubic
            (VDSR's residual learning; not in the paper). The last layer then starts at zero: training starts
            at bicubic quality, which matters when the training budget is a few CPU hours.
        batch_norm: the paper's BatchNorm layers. EDSR (Lim et al. 2017) and ESRGAN drop them: they cost PSNR,
            and with small CPU batches their running statistics differ from the batch ones seen in training.
    """

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        channels: int = 64,
        blocks: int = 16,
        residual: bool = False,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.scale = int(scale)
        self.residual = bool(residual)
        factors = upsampling_factors(self.scale)
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, 9, padding=4), nn.PReLU(channels))
        self.body = nn.Sequential(
            *(ResidualBlock(channels, batch_norm) for _ in range(blocks)),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, batch_norm),
        )
        self.upsample = subpixel_upsampler(channels, factors)
        self.tail = nn.Conv2d(channels, in_channels, 9, padding=4)
        if self.residual:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)
        self.halo = subpixel_halo(4 + 2 * blocks + 1, factors, 4)  # head 4, 2 per block, the body's last conv
        # oneDNN's fast convolutions on the CPU want channels-last weights (and then give channels-last
        # activations): a 512 -> 2048 x4 pass took 16.1 s in the default layout, 12.6 s in this one
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        sr = self.tail(self.upsample(h + self.body(h)))
        return sr + upsample(x, self.scale) if self.residual else sr
