"""The tiling inferer: exact core-crop tiles with the network's own context, seeded Gaussian blending for
stochastic networks, slice-by-slice volumes, and what tiling costs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks import Bicubic
from monai_sr_bundle.networks.bicubic import upsample
from monai_sr_bundle.tiling import SRInferer, blend_windows, crop_windows

SCALE = 4


def _smooth(shape, seed: int = 0) -> torch.Tensor:
    """A smooth random image in [0, 1] (structure at several scales, like anatomy rather than noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, *(max(2, s // 4) for s in shape[-2:])), generator=g)
    x = torch.nn.functional.interpolate(coarse, size=tuple(shape[-2:]), mode="bicubic", align_corners=False)
    x = x + 0.1 * torch.rand((1, 1, *shape[-2:]), generator=g)
    return ((x - x.min()) / (x.max() - x.min())).expand(*shape).contiguous()


def _srcnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return methods.get("srcnn", SCALE).network().eval()


class TileNoise(torch.nn.Module):
    """A stand-in for a diffusion sampler: bicubic plus one offset per tile drawn from the generator, so
    that tiles disagree the way independent samples do."""

    stochastic = True

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        offset = 0.2 * torch.rand((x.shape[0], 1, 1, 1), generator=generator)
        return upsample(x, SCALE) * 0.5 + offset


def test_crop_tiles_equal_whole_image_with_the_networks_halo():
    """SRCNN reads 4 LR pixels around each output pixel (bicubic 2 + 9-5-5 convolutions 8 HR px): tiles with
    that halo give the whole-image result to float rounding (measured max |diff| ~1e-7); with no halo they
    do not (the control shows that the halo, not luck, makes them equal)."""
    net = _srcnn()
    x = _smooth((2, 1, 44, 52))
    with torch.no_grad():
        whole = SRInferer(SCALE, tile_size=64)(x, net)
        tiled = SRInferer(SCALE, tile_size=20, halo=net.halo, sw_batch_size=3)(x, net)
        blind = SRInferer(SCALE, tile_size=20, halo=0)(x, net)
    assert net.halo == 4
    assert tuple(tiled.shape) == tuple(whole.shape) == (2, 1, 44 * SCALE, 52 * SCALE)
    assert (tiled - whole).abs().max().item() < 1e-5
    assert (blind - whole).abs().max().item() > 1e-3
    assert whole.std() > 0.05  # not a trivially clamped output


@pytest.mark.parametrize("tile,halo,align", [(10, 2, 1), (20, 7, 1), (256, 7, 1), (9, 4, 1), (20, 5, 4), (31, 7, 2)])
def test_crop_windows_cover_every_pixel_once_with_full_context(tile, halo, align):
    """Also with ``align`` (window starts at its multiples, for networks that halve their input): windows at
    most ``2 * (align - 1)`` pixels longer than the tile."""
    for size in (1, 9, 10, 11, 23, 57, 512):
        length, windows = crop_windows(size, tile, halo, align)
        assert length <= max(tile, 1) + 2 * (align - 1) or size <= tile
        cover = np.zeros(size, int)
        for start, c0, c1 in windows:
            assert start % align == 0
            assert 0 <= start <= c0 < c1 <= start + length <= size
            assert c0 - start >= halo or start == 0  # full context, or the image edge (the same as whole-image SR)
            assert start + length - c1 >= halo or start + length == size
            cover[c0:c1] += 1
        assert (cover == 1).all()


def test_crop_overhead_is_the_halo_only():
    """A 512-px axis in 256-px tiles with VDSR's 7-px halo: 3 windows of 185 px (555 px computed per 512),
    where the old fixed 25% overlap computed 3 windows of 256 (768)."""
    length, windows = crop_windows(512, 256, 7)
    assert (length, len(windows)) == (185, 3)
    assert (length * len(windows)) ** 2 / 512**2 < 1.25


def test_tile_too_small_for_the_halo():
    with pytest.raises(InputError, match="tile size 14 leaves no room"):
        crop_windows(100, 14, 7)
    with pytest.raises(InputError, match="merge mode"):
        SRInferer(SCALE, merge="average")


def test_blend_windows_overlap():
    for size in (40, 41, 100, 257):
        length, starts = blend_windows(size, 32, 8)
        assert length == 32 and starts[0] == 0 and starts[-1] + length == size
        assert all(b - a <= length - 8 for a, b in zip(starts, starts[1:]))


def test_blend_is_seeded_and_seamless():
    """Same seed, same bytes; another seed, another sample. Hard core borders would show each tile's offset
    as a step (crop mode, measured); Gaussian blending turns it into a ramp no steeper than a fraction of it."""
    net = TileNoise()
    x = _smooth((1, 1, 64, 64))
    blend = SRInferer(SCALE, tile_size=24, merge="blend", seed=5)
    a, b = blend(x, net), blend(x, net)
    other = SRInferer(SCALE, tile_size=24, merge="blend", seed=6)(x, net)
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    base = upsample(x, SCALE) * 0.5

    def steepest(out):
        r = out - base
        return max(r.diff(dim=-1).abs().max().item(), r.diff(dim=-2).abs().max().item())

    gen = torch.Generator().manual_seed(5)
    cropped = SRInferer(SCALE, tile_size=24, halo=4)(x, lambda t: net(t, generator=gen))
    assert steepest(cropped) > 0.02  # the seams blending must remove
    assert steepest(a) < 0.25 * steepest(cropped)


def test_volume_is_slice_by_slice():
    net = _srcnn(1)
    vol = torch.stack([_smooth((1, 1, 32, 36), seed=k) for k in range(3)], dim=-1)  # (1, 1, 32, 36, 3)
    inferer = SRInferer(SCALE, halo=net.halo)
    with torch.no_grad():
        out = inferer(vol, net)
        per_slice = torch.stack([inferer(vol[..., k], net) for k in range(3)], dim=-1)
    assert tuple(out.shape) == (1, 1, 32 * SCALE, 36 * SCALE, 3)
    assert torch.equal(out, per_slice)


def test_inferer_rejects_other_ranks():
    with pytest.raises(InputError, match="expected a batch"):
        SRInferer(SCALE)(torch.rand(1, 32, 32), Bicubic(SCALE))
