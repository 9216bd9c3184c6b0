"""LR synthesis: downsampling modes, upsampling, blur and noise, seeding, geometry and the named presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from PIL import Image

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.bicubic import upsample
from monai_sr_bundle.transforms.augmentation import RandContentScaled, content_scale, paired_augmentation
from monai_sr_bundle.transforms.degradation import (
    DOWNSAMPLE_MODES,
    RandBlurd,
    RandElectronicNoised,
    RandJPEG2000d,
    RandJPEGd,
    RandPoissonNoised,
    RandQuantized,
    RandResized,
    Resized,
    blur_kernel,
    downsample,
    zoom_geometry,
)
from monai_sr_bundle.transforms.presets import available_presets, load_preset, lr_synthesis


def _rand(*shape, seed=0, lo=0.0, hi=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * (hi - lo) + lo


def _high_freq_energy(img: torch.Tensor) -> float:
    a = img.double()
    return float(((a[..., 1:, :] - a[..., :-1, :]) ** 2).mean() + ((a[..., :, 1:] - a[..., :, :-1]) ** 2).mean())


# ------------------------------------------------------------------------------------------ downsample


def test_downsample_bicubic_aa_is_torch_antialiased_bicubic_and_pil():
    hr = _rand(1, 64, 48, lo=0.2, hi=0.8)  # non-square; away from 0 and 1 so the clamp does not act
    lr = downsample(hr, 4)
    assert lr.shape == (1, 16, 12) and lr.dtype == torch.float32
    ref = F.interpolate(hr[None], size=(16, 12), mode="bicubic", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(lr, ref)
    # an independent implementation: PIL's bicubic reduction (antialiased by construction)
    pil = np.asarray(Image.fromarray(hr[0].numpy(), mode="F").resize((12, 16), Image.BICUBIC))
    np.testing.assert_allclose(lr[0].numpy(), pil, atol=1e-5)


def test_downsample_area_is_block_mean():
    hr = _rand(2, 24, 36, seed=1)
    a = hr.numpy().astype(np.float64)
    block = a.reshape(2, 8, 3, 12, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(downsample(hr, 3, "area").numpy(), block, atol=1e-6)


def test_downsample_bicubic_without_antialias_aliases():
    hr = _rand(1, 64, 64, seed=2)
    lr = downsample(hr, 4, "bicubic")
    ref = F.interpolate(hr[None], size=(16, 16), mode="bicubic", align_corners=False, antialias=False)[0].clamp(0, 1)
    torch.testing.assert_close(lr, ref)
    # on white noise, no antialias keeps far more (aliased) high-frequency energy than the antialiased filter
    assert float(lr.std()) > 2 * float(downsample(hr, 4, "bicubic_aa").std())


def test_downsample_clamps_to_unit_range():
    hr = torch.zeros(1, 32, 32)
    hr[:, ::2] = 1.0  # stripes: bicubic without antialias overshoots
    for mode in DOWNSAMPLE_MODES:
        lr = downsample(hr, 4, mode)
        assert float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0


@pytest.mark.parametrize("shape", [(1, 30, 32), (1, 32, 30)])
def test_downsample_size_not_multiple_of_scale(shape):
    with pytest.raises(InputError, match="not a multiple of the scale 4"):
        downsample(torch.zeros(shape), 4)


def test_downsample_bad_mode_and_shape():
    with pytest.raises(InputError, match="unknown downsample mode"):
        downsample(torch.zeros(1, 8, 8), 2, "lanczos")
    with pytest.raises(InputError, match="2D image"):
        downsample(torch.zeros(1, 8, 8, 8), 2)


# -------------------------------------------------------------------------------------------- upsample


def test_upsample_modes():
    lr = _rand(2, 1, 8, 6, seed=3)
    for mode in ("bicubic", "bilinear", "nearest"):
        assert upsample(lr, 4, mode).shape == (2, 1, 32, 24)
    torch.testing.assert_close(upsample(lr, 3, "nearest"), lr.repeat_interleave(3, 2).repeat_interleave(3, 3))
    ref = F.interpolate(lr, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample(lr, 2, "bilinear"), ref)
    const = torch.full((1, 1, 8, 8), 0.3)
    for mode in ("bicubic", "bilinear", "nearest"):
        torch.testing.assert_close(upsample(const, 4, mode), torch.full((1, 1, 32, 32), 0.3))


def test_upsample_bicubic_is_not_clamped():
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:, :] = 1.0
    up = upsample(step, 4, "bicubic")
    assert float(up.max()) > 1.0 and float(up.min()) < 0.0  # the cubic kernel's overshoot is kept


def test_upsample_bad_mode():
    with pytest.raises(InputError, match="unknown upsample mode"):
        upsample(torch.zeros(1, 1, 4, 4), 2, "area")


def test_upsample_still_importable_from_degradation():
    from monai_sr_bundle.transforms import degradation

    assert degradation.upsample is upsample  # moved to networks.bicubic; the old import path keeps working


# ------------------------------------------------------------------------------------- degradation steps

D = "monai_sr_bundle.transforms.degradation."


def _lr(transform, img: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    if seed is not None:
        transform.set_random_state(seed)
    return transform({"image": img})["image"]


def test_resized_down_and_up():
    hr = _rand(1, 64, 48, lo=0.2, hi=0.8)
    lr = _lr(Resized("image", scale=4), hr)
    assert lr.shape == (1, 16, 12)
    torch.testing.assert_close(lr, downsample(hr, 4))
    for mode in ("bicubic", "bilinear", "nearest"):
        up = _lr(Resized("image", scale=4, mode=mode, up=True), lr)
        assert up.shape == hr.shape and float(up.min()) >= 0.0 and float(up.max()) <= 1.0
    nearest = _lr(Resized("image", scale=4, mode="nearest", up=True), lr)
    torch.testing.assert_close(nearest, lr.repeat_interleave(4, 1).repeat_interleave(4, 2))


def test_blur_reduces_high_frequencies_and_keeps_a_constant():
    hr = _rand(1, 64, 64, seed=5)
    blurred = _lr(RandBlurd("image", sigma=2.0), hr)
    assert blurred.shape == hr.shape
    assert _high_freq_energy(blurred) < 0.2 * _high_freq_energy(hr)
    assert float(blurred.mean()) == pytest.approx(float(hr.mean()), abs=0.02)  # blur keeps the mean
    const = _lr(RandBlurd("image", sigma=1.5), torch.full((1, 32, 32), 0.4))  # reflect-padded, normalised
    torch.testing.assert_close(const, torch.full((1, 32, 32), 0.4))
    assert torch.equal(_lr(RandBlurd("image", sigma=0.0), hr), hr)


def test_electronic_noise_std():
    img = torch.full((1, 64, 64), 0.5)
    lr = _lr(RandElectronicNoised("image", std=0.05), img, seed=0)
    assert float(lr.std()) == pytest.approx(0.05, rel=0.1)
    assert float(lr.mean()) == pytest.approx(0.5, abs=0.005)
    torch.testing.assert_close(_lr(RandElectronicNoised("image", std=0.0), img), img)


def test_poisson_noise_variance():
    mean, peak = 0.3, 100.0
    img = torch.full((1, 64, 64), mean)
    lr = _lr(RandPoissonNoised("image", peak=peak), img, seed=1)
    assert float(lr.mean()) == pytest.approx(mean, abs=0.005)
    assert float(lr.var()) == pytest.approx(mean / peak, rel=0.1)  # Var(Poisson(m*peak)/peak) = m/peak
    quiet = _lr(RandPoissonNoised("image", peak=100 * peak), img, seed=1)  # more photons, less noise
    assert float(quiet.var()) == pytest.approx(mean / (100 * peak), rel=0.1)
    counts = lr.double() * peak  # values are whole photon counts over the peak
    torch.testing.assert_close(counts, counts.round(), atol=1e-4, rtol=0)


def test_random_steps_are_seeded_and_draw_from_their_ranges():
    hr = _rand(1, 64, 64, seed=6)
    steps = [RandBlurd("image", sigma=(0.5, 1.5)), RandElectronicNoised("image", std=(0.01, 0.05))]
    for t in steps:
        a, b, c = _lr(t, hr, seed=7), _lr(t, hr, seed=7), _lr(t, hr, seed=8)
        assert torch.equal(a, b) and not torch.allclose(a, c)
        first, second = _lr(t, hr, seed=7), _lr(t, hr)  # a new draw on every call; reseeding replays
        assert torch.equal(first, a) and not torch.allclose(first, second)
    blur = RandBlurd("image", sigma=(0.5, 1.5)).set_random_state(0)
    sigmas = set()
    for _ in range(20):
        blur.randomize()
        assert 0.5 <= blur._value <= 1.5
        sigmas.add(blur._value)
    assert len(sigmas) == 20 and max(sigmas) - min(sigmas) > 0.5  # spread over the range
    noise = RandElectronicNoised("image", std=(0.01, 0.1))
    flat = torch.full((1, 128, 128), 0.5)
    measured = []
    for seed in range(4):
        lr = _lr(noise, flat, seed=seed)
        assert float(lr.std()) == pytest.approx(noise._value, rel=0.1)  # measured noise follows the drawn std
        measured.append(float(lr.std()))
    assert max(measured) - min(measured) > 0.005


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Resized("image", scale=0), "scale"),
        (lambda: Resized("image", scale=2.5), "scale"),
        (lambda: Resized("image", mode="lanczos"), "downsampling mode"),
        (lambda: Resized("image", mode="area", up=True), "upsampling mode"),
        (lambda: RandBlurd("image", sigma=-1.0), "sigma"),
        (lambda: RandBlurd("image", sigma=(2.0, 1.0)), "sigma"),
        (lambda: RandPoissonNoised("image", peak=0), "peak"),
        (lambda: RandPoissonNoised("image", peak=-5), "peak"),
        (lambda: RandElectronicNoised("image", std=(-0.1, 0.1)), "std"),
        (lambda: RandElectronicNoised("image", std=[0.1, 0.2, 0.3]), "std"),
        (lambda: RandBlurd("image", sigma="wide"), "sigma"),
        (lambda: RandPoissonNoised("image", peak=[100, "many"]), "peak"),
    ],
)
def test_degradation_steps_refuse_bad_parameters(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_degradation_steps_refuse_bad_images():
    with pytest.raises(InputError, match="not a multiple"):
        _lr(Resized("image", scale=4), torch.zeros(1, 30, 32))
    with pytest.raises(InputError, match="2D image"):
        _lr(RandBlurd("image"), torch.zeros(1, 8, 8, 8))


# ------------------------------------------------------------------ realistic steps (radiographs as users have them)


def test_blur_kernels_are_normalised_and_shaped():
    gauss = blur_kernel((1.5, 1.5))
    assert gauss.shape == (11, 11) and float(gauss.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(blur_kernel((1.5, 1.5), shape="generalized", beta=1.0), gauss)  # beta 1: Gaussian
    flat = blur_kernel((1.5, 1.5), shape="generalized", beta=4.0)
    assert float(flat[5, 6] / flat[5, 5]) > 0.97 > float(gauss[5, 6] / gauss[5, 5])  # a flat top ...
    assert float(flat[5, 9]) < float(gauss[5, 9])  # ... and short tails
    plateau = blur_kernel((1.5, 1.5), shape="plateau", beta=1.0)
    assert float(plateau[5, 0]) > 5 * float(gauss[5, 0])  # heavy tails
    aniso = blur_kernel((3.0, 0.5), theta=0.0)  # long along the first axis
    assert float(aniso[:, 9].sum()) > 5 * float(aniso[9, :].sum())
    turned = blur_kernel((3.0, 0.5), theta=np.pi / 2)
    torch.testing.assert_close(turned, aniso.T, atol=1e-6, rtol=0)


def test_kernel_blur_draws_shapes_and_anisotropy_and_keeps_a_constant():
    hr = _rand(1, 64, 64, seed=12)
    blur = RandBlurd(
        "image", sigma=(0.5, 2.0), kernels={"gaussian": 1, "generalized": 1, "plateau": 1}, anisotropic=0.5
    )
    outs = [_lr(blur, hr, seed=s) for s in range(6)]
    assert len({float(o.sum()) for o in outs}) == 6
    assert all(_high_freq_energy(o) < 0.6 * _high_freq_energy(hr) for o in outs)
    assert torch.equal(_lr(blur, hr, seed=3), outs[3])
    const = _lr(blur, torch.full((1, 40, 40), 0.3), seed=1)
    torch.testing.assert_close(const, torch.full((1, 40, 40), 0.3))
    never = RandBlurd("image", sigma=2.0, prob=0.0)
    assert torch.equal(_lr(never, hr, seed=0), hr)


def test_random_resize_gives_the_lr_size_by_any_mode_and_an_intermediate_size():
    hr = MetaTensor(_rand(1, 64, 48, seed=13, lo=0.1, hi=0.9), affine=_affine())
    sizes, outs = set(), []
    final = RandResized("image", scale=4)
    for seed in range(12):
        final.set_random_state(seed)
        out = final({"label": hr, "image": _rand(1, 37, 29, seed=seed)})["image"]  # from any intermediate size
        assert out.shape == (1, 16, 12) and float(out.min()) >= 0 and float(out.max()) <= 1
        np.testing.assert_allclose(np.linalg.norm(out.affine.numpy()[:3, :2], axis=0), [2.0, 2.8], rtol=1e-9)
        outs.append(out)
    assert len({float(o.sum()) for o in outs}) > 3  # the modes differ
    middle = RandResized("image", scale=4, modes=["area"], zoom=(0.5, 0.75)).set_random_state(0)
    for _ in range(5):
        size = middle({"label": hr, "image": hr})["image"].shape[-2:]
        sizes.add(tuple(size))
        assert 32 <= size[0] <= 48 and size[0] / 64 == pytest.approx(size[1] / 48, abs=0.03)
    assert len(sizes) > 1
    nearest = RandResized("image", scale=4, modes="nearest")({"label": hr, "image": hr})["image"]
    torch.testing.assert_close(nearest.as_tensor(), hr.as_tensor()[:, 2::4, 2::4])  # the nearest to each centre


def test_jpeg_is_8_bit_and_loses_more_at_lower_quality():
    hr = downsample(_rand(1, 256, 256, seed=14), 4) * 0.6 + 0.2
    errs = []
    for quality in (95, 50, 10):
        lr = _lr(RandJPEGd("image", quality=quality), hr, seed=0)
        assert lr.shape == hr.shape
        torch.testing.assert_close(lr * 255, (lr * 255).round(), atol=1e-4, rtol=0)  # 8-bit levels
        errs.append(float((lr - hr).abs().mean()))
    assert errs[0] < errs[1] < errs[2]
    ranged = RandJPEGd("image", quality=(20, 90))
    assert torch.equal(_lr(ranged, hr, seed=4), _lr(ranged, hr, seed=4))


def test_jpeg2000_loses_more_at_higher_ratio():
    hr = downsample(_rand(1, 256, 256, seed=15), 4) * 0.6 + 0.2
    errs = [float((_lr(RandJPEG2000d("image", ratio=r), hr, seed=0) - hr).abs().mean()) for r in (2, 20, 80)]
    assert errs[0] < errs[1] < errs[2] and errs[0] < 0.01


def test_quantization_puts_values_on_the_drawn_grid():
    img = _rand(1, 32, 32, seed=16)
    for bits in (8, 10, 12):
        lr = _lr(RandQuantized("image", bits=[bits]), img, seed=0).double()
        top = 2**bits - 1
        torch.testing.assert_close(lr * top, (lr * top).round(), atol=1e-3, rtol=0)
        assert float((lr - img.double()).abs().max()) <= 0.5 / top + 1e-6
    eight = _lr(RandQuantized("image", bits=[8]), img)
    either = RandQuantized("image", bits={8: 1, 12: 1})
    assert {torch.equal(_lr(either, img, seed=s), eight) for s in range(10)} == {True, False}  # both depths drawn


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RandJPEGd("image", quality=0), r"quality must be a number in \[1, 100\]"),
        (lambda: RandJPEGd("image", quality=(50, 101)), "quality"),
        (lambda: RandJPEG2000d("image", ratio=0.5), "ratio"),
        (lambda: RandQuantized("image", bits=[0]), "bits"),
        (lambda: RandQuantized("image", bits={8: -1}), "bits"),
        (lambda: RandBlurd("image", kernels=["box"]), "kernels"),
        (lambda: RandBlurd("image", anisotropic=1.5), "anisotropic"),
        (lambda: RandBlurd("image", kernels="plateau", beta_plateau=0), "beta_plateau"),
        (lambda: RandPoissonNoised("image", prob=2), "prob"),
        (lambda: RandResized("image", scale=4, zoom=(0.1, 1.0)), "zoom"),
        (lambda: RandResized("image", modes=["lanczos"]), "modes"),
        (lambda: RandContentScaled(zoom=(0.5, 1.5)), "zoom"),
    ],
)
def test_realistic_steps_refuse_bad_parameters(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_a_kernel_larger_than_the_image_is_one_sentence_naming_the_degradation():
    steps = {"transforms": [{"_target_": D + "RandBlurd", "sigma": 5.0}, {"_target_": D + "Resized", "scale": 4}]}
    with pytest.raises(InputError, match=r"^the degradation: RandBlurd: a blur of sigma 5 needs a 31x31 kernel"):
        lr_synthesis(steps, 4)({"label": _rand(1, 12, 12)})


@pytest.mark.parametrize(
    "inner, match",
    [
        ({"_target_": D + "RandJPEGd", "quality": 0}, r"transforms#0#transforms#1 \(.*RandJPEGd\) cannot be built"),
        ({"_target_": D + "RandBlurd", "keys": "label"}, r"transforms#0#transforms#1 \(.*RandBlurd\) would change"),
        ({"_target_": "torch.nn.Identity"}, r"transforms#0#transforms#1 \(torch.nn.Identity\) is a Identity"),
    ],
)
def test_a_bad_step_inside_a_composition_is_named(inner, match):
    steps = {"transforms": [{"_target_": "RandomOrder", "transforms": [{"_target_": D + "RandQuantized"}, inner]}]}
    with pytest.raises(InputError, match=match):
        lr_synthesis(steps, 4)


def test_the_training_preset_mixes_clean_and_degraded_pairs_and_is_seeded():
    hr = _rand(1, 128, 128, seed=17, lo=0.2, hi=0.8)
    t = lr_synthesis("real_train", 4)
    clean = downsample(hr, 4)
    outs = [t.set_random_state(seed)({"label": hr})["image"] for seed in range(40)]
    assert all(o.shape == (1, 32, 32) for o in outs)
    n_clean = sum(torch.equal(o, clean) for o in outs)
    assert 1 <= n_clean <= 15  # 15% clean
    assert len({float(o.sum()) for o in outs}) >= 40 - n_clean
    assert torch.equal(t.set_random_state(7)({"label": hr})["image"], outs[7])
    assert lr_synthesis("real_train", 2).set_random_state(0)({"label": hr})["image"].shape == (1, 64, 64)


def test_evaluation_presets_are_fixed_per_seed():
    hr = _rand(1, 128, 128, seed=18, lo=0.2, hi=0.8)
    for name in ("real_eval_x4", "jpeg50_x4"):
        t = lr_synthesis(name, 4)
        a, b = (t.set_random_state(0)({"label": hr})["image"] for _ in range(2))
        assert torch.equal(a, b)
    jpeg = lr_synthesis("jpeg50_x4", 4)({"label": hr})["image"]
    torch.testing.assert_close(jpeg, _lr(RandJPEGd("image", quality=50), downsample(hr, 4)))


def test_content_scale_shrinks_the_hr_image_and_its_boxes_together():
    hr = MetaTensor(_rand(1, 128, 96, seed=19), affine=_affine())
    step = RandContentScaled(zoom=(0.5, 0.9), min_size=32).set_random_state(0)
    for _ in range(4):
        out = step({"label": hr, "boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]])})
        f = out["label"].shape[-2] / 128
        assert 0.5 - 0.01 <= f <= 0.9 + 0.01 and abs(out["label"].shape[-1] - 96 * f) <= 1
        torch.testing.assert_close(out["boxes"], torch.tensor([[10.0, 20.0, 50.0, 60.0]]) * f, atol=0.5, rtol=0)
        spacing = np.linalg.norm(out["label"].affine.numpy()[:3, :2], axis=0)
        np.testing.assert_allclose(spacing * f, [0.5, 0.7], rtol=0.02)
    small = RandContentScaled(zoom=0.1, min_size=64)({"label": hr})["label"]
    assert small.shape[-2:] == (85, 64)  # never below the training patch
    assert content_scale(None, 64) == []


# --------------------------------------------------------------------------------------------- geometry


def _affine(spacing=(0.5, 0.7), origin=(10.0, -20.0), theta=0.3) -> torch.Tensor:
    c, s = np.cos(theta), np.sin(theta)
    a = np.eye(4)
    a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([spacing[0], spacing[1], 2.0])
    a[:3, 3] = [origin[0], origin[1], 3.0]
    return torch.as_tensor(a)


def _world(affine: torch.Tensor, ijk) -> np.ndarray:
    return (affine.double().numpy() @ np.array([*ijk, 1.0]))[:3]


@pytest.mark.parametrize("theta", [0.0, 0.3])
def test_zoom_geometry_lr_spacing_and_corner(theta):
    aff = _affine(theta=theta)
    hr = MetaTensor(_rand(1, 64, 48, seed=7), affine=aff.clone())
    lr = lr_synthesis("bicubic", 4)({"label": hr})["image"]
    assert isinstance(lr, MetaTensor) and lr.shape == (1, 16, 12)
    spacing = np.linalg.norm(lr.affine.numpy()[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [0.5 * 4, 0.7 * 4, 2.0], rtol=1e-9)
    # the outer corner of the first voxel is the same physical point in HR and LR
    np.testing.assert_allclose(_world(lr.affine, (-0.5, -0.5, 0)), _world(aff, (-0.5, -0.5, 0)), atol=1e-9)
    # ... and so is the far corner
    np.testing.assert_allclose(_world(lr.affine, (15.5, 11.5, 0)), _world(aff, (63.5, 47.5, 0)), atol=1e-9)
    # direction is unchanged
    np.testing.assert_allclose(
        lr.affine.numpy()[:3, :3] / spacing,
        aff.numpy()[:3, :3] / np.linalg.norm(aff.numpy()[:3, :3], axis=0),
        atol=1e-12,
    )
    torch.testing.assert_close(hr.affine.double(), aff)  # the HR image's metadata is not modified


def test_zoom_geometry_sr_direction_and_round_trip():
    aff = _affine()
    lr = MetaTensor(torch.zeros(1, 16, 12), affine=aff.clone())
    sr = zoom_geometry(lr, torch.zeros(1, 64, 48), 4)
    np.testing.assert_allclose(np.linalg.norm(sr.affine.numpy()[:3, :3], axis=0), [0.125, 0.175, 2.0], rtol=1e-9)
    np.testing.assert_allclose(_world(sr.affine, (-0.5, -0.5, 0)), _world(aff, (-0.5, -0.5, 0)), atol=1e-9)
    back = zoom_geometry(sr, torch.zeros(1, 16, 12), 0.25)
    torch.testing.assert_close(back.affine.double(), aff)
    assert sr.meta is not lr.meta


def test_zoom_geometry_plain_tensor_and_pre_upsample():
    out = torch.zeros(1, 4, 4)
    assert zoom_geometry(torch.zeros(1, 8, 8), out, 0.5) is out  # no metadata to carry
    aff = _affine()
    hr = MetaTensor(_rand(1, 32, 32, seed=8), affine=aff.clone())
    same = lr_synthesis("runet_bilinear_x4", 4)({"label": hr})["image"]
    torch.testing.assert_close(same.affine.double(), aff)  # HR-sized output keeps the HR geometry


# -------------------------------------------------------------------------------- presets and lr_synthesis


def test_presets_exist():
    names = available_presets()
    assert {"bicubic", "area_x4", "bicubic_noaa_x4", "realistic_x4", "adsr_artifacts_x4"} <= set(names)


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_synthesises_an_lr_image_and_keeps_the_hr(name):
    preset = load_preset(name)
    assert preset["description"] and preset["transforms"]
    scale = preset.get("scale", 4)
    hr = MetaTensor(_rand(1, 16 * scale + scale - 1, 16 * scale, seed=10, lo=0.1, hi=0.9), affine=_affine())
    out = lr_synthesis(name, scale).set_random_state(0)({"label": hr, "boxes": [[1, 2, 3, 4]]})
    assert out["label"].shape == (1, 16 * scale, 16 * scale)  # cropped to a multiple of the scale
    # not changed, unless the preset varies the HR image's look (its ``processing``) before degrading it
    changed = not torch.equal(out["label"].as_tensor(), hr.as_tensor()[:, : 16 * scale])
    assert changed == bool(preset.get("processing")), name
    size = 16 * scale if out["image"].shape[-1] == 16 * scale else 16
    assert out["image"].shape == (1, size, size) and out["boxes"] == [[1, 2, 3, 4]]
    assert torch.isfinite(out["image"]).all() and float(out["image"].min()) >= 0 and float(out["image"].max()) <= 1
    spacing = np.linalg.norm(out["image"].affine.numpy()[:3, :2], axis=0)
    np.testing.assert_allclose(spacing, np.array([0.5, 0.7]) * 16 * scale / size, rtol=1e-9)
    assert load_preset(f"{name}.json") == preset  # with or without the extension


def test_load_preset_bad(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_preset("no_such_preset")
    (tmp_path / "bad.json").write_text('{"scale": 4, "sigma": 1}')
    with pytest.raises(InputError, match=r"unknown key\(s\) sigma"):
        load_preset(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not readable JSON"):
        load_preset(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        load_preset(tmp_path / "list.json")
    (tmp_path / "steps.json").write_text('{"transforms": {"_target_": "Identityd"}}')
    with pytest.raises(InputError, match="`transforms` must be a list"):
        load_preset(tmp_path / "steps.json")
    (tmp_path / "step.json").write_text('{"transforms": [{"sigma": 1}]}')
    with pytest.raises(InputError, match=r"step.json'\: transforms#0 must be an object with a `_target_`"):
        load_preset(tmp_path / "step.json")
    ok = {"scale": 2, "transforms": [{"_target_": D + "Resized", "scale": "@scale", "mode": "area"}]}
    (tmp_path / "ok.json").write_text(json.dumps(ok))
    assert load_preset(str(tmp_path / "ok.json")) == ok


def test_a_transform_added_by_json_alone_is_applied_and_seeded(tmp_path):
    """A stock MONAI transform in a preset file, no code: it acts on the LR image only, with the preset's seed."""
    preset = {
        "description": "bicubic, then MONAI's own Gaussian noise",
        "transforms": [
            {"_target_": D + "Resized", "scale": "@scale"},
            {"_target_": "RandGaussianNoised", "prob": 1.0, "std": 0.05},
        ],
    }
    (tmp_path / "noisy.json").write_text(json.dumps(preset))
    hr = _rand(1, 64, 64, seed=11)
    plain = lr_synthesis("bicubic", 4)({"label": hr})["image"]
    noisy = lr_synthesis(tmp_path / "noisy.json", 4).set_random_state(5)({"label": hr})
    again = lr_synthesis(preset, 4).set_random_state(5)({"label": hr})
    assert torch.equal(noisy["label"], hr) and not torch.allclose(noisy["image"], plain, atol=0.01)
    assert torch.equal(noisy["image"], again["image"])


@pytest.mark.parametrize(
    "steps, match",
    [
        ([{"_target_": D + "RandBlurd", "keys": ["image", "label"]}], r"transforms#0 \(.*RandBlurd\) would change"),
        (
            [{"_target_": D + "RandPoissonNoised", "peak": 0}],
            r"transforms#0 .* cannot be built \(RandPoissonNoised: peak",
        ),
        ([{"_target_": "torch.nn.Identity"}], r"transforms#0 \(torch.nn.Identity\) is a Identity, not a MONAI"),
        ([{"_target_": "no.such.Transform"}], r"transforms#0 \(no.such.Transform\) cannot be built"),
        (
            [
                {"_target_": D + "Resized", "scale": "@scale"},
                {"_target_": "ConcatItemsd", "keys": "image", "name": "label"},
            ],
            "changed the HR image 'label'",
        ),
    ],
)
def test_lr_synthesis_refuses_steps_that_are_no_transforms_or_touch_the_hr(tmp_path, steps, match):
    (tmp_path / "bad.json").write_text(json.dumps({"transforms": steps}))
    with pytest.raises(InputError, match=match) as err:
        lr_synthesis(tmp_path / "bad.json", 4)({"label": _rand(1, 16, 16)})
    assert "bad.json" in str(err.value) and len(str(err.value).splitlines()) == 1


def test_rand_sr_crop_pairs_are_aligned_and_seeded():
    from monai_sr_bundle.transforms.degradation import RandSRCropd

    hr = torch.rand(1, 64, 48)
    lr = downsample(hr, 4, "area")  # with area downsampling an aligned LR patch is exactly the HR block mean
    crop = RandSRCropd(lr_size=5, scale=4, num_samples=3).set_random_state(7)
    pairs = crop({"image": lr, "label": hr, "other": 1})
    assert len(pairs) == 3
    for p in pairs:
        assert p["image"].shape == (1, 5, 5) and p["label"].shape == (1, 20, 20) and p["other"] == 1
        torch.testing.assert_close(downsample(p["label"], 4, "area"), p["image"])
    mask = torch.rand(1, 64, 48)  # the box mask, an item of its own on the HR grid
    again = RandSRCropd(lr_size=5, scale=4, num_samples=3, mask_keys=["box_mask"]).set_random_state(7)
    again = again({"image": lr, "label": hr, "box_mask": mask})
    assert all(torch.equal(a["label"], b["label"]) for a, b in zip(pairs, again))
    for p in again:  # cut from the HR image's window
        i, j = [int(torch.nonzero(hr[0] == p["label"][0, 0, 0])[0][k]) for k in (0, 1)]
        assert torch.equal(p["box_mask"], mask[:, i : i + 20, j : j + 20])


def test_rand_sr_crop_refuses_mismatched_or_small_images():
    from monai_sr_bundle.transforms.degradation import RandSRCropd

    with pytest.raises(InputError, match="not 4x the LR size"):
        RandSRCropd(lr_size=4, scale=4)({"image": torch.rand(1, 8, 8), "label": torch.rand(1, 30, 32)})
    with pytest.raises(InputError, match="smaller than the patch size"):
        RandSRCropd(lr_size=16, scale=4)({"image": torch.rand(1, 8, 8), "label": torch.rand(1, 32, 32)})


def test_lr_synthesis_puts_a_presets_artifacts_on_the_lr_only():
    """The ADSR preset through the train config's transform: artifacts drawn on the LR image, the HR target
    untouched; the same seed gives the same LR."""
    hr = _rand(1, 64, 64, seed=3, lo=0.2, hi=0.4)  # darker than the artifacts (intensity 0.9-1.0)
    plain = lr_synthesis("bicubic", 4)({"label": hr.clone()})["image"]
    drawn = []
    for seed in range(6):  # the preset draws artifacts with probability 0.5
        out = lr_synthesis("adsr_artifacts_x4", 4).set_random_state(seed)({"label": hr.clone()})
        assert torch.equal(out["label"], hr)
        again = lr_synthesis("adsr_artifacts_x4", 4).set_random_state(seed)({"label": hr.clone()})["image"]
        assert torch.equal(out["image"], again)
        drawn.append(not torch.equal(out["image"], plain))
    assert any(drawn) and not all(drawn)
    with pytest.raises(InputError, match="made for x4, not x2"):
        lr_synthesis("adsr_artifacts_x4", 2)
    with pytest.raises(InputError, match=r"the degradation has unknown key\(s\) blur"):
        lr_synthesis({"blur": 1.0}, 4)


# ------------------------------------------------------------------------------------------ augmentation


def test_paired_augmentation_keeps_the_hr_patch_the_target_of_its_lr_patch():
    """rot90 and cutout move the LR patch and its HR patch together: with block-mean LR synthesis the
    augmented LR is still exactly the block mean of the augmented HR, and cutout blanks both."""
    hr = _rand(1, 32, 24)
    aug = paired_augmentation(["rot90", "cutout"], 4)
    aug.set_random_state(seed=3)
    rotated = blanked = 0
    for _ in range(20):
        out = aug({"image": downsample(hr, 4, "area"), "label": hr.clone(), "box_mask": hr.clone()})
        torch.testing.assert_close(downsample(out["label"], 4, "area"), out["image"])
        assert out["box_mask"].shape == out["label"].shape  # the box mask turns with the HR patch
        assert torch.equal(out["box_mask"] == 0, out["label"] == 0)  # and is cleared where cutout blanks it
        rotated += out["label"].shape[-2:] == (24, 32)
        blanked += bool((out["label"] == 0).any())
    assert 0 < rotated < 20 and 0 < blanked < 20
    assert paired_augmentation([], 4)({"image": hr})["image"] is hr


@pytest.mark.parametrize("names", ["rot90", ["rot90", "mixup"], [1]])
def test_paired_augmentation_refuses_unknown_names(names):
    with pytest.raises(InputError, match="augmentations must be a list of rot90, cutout"):
        paired_augmentation(names, 4)
