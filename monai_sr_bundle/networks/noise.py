"""How noisy an image is: the estimate that a degradation-aware network is conditioned on, and the map it
takes it as. Network code: it runs inside the network's graph (an exported one too) when no level is given.

The noise level is the standard deviation of the image's noise in grey levels of an 8-bit image (intensity
[0, 1] times 255), the unit FFDNet's and SRMD's noise maps use. It is estimated from the image itself, so a
user need not know it, and any surface can override it (0: treat the image as clean; higher: smooth more).

The estimator looks at the flattest regions, as block-based noise estimators do: the image less its Gaussian
blur (sigma 1 pixel) keeps noise and edges; its standard deviation in 8x8 blocks is low where there is no
anatomy; the 20th percentile over the blocks, scaled so that white Gaussian noise of sd
``s`` on a flat image reads ``s``, is the level. Blocks that touch the ends of the intensity range
(collimation, burnt-out lungs, text) are left out: clipped regions carry no noise. A finer filter (a
Laplacian) misses the noise that JPEG leaves, which is smoothed within its blocks: measured on NIH
validation images, it read JPEG-compressed noisy LR images as clean; the blocks' sd tells the two apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from monai_sr_bundle.errors import InputError

#: intensities this close to 0 or 1 are taken as clipped (8-bit: the two end levels)
_CLIP = 1.5 / 255
#: block side, share of the flattest blocks, and the scale that makes white noise read its own sd
_BLOCK, _QUANTILE, _CALIBRATION = 8, 0.2, 0.797


def _highpass(x: torch.Tensor) -> torch.Tensor:
    """``x`` less its Gaussian blur of sigma 1 pixel (radius 3, edges replicated)."""
    t = torch.arange(-3, 4, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * t**2)
    k = k / k.sum()
    blurred = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, -1, 1))
    return x - blurred


def estimate_noise_level(x: torch.Tensor) -> torch.Tensor:
    """Noise level of each image of a batch (B, C, X, Y) in [0, 1] -> (B,) in grey levels of 255 (the mean
    over the image's channels). An image smaller than one block, or with nothing unclipped, has level 0.
    Tensor operations only (the percentile is a sort and a gather), so it runs inside an exported ONNX graph."""
    if x.ndim != 4:
        raise InputError(f"the noise estimate takes a batch (B, C, X, Y), got shape {tuple(x.shape)}.")
    b, c, h, w = x.shape
    if h < _BLOCK or w < _BLOCK:
        return x.new_zeros(b)
    flat = x.detach().float().reshape(b * c, 1, h, w)
    hp = _highpass(flat)
    var = F.avg_pool2d(hp * hp, _BLOCK) - F.avg_pool2d(hp, _BLOCK) ** 2
    sd = var.clamp(min=0).sqrt().reshape(b * c, -1)
    clipped = ((flat <= _CLIP) | (flat >= 1 - _CLIP)).float()
    keep = (F.max_pool2d(clipped, _BLOCK) == 0).reshape(b * c, -1)
    ordered = torch.sort(torch.where(keep, sd, torch.full_like(sd, math.inf)), dim=1).values
    count = keep.sum(dim=1, keepdim=True)
    index = ((count - 1).clamp(min=0).float() * _QUANTILE).long()
    level = ordered.gather(1, index)[:, 0]
    level = torch.where(count[:, 0] > 0, level, torch.zeros_like(level)) * (255 / _CALIBRATION)
    return level.reshape(b, c).mean(dim=1)


#: grey levels (of 255) that map to 1 in a network's noise-map channel: radiographs' levels sit around 0-10
NOISE_MAP_UNIT = 10.0


def noise_levels(x: torch.Tensor, noise_level=None) -> torch.Tensor:
    """The (B,) noise levels of a batch ``x``: those given (one for the batch, or one per image), else estimated
    from ``x``: what a degradation-aware network, or the engine that runs its graph, is told."""
    if noise_level is None:
        return estimate_noise_level(x)
    level = torch.as_tensor(noise_level, dtype=x.dtype, device=x.device).reshape(-1)
    if level.numel() not in (1, x.shape[0]):
        raise InputError(f"{level.numel()} noise levels for a batch of {x.shape[0]} images.")
    return level.expand(x.shape[0])


def noise_map(x: torch.Tensor, noise_level=None, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The (B, 1, *size) constant map of each image's noise level (:func:`noise_levels`) / :data:`NOISE_MAP_UNIT`
    that a degradation-aware network takes as an extra input channel; ``size`` defaults to ``x``'s."""
    size = tuple(size or x.shape[-2:])
    return (noise_levels(x, noise_level).to(x) / NOISE_MAP_UNIT)[:, None, None, None].expand(-1, 1, *size)
