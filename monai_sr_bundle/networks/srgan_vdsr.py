"""The SRGAN+VDSR hybrid generator: an SRGAN generator (C. Ledig et al., "Photo-Realistic Single Image
Super-Resolution Using a Generative Adversarial Network", CVPR 2017) whose body carries a VDSR stack (J. Kim,
J. K. Lee, K. M. Lee, "Accurate Image Super-Resolution Using Very Deep Convolutional Networks", CVPR 2016),
as proposed for single-channel chest X-ray SR by the SRGAN+VDSR paper."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.networks.bicubic import upsample
from monai_sr_bundle.networks.srresnet import (
    ResidualBlock,
    subpixel_halo,
    subpixel_to_image,
    subpixel_upsampler,
    upsampling_factors,
)


class SRGANVDSR(nn.Module):
    """SRGAN's generator with a VDSR body at LR resolution: SRResNet's residual blocks extract features, a
    plain stack of 3x3 convolutions (VDSR's body) refines them around a skip, and SRResNet's sub-pixel
    stages upsample. The deep plain stack adds receptive field and capacity at LR cost (1/16 of the pixels
    VDSR itself convolves at x4).

    The paper's ordering is read as: head -> residual blocks -> VDSR body -> global skip -> upsampling ->
    tail. The head is a 9x9 convolution with PReLU; the VDSR body is ``vdsr_depth`` 3x3 convolutions of
    ``channels`` channels with ReLUs between them (the last one has none, as in VDSR, so that the residual it
    predicts can be negative), and its output is added to its input (the global skip); each upsampling stage
    is a convolution, PixelShuffle and PReLU; the tail a 9x9 convolution to the image.

    Args:
        scale: SR factor, a power of two or three times one (x3 upsamples in one step).
        in_channels: image channels (1 for radiographs).
        channels: width of the residual blocks and the VDSR body (64 in the paper).
        blocks: SRResNet residual blocks (16).
        vdsr_depth: convolutions in the VDSR body (20, as VDSR).
        residual: add the bicubic-upsampled input to the output, so the network learns HR minus bicubic
            (as SRResNet's ``residual``; not in the paper). The last layer then starts at zero: training
            starts at bicubic quality.
    """

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        channels: int = 64,
        blocks: int = 16,
        vdsr_depth: int = 20,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if vdsr_depth < 1:
            raise ValueError(f"SRGANVDSR needs vdsr_depth >= 1, got {vdsr_depth}.")
        self.scale = int(scale)
        self.residual = bool(residual)
        factors = upsampling_factors(self.scale)
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, 9, padding=4), nn.PReLU(channels))
        self.blocks = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))
        vdsr: list[nn.Module] = []
        for _ in range(vdsr_depth - 1):
            vdsr += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        vdsr.append(nn.Conv2d(channels, channels, 3, padding=1))
        self.vdsr = nn.Sequential(*vdsr)
        for m in self.vdsr:
            if isinstance(m, nn.Conv2d):  # He init, as in VDSR: keeps the plain stack's signal alive
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.upsample = subpixel_upsampler(channels, factors)
        self.tail = nn.Conv2d(channels, in_channels, 9, padding=4)
        if self.residual:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)
        self.halo = subpixel_halo(4 + 2 * blocks + vdsr_depth, factors, 4)  # head, residual blocks, VDSR body
        # oneDNN's fast convolutions on the CPU want channels-last weights, as in SRResNet
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.blocks(self.head(x))
        sr = subpixel_to_image(r + self.vdsr(r), self.upsample, self.tail)
        return sr + upsample(x, self.scale) if self.residual else sr
