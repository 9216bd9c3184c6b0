"""SRResNet, the generator of SRGAN: C. Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a
Generative Adversarial Network", CVPR 2017."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
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


@functools.lru_cache(maxsize=None)
def _fold_index(kernel: int, factor: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Where each tap of :func:`fold_after_shuffle`'s kernel comes from in the flattened original kernel
    (``kernel * kernel`` = a zero tap), flattened, with its shape and the folded kernel's radius. Plain ints,
    made once: written into a tensor element by element at every pass, they were 2,000 graph nodes to trace
    (an ONNX export of srgan took 47 s, of which the fold was all but 3)."""
    k, reach = kernel // 2, -(-(kernel // 2) // factor)
    m = 2 * reach + 1
    shape = (factor, factor, factor, factor, m, m)
    index = [kernel * kernel] * math.prod(shape)
    for a in range(factor):  # output row phase: HR row r*i + a
        for u in range(-k, k + 1):  # the original kernel's row offset, in HR pixels
            s, di = (a + u) % factor, (a + u) // factor  # the shuffled channel's row phase, the LR row offset
            for b in range(factor):
                for v in range(-k, k + 1):
                    t, dj = (b + v) % factor, (b + v) // factor
                    flat = ((((a * factor + b) * factor + s) * factor + t) * m + di + reach) * m + dj + reach
                    index[flat] = (u + k) * kernel + (v + k)
    return tuple(index), shape, reach


def fold_after_shuffle(weight: torch.Tensor, factor: int) -> tuple[torch.Tensor, int]:
    """The kernel and padding of a convolution before ``PixelShuffle(factor)`` equal to ``weight`` (an odd
    square kernel, zero padding to the same size) after it: output channel ``o * f * f + a * f + b`` gives
    the output pixels ``(f * i + a, f * j + b)`` of channel ``o``, so a PixelShuffle of its result is the
    original convolution's output. A 9x9 kernel after a x2 shuffle becomes a 5x5 one with four times the
    outputs on a quarter of the pixels; exact up to the order of the float sums."""
    out_channels, in_channels, kernel, _ = weight.shape
    index, shape, reach = _fold_index(kernel, factor)
    taps = torch.cat([weight.flatten(2), weight.new_zeros(out_channels, in_channels, 1)], 2)
    index = torch.tensor(index, device=weight.device)
    folded = taps[:, :, index].reshape(out_channels, in_channels, *shape)  # (O, C, a, b, s, t, m, m)
    folded = folded.permute(0, 2, 3, 1, 4, 5, 6, 7)  # (O, a, b, C, s, t, m, m)
    m = 2 * reach + 1
    return folded.reshape(out_channels * factor * factor, in_channels * factor * factor, m, m), reach


def subpixel_to_image(features: torch.Tensor, upsampler: nn.Sequential, tail: nn.Conv2d) -> torch.Tensor:
    """``tail(upsampler(features))`` for :func:`subpixel_upsampler` stages, with the tail convolution moved in
    front of the last PixelShuffle (its PReLU, one slope per shuffled channel, moves with it; see
    :func:`fold_after_shuffle`). A one-channel 9x9 convolution at full HR size is a poor fit for oneDNN: at
    x4 it took as long as the whole residual body, and the last shuffle a tenth of the pass more; folded, a
    304x304 LR tile of srresnet took a fifth less time. Same weights, same result."""
    *stages, (conv, shuffle, prelu) = [upsampler[i : i + 3] for i in range(0, len(upsampler), 3)]
    for stage in stages:
        features = stage(features)
    f = shuffle.upscale_factor
    z = conv(features)
    z = F.prelu(z, prelu.weight.repeat_interleave(f * f) if prelu.weight.numel() > 1 else prelu.weight)
    weight, reach = fold_after_shuffle(tail.weight, f)
    return F.pixel_shuffle(F.conv2d(z, weight, tail.bias.repeat_interleave(f * f), padding=reach), f)


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
        sr = subpixel_to_image(h + self.body(h), self.upsample, self.tail)
        return sr + upsample(x, self.scale) if self.residual else sr
