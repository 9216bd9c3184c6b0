"""RUNet, the robust U-Net of the RUNet chest-CT SR paper: a U-Net (O. Ronneberger, P. Fischer, T. Brox,
"U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015) whose down path is made of
residual blocks, run on the pre-upsampled LR image and trained with a perceptual loss (the loss lives in
``losses/``, not here)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_sr_bundle.networks.bicubic import pre_upsampled_halo, upsample
from monai_sr_bundle.networks.noise import noise_map


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class _ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (through a 1x1 projection when the width changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(c_in, c_out), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.skip(x) + self.body(x))


def modality_upsample(modality: str) -> str:
    """The pre-upsampling RUNet's shipped weights of ``modality`` were trained with: bicubic for radiographs,
    bilinear for CT (scored against nearest in benchmarks/ablations)."""
    return "bicubic" if modality == "cxr" else "bilinear"


class RUNet(nn.Module):
    """A U-Net with residual blocks on the way down, applied to the interpolated LR image, predicting the
    residual (HR minus interpolated LR). The down path's residual blocks let a deep encoder train; the
    skips carry full-resolution detail to the decoder; the pooled levels see a large context at low cost.

    A 3x3 head convolution (BN, ReLU); per level, ``res_blocks`` residual blocks (the first one widens to
    the level's channels through a 1x1 projection) followed by a 2x2 max-pool, except at the deepest level;
    per level on the way up, a 2x2 stride-2 transposed convolution, the skip concatenated and two
    conv-BN-ReLU; a 1x1 convolution to the image, added to the interpolated input. The last convolution
    starts at zero, so training starts at the interpolated image.

    The pooled levels need a side divisible by ``2 ** (len(channels) - 1)``: ``forward`` pads the
    interpolated image at its far edges by replication to the next multiple and crops the output back, so
    any size works. Tiled SR equals whole-image SR (with ``halo``) only when each tile's pooling grid lines
    up with the whole image's, which holds for any tile when ``2 ** (len(channels) - 1)`` divides ``scale``
    (e.g. three levels at x4). Otherwise (the default four levels at x4: a pooled pixel spans 2 LR pixels)
    a tile that starts at an odd LR pixel pools other pixel pairs than the whole image does, and its output
    is not exact: with random weights the tiled and whole-image outputs differed by up to ~15% of the
    largest residual (``tests/test_networks.py``). Tile such a network only with tiles whose starts are
    multiples of ``multiple // gcd(multiple, scale)`` LR pixels, or run it on the whole image.

    Args:
        scale: integer SR factor; the LR input is pre-upsampled by it inside ``forward``.
        in_channels: image channels (1 for radiographs).
        channels: width of each level, top to bottom; its length is the number of levels.
        res_blocks: residual blocks per level on the way down.
        pre_upsample: interpolation used for pre-upsampling (``bicubic``, ``bilinear``, ``nearest``).
        conditions: extra input maps beside the image (what the image says about itself, e.g. its noise
            level: :class:`NoiseAwareRUNet`); their head weights start at zero, and a state dict with fewer
            head inputs loads with the missing ones at zero, so a network grown from trained weights starts
            as the network it was.
    """

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        res_blocks: int = 2,
        pre_upsample: str = "bicubic",
        conditions: int = 0,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or res_blocks < 1:
            raise ValueError(f"RUNet needs at least one level and one residual block, got {channels}, {res_blocks}.")
        self.scale = int(scale)
        self.pre_upsample = pre_upsample
        self.multiple = 2 ** (len(channels) - 1)  # the HR side must be a multiple of it for the pooled levels
        self.head = nn.Sequential(*_conv_bn_relu(in_channels + conditions, channels[0]))
        nn.init.zeros_(self.head[0].weight[:, in_channels:])
        self.down = nn.ModuleList()
        width = channels[0]
        for c in channels:
            self.down.append(nn.Sequential(*(_ResBlock(width if i == 0 else c, c) for i in range(res_blocks))))
            width = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(hi, lo, 2, stride=2) for lo, hi in zip(channels, channels[1:]))
        self.decode = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(2 * c, c), *_conv_bn_relu(c, c)) for c in channels[:-1]
        )
        self.last = nn.Conv2d(channels[0], in_channels, 1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)
        # context of one output pixel in HR pixels: a 3x3 conv at level k reads 2**k HR pixels per side:
        # the head 1, 2 convs per residual block at every level, 2 decoder convs at every level but the
        # deepest; a max-pool from level k plus the transposed conv back to it add 2**k in all (the pair
        # of level-k pixels a pooled pixel covers); the 1x1 convolutions and the projections add nothing.
        # An upper bound that pixel-perturbation measured as tight at x4 (one LR pixel loose at x2)
        levels = range(len(channels))
        reach = 1 + sum(2 * res_blocks * 2**k for k in levels) + sum(3 * 2**k for k in levels[:-1])
        self.halo = pre_upsampled_halo(reach, self.scale)
        # oneDNN's fast convolutions on the CPU want channels-last weights, as in SRResNet
        self.to(memory_format=torch.channels_last)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = f"{prefix}head.0.weight"
        have, want = state_dict.get(key), self.head[0].weight
        if have is not None and have.ndim == 4 and have.shape[1] < want.shape[1] and have.shape[0] == want.shape[0]:
            grown = have.new_zeros(have.shape[0], want.shape[1], *have.shape[2:])
            grown[:, : have.shape[1]] = have
            state_dict[key] = grown
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x)

    def restore(self, x: torch.Tensor, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """The SR image of ``x``, with the (B, conditions, H, W) maps at the output size as extra inputs."""
        up = upsample(x, self.scale, self.pre_upsample)
        h, w = up.shape[-2:]
        y = up if conditions is None else torch.cat([up, conditions.to(up)], 1)
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        # replicate, not reflect: reflect needs the pad to be smaller than the side, a tiny tile may not be;
        # padded even by nothing, so that an exported graph (monai_sr_bundle.engine) pads any size as torch does
        y = F.pad(y, (0, pad_w, 0, pad_h), mode="replicate")
        y = self.head(y)
        skips = []
        for k, level in enumerate(self.down):
            y = level(y if k == 0 else self.pool(y))
            skips.append(y)
        for k in reversed(range(len(self.up))):
            y = self.decode[k](torch.cat([skips[k], self.up[k](y)], 1))
        return up + self.last(y)[..., :h, :w]


class NoiseAwareRUNet(RUNet):
    """RUNet told how noisy its input is: a constant map of the noise level (grey levels /
    :data:`~monai_sr_bundle.networks.noise.NOISE_MAP_UNIT`, as :class:`~monai_sr_bundle.networks.LRUNet`
    takes it, after FFDNet / SRMD) enters the head beside the interpolated image. Grown from a trained RUNet (its
    state dict loads with the map's weights at zero) and fine-tuned on clean to degraded LR, one network serves
    a clean detector image and a noisy bedside film, which two RUNets trained apart each served half of.

    ``forward(lr, noise_level)``: one level for the batch or one per image (grey levels of 255); None
    estimates it from ``lr`` (tiles of one image must share the whole image's level: the predictor passes it).
    Args as :class:`RUNet`'s."""

    #: takes ``noise_level`` (every surface offers it: ``--noise-level``, the Slicer module, MONAI Label)
    noise_aware = True

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        res_blocks: int = 2,
        pre_upsample: str = "bicubic",
    ) -> None:
        super().__init__(scale, in_channels, channels, res_blocks, pre_upsample, conditions=1)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor | float | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.restore(x, noise_map(x, noise_level, (h * self.scale, w * self.scale)))
