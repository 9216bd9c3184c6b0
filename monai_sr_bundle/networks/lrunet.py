"""LRUNet: a U-Net that works at the LR size and is told how noisy its input is.

Two ideas from the literature put together for radiographs on a CPU:

- LR-space processing with a sub-pixel (pixel-shuffle) output, as in ESPCN (W. Shi et al., "Real-Time Single
  Image and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016):
  at x4 every convolution touches a sixteenth of the pixels an output-size network (RUNet) touches.
- A noise-level map as an extra input channel, as in FFDNet (K. Zhang, W. Zuo, L. Zhang, "FFDNet: Toward a Fast
  and Flexible Solution for CNN-Based Image Denoising", TIP 2018) and SRMD (K. Zhang et al., "Learning a
  Single Convolutional Super-Resolution Network for Multiple Degradations", CVPR 2018): one network serves a
  clean detector image and a noisy bedside film, and a user can turn its denoising up or down.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.bicubic import UPSAMPLE_HALO, upsample
from monai_sr_bundle.networks.noise import noise_map


class _ResBlock(nn.Module):
    """conv-LeakyReLU-conv plus the input (no normalization: SR wants the input's intensities kept, and
    batch statistics would differ between tiles and between federated sites). The second convolution starts
    at zero, so every block starts as the identity and a deep stack trains from the first step (without
    it, or a normalization, the stack stayed at bicubic for hundreds of steps here)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        nn.init.zeros_(self.body[2].weight)
        nn.init.zeros_(self.body[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LRUNet(nn.Module):
    """A U-Net on the LR image and its noise map, ending in a pixel shuffle, predicting the residual over the
    bicubic interpolant.

    The LR image and a constant map of its noise level (:func:`~monai_sr_bundle.networks.noise.noise_map`)
    enter a 3x3 head convolution; each level runs ``blocks[k]`` residual blocks; a 3x3 stride-2 convolution
    leads to the next, wider level, and on the way up a 1x1 convolution and a x2 pixel shuffle come back, added
    to the level's skip, followed by ``blocks[k]`` more residual blocks (none at the deepest level, whose blocks
    run once). A 3x3 convolution makes ``scale**2`` sub-pixels per LR pixel, shuffled to the output grid and
    added to the bicubic interpolant; it starts at zero, so training starts at bicubic.

    The noise level comes from ``forward``'s ``noise_level`` (one number or one per image, grey levels of
    255); when it is None the network estimates it from its input
    (:func:`~monai_sr_bundle.networks.noise.estimate_noise_level`). Tiles of one image must share one level:
    the predictor estimates it on the whole image and passes it to every tile.

    Each halving needs an even side: ``forward`` pads at the far edges by replication to a multiple of
    ``multiple`` and crops back. Tiled SR equals whole-image SR when tiles start at multiples of ``multiple``
    LR pixels (the tiling inferer's ``align``): then every tile halves the same pixel pairs.

    Args:
        scale: integer SR factor, at least 2 (one pixel shuffle).
        in_channels: image channels (1 for radiographs).
        channels: width of each level, top (LR size) to bottom; its length is the number of levels.
        blocks: residual blocks per level (one number: the same at every level).
    """

    #: takes ``noise_level`` (every surface offers it: ``--noise-level``, the Slicer module, MONAI Label)
    noise_aware = True

    #: LR tile edge by default: the context (``halo``, 48 pixels at the default depth) is wide, so 256-pixel tiles
    #: would spend most of their time on it (a 512-pixel image: 4 x 4 tiles of 228 pixels instead of one)
    tile_size = 512

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        channels: Sequence[int] = (48, 96, 144),
        blocks: int | Sequence[int] = 2,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        blocks = (int(blocks),) * len(channels) if isinstance(blocks, int) else tuple(int(b) for b in blocks)
        if not channels or len(blocks) != len(channels) or min(blocks) < 1:
            raise InputError(
                f"LRUNet needs one or more levels and at least one block per level, got {channels}, {blocks}."
            )
        if int(scale) < 2:
            raise InputError(f"LRUNet upsamples by an integer scale of at least 2, got {scale}.")
        self.scale, self.in_channels = int(scale), int(in_channels)
        self.multiple = self.tile_align = 2 ** (len(channels) - 1)
        self.head = nn.Conv2d(in_channels + 1, channels[0], 3, padding=1)
        self.encode = nn.ModuleList(nn.Sequential(*(_ResBlock(c) for _ in range(b))) for c, b in zip(channels, blocks))
        self.down = nn.ModuleList(nn.Conv2d(lo, hi, 3, stride=2, padding=1) for lo, hi in zip(channels, channels[1:]))
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hi, 4 * lo, 1), nn.PixelShuffle(2)) for lo, hi in zip(channels, channels[1:])
        )
        self.decode = nn.ModuleList(
            nn.Sequential(*(_ResBlock(c) for _ in range(b))) for c, b in zip(channels[:-1], blocks[:-1])
        )
        self.tail = nn.Sequential(
            nn.Conv2d(channels[0], in_channels * self.scale**2, 3, padding=1), nn.PixelShuffle(self.scale)
        )
        nn.init.zeros_(self.tail[0].weight)
        nn.init.zeros_(self.tail[0].bias)
        # LR context of one output pixel: the head and tail 1 each, 2 per residual block at level k in 2**k LR
        # pixels (encoder and decoder), the stride-2 convolution into level k+1 reads 1 pixel of level k, and
        # the 1x1 + shuffle back adds the pair a halved pixel covers; plus the bicubic interpolant's support.
        reach = 2 + sum(2 * b * 2**k for k, b in enumerate(blocks))
        reach += sum(2 * b * 2**k + 2 * 2**k for k, b in enumerate(blocks[:-1]))
        self.halo = max(reach, UPSAMPLE_HALO)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor | float | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        base = upsample(x, self.scale)
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        # replicate, not reflect: reflect needs the pad to be smaller than the side, a tiny tile may not be;
        # padded even by nothing, so that an exported graph (monai_sr_bundle.engine) pads any size as torch does
        y = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        y = torch.cat([y, noise_map(x, noise_level, y.shape[-2:]).to(y)], 1)
        y = self.head(y)
        skips = []
        for k, level in enumerate(self.encode):
            y = level(y if k == 0 else self.down[k - 1](y))
            skips.append(y)
        for k in reversed(range(len(self.decode))):
            y = self.decode[k](skips[k] + self.up[k](y))
        out = self.tail(y)[..., : h * self.scale, : w * self.scale]
        return base + out
