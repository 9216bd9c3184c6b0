"""RRDBNet, the generator of ESRGAN: X. Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial
Networks", ECCV Workshops 2018."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.networks.bicubic import UPSAMPLE_HALO, upsample
from monai_sr_bundle.networks.srresnet import upsampling_factors

#: convolutions in a residual dense block, and residual dense blocks in an RRDB (both fixed by the paper)
DENSE_CONVS, DENSE_BLOCKS = 5, 3


class _DenseBlock(nn.Module):
    """Five 3x3 convolutions, each reading the block's input and every earlier output (dense connections);
    the first four add ``growth`` channels each and a LeakyReLU, the fifth maps back to ``channels``. Its
    output, scaled by ``residual_scale``, is added to the input."""

    def __init__(self, channels: int, growth: int, residual_scale: float) -> None:
        super().__init__()
        self.residual_scale = residual_scale
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth if i < DENSE_CONVS - 1 else channels, 3, padding=1)
            for i in range(DENSE_CONVS)
        )
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(self.act(conv(torch.cat(features, 1))))
        return x + self.residual_scale * self.convs[-1](torch.cat(features, 1))


class _RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks in a row, scaled by ``residual_scale`` and added
    to the input."""

    def __init__(self, channels: int, growth: int, residual_scale: float) -> None:
        super().__init__()
        self.residual_scale = residual_scale
        self.body = nn.Sequential(*(_DenseBlock(channels, growth, residual_scale) for _ in range(DENSE_BLOCKS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.body(x)


class RRDBNet(nn.Module):
    """ESRGAN's generator: SRResNet's layout with its residual blocks replaced by residual-in-residual dense
    blocks and all BatchNorm removed (BN caused artefacts in deep GAN-trained SR networks, and its batch
    statistics differ between training and tiled inference).

    A 3x3 head; ``blocks`` RRDBs and a 3x3 convolution closing the trunk, added to the head's output; per
    factor of the scale a nearest-neighbour enlargement, a 3x3 convolution and LeakyReLU (x3 in one step);
    then a 3x3 convolution with LeakyReLU and a 3x3 convolution to the image. The residual scaling (0.2) and
    the small initialisation keep the very deep trunk stable to train.

    Args:
        scale: SR factor, a power of two or three times one (x3 upsamples in one step).
        in_channels: image channels (1 for radiographs).
        channels: width of the trunk (64 in the paper).
        growth: channels each dense convolution adds (32 in the paper).
        blocks: RRDBs in the trunk (23 in the paper).
        residual_scale: factor on each dense block's and each RRDB's output before its skip (0.2).
        residual: add the bicubic-upsampled input to the output, so the network learns HR minus bicubic
            (not in the paper). The last layer then starts at zero: training starts at bicubic quality.
    """

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        channels: int = 64,
        growth: int = 32,
        blocks: int = 23,
        residual_scale: float = 0.2,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.scale = int(scale)
        self.residual = bool(residual)
        factors = upsampling_factors(self.scale)
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        trunk = [_RRDB(channels, growth, residual_scale) for _ in range(blocks)]
        self.body = nn.Sequential(*trunk, nn.Conv2d(channels, channels, 3, padding=1))
        up: list[nn.Module] = []
        for f in factors:
            up += [nn.Upsample(scale_factor=f, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1)]
            up.append(nn.LeakyReLU(0.2, inplace=True))
        self.upsample = nn.Sequential(*up)
        self.tail = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, in_channels, 3, padding=1),
        )
        # the paper's trick for training deep RRDB nets: the dense blocks' convolutions start at 0.1 times
        # their default initialisation, so each block starts close to the identity
        for m in self.body.modules():
            if isinstance(m, _DenseBlock):
                for p in m.parameters():
                    p.data.mul_(0.1)
        if self.residual:
            nn.init.zeros_(self.tail[-1].weight)
            nn.init.zeros_(self.tail[-1].bias)
        # context of one output pixel, counted in HR pixels: at LR the head (1), 5 convolutions per dense
        # block, 3 dense blocks per RRDB and the trunk's closing conv (1), each LR pixel = scale HR pixels;
        # each upsampling conv reads 1 pixel at its (enlarged) resolution, the two tail convs 1 HR pixel
        # each. Nearest enlargement adds nothing: an enlarged pixel reads the one pixel it copies. The
        # resolutions nest, so ceil(HR reach / scale) LR pixels cover the context exactly.
        reach, resolution = (1 + DENSE_CONVS * DENSE_BLOCKS * blocks + 1) * self.scale, 1
        for f in factors:
            resolution *= f
            reach += self.scale // resolution
        reach += 2
        self.halo = max(-(-reach // self.scale), UPSAMPLE_HALO)
        # oneDNN's fast convolutions on the CPU want channels-last weights, as in SRResNet
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        sr = self.tail(self.upsample(h + self.body(h)))
        return sr + upsample(x, self.scale) if self.residual else sr
