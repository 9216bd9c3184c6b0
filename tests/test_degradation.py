"""LR synthesis: downsampling modes, upsampling, blur and noise, seeding, geometry and the named presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from PIL import Image

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.bicubic import upsample
from monai_sr_bundle.transforms.augmentation import paired_augmentation
from monai_sr_bundle.transforms.degradation import Degrade, Degraded, downsample, zoom_geometry
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
    for mode in ("bicubic_aa", "bicubic", "area"):
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


# ---------------------------------------------------------------------------------------------- Degrade


def test_degrade_default_shape_and_values():
    hr = _rand(1, 64, 48, lo=0.2, hi=0.8)
    lr = Degrade(scale=4)(hr)
    assert lr.shape == (1, 16, 12)
    torch.testing.assert_close(lr, downsample(hr, 4))  # no blur, no noise: just the downsampling


def test_degrade_pre_upsample_returns_hr_size():
    hr = _rand(1, 64, 48, seed=4)
    for mode in ("bicubic", "bilinear", "nearest"):
        lr = Degrade(scale=4, pre_upsample=mode)(hr)
        assert lr.shape == hr.shape and float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0
    nearest = Degrade(scale=4, pre_upsample="nearest")(hr)
    torch.testing.assert_close(nearest, downsample(hr, 4).repeat_interleave(4, 1).repeat_interleave(4, 2))


def test_degrade_blur_reduces_high_frequencies():
    hr = _rand(1, 64, 64, seed=5)
    sharp = Degrade(scale=2)(hr)
    blurred = Degrade(scale=2, blur_sigma=2.0)(hr)
    assert blurred.shape == sharp.shape == (1, 32, 32)
    assert _high_freq_energy(blurred) < 0.2 * _high_freq_energy(sharp)
    assert float(blurred.mean()) == pytest.approx(float(sharp.mean()), abs=0.02)  # blur keeps the mean
    # a constant image stays constant through the (reflect-padded, normalised) blur
    const = Degrade(scale=2, blur_sigma=1.5)(torch.full((1, 32, 32), 0.4))
    torch.testing.assert_close(const, torch.full((1, 16, 16), 0.4))


def test_degrade_gaussian_noise_std():
    hr = torch.full((1, 256, 256), 0.5)
    lr = Degrade(scale=4, noise="gaussian", noise_std=0.05).set_random_state(0)(hr)
    assert lr.shape == (1, 64, 64)
    assert float(lr.std()) == pytest.approx(0.05, rel=0.1)
    assert float(lr.mean()) == pytest.approx(0.5, abs=0.005)
    # noise_std 0 with gaussian noise is the clean image
    torch.testing.assert_close(Degrade(scale=4, noise="gaussian", noise_std=0.0)(hr), torch.full((1, 64, 64), 0.5))


def test_degrade_poisson_noise_variance():
    mean, peak = 0.3, 100.0
    hr = torch.full((1, 256, 256), mean)
    lr = Degrade(scale=4, noise="poisson", poisson_peak=peak).set_random_state(1)(hr)
    assert float(lr.mean()) == pytest.approx(mean, abs=0.005)
    assert float(lr.var()) == pytest.approx(mean / peak, rel=0.1)  # Var(Poisson(m*peak)/peak) = m/peak
    # more photons, less noise
    quiet = Degrade(scale=4, noise="poisson", poisson_peak=100 * peak).set_random_state(1)(hr)
    assert float(quiet.var()) == pytest.approx(mean / (100 * peak), rel=0.1)
    # values are whole photon counts over the peak
    counts = lr.double() * peak
    torch.testing.assert_close(counts, counts.round(), atol=1e-4, rtol=0)


def test_degrade_seeded_reproducibility():
    hr = _rand(1, 64, 64, seed=6)
    kwargs = dict(scale=4, blur_sigma=(0.5, 1.5), noise="gaussian", noise_std=(0.01, 0.05))
    a = Degrade(**kwargs).set_random_state(7)(hr)
    b = Degrade(**kwargs).set_random_state(7)(hr)
    c = Degrade(**kwargs).set_random_state(8)(hr)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the same transform draws anew on every call, and reseeding replays the sequence
    t = Degrade(**kwargs).set_random_state(7)
    first, second = t(hr), t(hr)
    assert torch.equal(first, a) and not torch.allclose(first, second)
    t.set_random_state(7)
    assert torch.equal(t(hr), a)
    # randomize=False reuses the last draw
    t.set_random_state(9)
    x = t(hr)
    assert torch.equal(t(hr, randomize=False), x)


def test_degrade_range_draws():
    t = Degrade(scale=2, blur_sigma=(0.5, 1.5), noise="gaussian", noise_std=(0.01, 0.1)).set_random_state(0)
    sigmas, stds = set(), set()
    for _ in range(20):
        t.randomize()
        assert 0.5 <= t._sigma <= 1.5 and 0.01 <= t._std <= 0.1
        sigmas.add(t._sigma)
        stds.add(t._std)
    assert len(sigmas) == 20 and len(stds) == 20
    assert max(sigmas) - min(sigmas) > 0.5  # spread over the range
    # measured noise follows the drawn std
    hr = torch.full((1, 256, 256), 0.5)
    measured = []
    for seed in range(4):
        t.set_random_state(seed)
        lr = t(hr)
        assert float(lr.std()) == pytest.approx(t._std, rel=0.1)
        measured.append(float(lr.std()))
    assert max(measured) - min(measured) > 0.005
    # fixed values are not drawn
    fixed = Degrade(scale=2, blur_sigma=0.7, noise_std=0.02)
    fixed.randomize()
    assert (fixed._sigma, fixed._std) == (0.7, 0.02)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scale": 0}, "scale"),
        ({"scale": 2.5}, "scale"),
        ({"downsample": "lanczos"}, "downsample mode"),
        ({"noise": "speckle"}, "noise kind"),
        ({"pre_upsample": "cubic"}, "pre_upsample"),
    ],
)
def test_degrade_bad_kwargs(kwargs, match):
    with pytest.raises(InputError, match=match):
        Degrade(**kwargs)


def test_degrade_bad_inputs():
    with pytest.raises(InputError, match="not a multiple"):
        Degrade(scale=4)(torch.zeros(1, 30, 32))
    with pytest.raises(InputError, match="2D image"):
        Degrade(scale=2)(torch.zeros(1, 8, 8, 8))


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
    lr = Degrade(scale=4)(hr)
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
    same = Degrade(scale=4, pre_upsample="bilinear")(hr)
    torch.testing.assert_close(same.affine.double(), aff)  # HR-sized output keeps the HR geometry


# -------------------------------------------------------------------------------------------- Degraded


def test_degraded_dict_writes_lr_key_and_keeps_hr():
    hr = MetaTensor(_rand(1, 32, 32, seed=9), affine=_affine())
    before = hr.clone()
    data = {"hr": hr, "boxes": [[1, 2, 3, 4]]}
    out = Degraded(keys="hr", lr_key="low", scale=4, noise="gaussian", noise_std=0.01).set_random_state(0)(data)
    assert out["hr"] is hr and torch.equal(out["hr"].as_tensor(), before.as_tensor())
    assert out["low"].shape == (1, 8, 8) and out["boxes"] is data["boxes"]
    assert "low" not in data  # the input dict is not modified
    same = Degraded(keys="hr", lr_key="low", scale=4, noise="gaussian", noise_std=0.01).set_random_state(0)(data)
    assert torch.equal(same["low"].as_tensor(), out["low"].as_tensor())  # seeds reach the inner Degrade
    assert Degraded(keys="hr", scale=2)({"hr": hr})["lr"].shape == (1, 16, 16)  # default lr_key


def test_degraded_bad_keys():
    with pytest.raises(InputError, match="one HR key"):
        Degraded(keys=["a", "b"], scale=2)
    with pytest.raises(KeyError):
        Degraded(keys="hr", scale=2)({"image": torch.zeros(1, 8, 8)})
    assert Degraded(keys="hr", scale=2, allow_missing_keys=True)({"image": torch.zeros(1, 8, 8)}).keys() == {"image"}
    with pytest.raises(InputError, match="noise kind"):
        Degraded(keys="hr", noise="salt")


# --------------------------------------------------------------------------------------------- presets


def test_presets_exist():
    names = available_presets()
    assert {"bicubic_x4", "area_x4", "bicubic_noaa_x4", "realistic_x4", "adsr_artifacts_x4"} <= set(names)


@pytest.mark.parametrize("name", available_presets())
def test_preset_builds_degraded(name):
    preset = load_preset(name)
    assert preset["description"]
    kwargs = {k: v for k, v in preset.items() if k not in ("description", "artifacts")}
    t = Degraded(keys="hr", **kwargs).set_random_state(0)
    scale = kwargs.get("scale", 4)
    hr = _rand(1, 16 * scale, 16 * scale, seed=10, lo=0.1, hi=0.9)
    out = t({"hr": hr})
    size = 16 * scale if kwargs.get("pre_upsample") else 16
    assert out["lr"].shape == (1, size, size)
    assert torch.isfinite(out["lr"]).all() and float(out["lr"].min()) >= 0 and float(out["lr"].max()) <= 1
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
    (tmp_path / "ok.json").write_text('{"scale": 2, "downsample": "area"}')
    assert load_preset(str(tmp_path / "ok.json")) == {"scale": 2, "downsample": "area"}


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
    again = RandSRCropd(lr_size=5, scale=4, num_samples=3).set_random_state(7)({"image": lr, "label": hr})
    assert all(torch.equal(a["label"], b["label"]) for a, b in zip(pairs, again))


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
    plain = lr_synthesis("bicubic_x4", 4)({"label": hr.clone()})["image"]
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
    with pytest.raises(InputError, match="`artifacts` must be an object"):
        lr_synthesis({"artifacts": [1]}, 4)


# ------------------------------------------------------------------------------------------ augmentation


def test_paired_augmentation_keeps_the_hr_patch_the_target_of_its_lr_patch():
    """rot90 and cutout move the LR patch and its HR patch together: with block-mean LR synthesis the
    augmented LR is still exactly the block mean of the augmented HR, and cutout blanks both."""
    hr = _rand(1, 32, 24)
    aug = paired_augmentation(["rot90", "cutout"], 4)
    aug.set_random_state(seed=3)
    rotated = blanked = 0
    for _ in range(20):
        out = aug({"image": downsample(hr, 4, "area"), "label": hr.clone()})
        torch.testing.assert_close(downsample(out["label"], 4, "area"), out["image"])
        rotated += out["label"].shape[-2:] == (24, 32)
        blanked += bool((out["label"] == 0).any())
    assert 0 < rotated < 20 and 0 < blanked < 20
    assert paired_augmentation([], 4)({"image": hr})["image"] is hr


@pytest.mark.parametrize("names", ["rot90", ["rot90", "mixup"], [1]])
def test_paired_augmentation_refuses_unknown_names(names):
    with pytest.raises(InputError, match="augmentations must be a list of rot90, cutout"):
        paired_augmentation(names, 4)
