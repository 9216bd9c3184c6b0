"""The SRGAN discriminator: C. Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative
Adversarial Network", CVPR 2017 (ESRGAN, X. Wang et al. 2018, uses the same VGG-style network with a
relativistic loss). A training-only network: it is never shipped, and its weights are refused as a method's."""

from __future__ import annotations

import torch
from torch import nn


class SRGANDiscriminator(nn.Module):
    """Eight 3x3 convolutions (LeakyReLU 0.2, BatchNorm after the first), doubling the width every second layer
    and halving the side with every stride-2 layer; then a dense layer, LeakyReLU and one logit per image.

    The paper flattens the 6x6 map of a 96x96 patch into its dense layer, which fixes the patch size; an
    adaptive average pool to ``pool`` x ``pool`` in front of it gives the same network at 96 px and lets
    the train config's ``patch_size`` change without touching the discriminator.

    Args:
        in_channels: image channels (1 for radiographs).
        channels: width of the first two layers (64 in the paper); the last two have 8x that.
        pool: side of the map the dense layer sees (6 = the paper's at 96 px).
        dense: width of the hidden dense layer (1024 in the paper).
    """

    def __init__(self, in_channels: int = 1, channels: int = 64, pool: int = 6, dense: int = 1024) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, 8):
            out, stride = channels * 2 ** (i // 2), 1 + i % 2  # 64s2, 128, 128s2, 256, 256s2, 512, 512s2
            layers += [nn.Conv2d(width, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            nn.Linear(width * pool * pool, dense),
            nn.LeakyReLU(0.2),
            nn.Linear(dense, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y) images in [0, 1] -> (B, 1) logits (real > 0)."""
        return self.head(self.features(x))
