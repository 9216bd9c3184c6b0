"""The degradation-aware default's parts: the noise-level estimate, hospitals' processing as augmentation, the
LR-space network that takes the level, and the level on every surface (predictor, CLI, Slicer worker, bundle)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data
from monai.data import MetaTensor
from PIL import Image

from monai_sr_bundle import methods
from monai_sr_bundle.cli import main as cli
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.lrunet import LRUNet
from monai_sr_bundle.networks.noise import estimate_noise_level
from monai_sr_bundle.tiling import SRInferer
from monai_sr_bundle.transforms.noise import EstimateNoised, RandNoiseLevelScaled, checked_noise_level
from monai_sr_bundle.transforms.presets import lr_synthesis
from monai_sr_bundle.transforms.processing import RandGammad, RandMultiScaleContrastd, RandSigmoidLUTd, RandUnsharpMaskd


def _nih(n: int = 4, size: int = 128) -> torch.Tensor:
    """The first ``n`` NIH validation images, downsampled to ``size`` (antialiased), as a batch in [0, 1]."""
    from monai_sr_bundle.data.datalist import nih_datalist

    images = []
    for item in nih_datalist("val")[:n]:
        with Image.open(item["label"]) as im:
            images.append(np.asarray(im.convert("L").resize((size, size), Image.LANCZOS), np.float32) / 255)
    return torch.from_numpy(np.stack(images))[:, None]


NIH = needs_data(DATA / "nih_cxr14")


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Every parameter non-zero (the tail starts at zero, which would hide the body)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().max() > 0:
                p.normal_(0, 0.01)
    return net.eval()


# ------------------------------------------------------------------------------------------- the estimate


@NIH
def test_estimate_tracks_known_noise_on_real_radiographs():
    """Gaussian noise of a known sd added to NIH radiographs: the estimate rises with it, monotonically, and
    sits near sqrt(own^2 + added^2) (the images carry some noise of their own); a clean image's estimate is
    small; a flat image's is the added noise alone."""
    x = _nih()
    g = torch.Generator().manual_seed(0)
    own = estimate_noise_level(x)
    assert (own < 3).all()
    previous = own
    for sd in (1, 2, 4, 8, 16):
        noisy = (x + sd / 255 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        level = estimate_noise_level(noisy)
        assert (level > previous).all(), (sd, level, previous)
        expected = (own**2 + sd**2).sqrt()
        assert ((level - expected).abs() / expected < 0.25).all(), (sd, level, expected)
        previous = level
    flat = 0.5 + 5 / 255 * torch.randn((1, 1, 64, 64), generator=g)
    assert abs(float(estimate_noise_level(flat)) - 5) < 0.5


def test_estimate_leaves_out_clipped_regions_and_tiny_images():
    g = torch.Generator().manual_seed(1)
    noisy = (0.5 + 4 / 255 * torch.randn((1, 1, 64, 64), generator=g)).clamp(0, 1)
    half_black = noisy.clone()
    half_black[..., :, :40] = 0  # collimation: clipped, no noise
    assert abs(float(estimate_noise_level(half_black)) - float(estimate_noise_level(noisy))) < 0.5
    assert float(estimate_noise_level(torch.zeros(1, 1, 32, 32))) == 0.0
    assert estimate_noise_level(torch.rand(2, 1, 2, 5)).tolist() == [0.0, 0.0]
    with pytest.raises(InputError, match="batch"):
        estimate_noise_level(torch.rand(8, 8))


@pytest.mark.parametrize("value", ["x", -1, 51, float("nan"), float("inf"), True, [1]])
def test_a_bad_level_is_one_sentence(value):
    with pytest.raises(InputError, match="'auto' or a number of grey levels"):
        checked_noise_level(value)


def test_auto_and_numbers_are_levels():
    assert checked_noise_level(None) is None and checked_noise_level(" Auto ") is None
    assert checked_noise_level("2.5") == 2.5 and checked_noise_level(0) == 0.0


def test_the_estimate_is_kept_for_the_whole_image_and_scaled_on_request():
    g = torch.Generator().manual_seed(2)
    image = (0.5 + 6 / 255 * torch.randn((1, 48, 48), generator=g)).clamp(0, 1)
    d = EstimateNoised()({"image": image})
    assert abs(float(d["noise_level"]) - 6) < 1
    scaled = RandNoiseLevelScaled(factor=(0.0, 0.0), prob=1.0)(d)
    assert float(scaled["noise_level"]) == 0.0 and float(d["noise_level"]) > 0
    with pytest.raises(InputError, match="noise-level factor"):
        RandNoiseLevelScaled(factor=(2.0, 1.0))


# ------------------------------------------------------------------------------------- hospitals' processing


@pytest.mark.parametrize(
    "step",
    [
        RandGammad(gamma=(0.7, 0.7)),
        RandSigmoidLUTd(slope=(5.0, 5.0)),
        RandUnsharpMaskd(amount=(1.0, 1.0), sigma=(2.0, 2.0)),
        RandMultiScaleContrastd(strength=(0.8, 0.8)),
    ],
)
@NIH
def test_processing_changes_the_look_keeps_the_range_and_is_seeded(step):
    x = _nih(1, 96)[0]
    step.set_random_state(0)
    out = step({"label": x})["label"]
    step.set_random_state(0)
    again = step({"label": x})["label"]
    assert out.shape == x.shape and torch.equal(out, again)
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert (out - x).abs().mean() > 0.005


@NIH
def test_a_preset_processes_the_hr_before_its_lr_is_made():
    """The LR is made from the processed HR (the pair stays a pair); the processing may not touch the LR and
    the degradation may not touch the HR."""
    x = _nih(1, 96)[0]
    preset = {
        "processing": [{"_target_": "monai_sr_bundle.transforms.processing.RandGammad", "gamma": [0.5, 0.5]}],
        "transforms": [{"_target_": "monai_sr_bundle.transforms.degradation.Resized", "scale": "@scale"}],
    }
    out = lr_synthesis(preset, 4)({"label": x})
    plain = lr_synthesis({"transforms": preset["transforms"]}, 4)({"label": x**0.5})
    torch.testing.assert_close(out["label"], x**0.5)
    torch.testing.assert_close(out["image"], plain["image"])
    bad = {**preset, "processing": [{**preset["processing"][0], "keys": "image"}]}
    with pytest.raises(InputError, match="processing#0 .* would change the image 'image'"):
        lr_synthesis(bad, 4)
    with pytest.raises(InputError, match="`processing` must be a list"):
        lr_synthesis({**preset, "processing": {}}, 4)


# ------------------------------------------------------------------------------------------- the network


@NIH
def test_the_level_changes_the_output_and_none_means_estimated():
    net = _trained_like(LRUNet(4, channels=(8, 16, 24), blocks=1))
    x = _nih(2, 40)
    with torch.no_grad():
        clean, noisy = net(x, noise_level=0.0), net(x, noise_level=20.0)
        own = net(x, noise_level=estimate_noise_level(x))
        assert (clean - noisy).abs().max() > 1e-4
        torch.testing.assert_close(net(x), own)
        torch.testing.assert_close(net(x, noise_level=[0.0, 20.0])[1:], noisy[1:])
        with pytest.raises(InputError, match="3 noise levels for a batch of 2"):
            net(x, noise_level=[1.0, 2.0, 3.0])


def test_aligned_tiles_equal_the_whole_image_and_unaligned_ones_do_not():
    """The network halves its input twice: tiles that start at multiples of 4 LR pixels halve the same pixel
    pairs as the whole image (exact); starts anywhere do not."""
    net = _trained_like(LRUNet(4, channels=(8, 16, 24), blocks=1))
    x = torch.rand(1, 1, 75, 83, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    level = {"noise_level": 3.0}
    small = 2 * net.halo + 11
    with torch.no_grad():
        whole = SRInferer(4, tile_size=1000, halo=net.halo, network_kwargs=level)(x, net)
        aligned = SRInferer(4, tile_size=small, halo=net.halo, align=net.tile_align, network_kwargs=level)(x, net)
        loose = SRInferer(4, tile_size=small, halo=net.halo, network_kwargs=level)(x, net)
    assert (aligned - whole).abs().max() < 1e-5
    assert (loose - whole).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------- the surfaces


def _tiny_lrunet(tmp_path):
    """The lrunet overlay's method with small random weights (the tests check plumbing, not quality)."""
    method = methods.get("lrunet", 4)
    net = _trained_like(method.network())
    path = tmp_path / "lrunet.pt"
    torch.save(net.state_dict(), path)
    return method, path


@NIH
def test_the_predictor_estimates_on_the_whole_image_or_takes_the_users_level(tmp_path):
    method, weights = _tiny_lrunet(tmp_path)
    predictor = method.predictor(weights)
    image = MetaTensor(_nih(1, 64)[0])  # as the readers give it
    auto = predictor(image)
    assert auto.meta["noise_level"] == pytest.approx(float(estimate_noise_level(image[None])), abs=1e-3)
    zero = predictor(image, noise_level=0)
    assert zero.meta["noise_level"] == 0 and (zero - auto).abs().max() > 0
    default_zero = method.predictor(weights, noise_level="0")(image)
    torch.testing.assert_close(default_zero, zero)
    with pytest.raises(InputError, match="noise level must be 'auto' or a number"):
        predictor(image, noise_level="loud")
    with pytest.raises(InputError, match="method 'vdsr' is not told how noisy its input is"):
        methods.get("vdsr").predictor(noise_level=3)


@NIH
def test_cli_takes_a_noise_level_and_refuses_a_bad_one_before_writing(tmp_path, capsys):
    method, weights = _tiny_lrunet(tmp_path)
    src = tmp_path / "in.png"
    Image.fromarray((_nih(1, 48)[0, 0].numpy() * 255).astype(np.uint8)).save(src)
    out = tmp_path / "out"
    assert cli(["sr", str(src), "-o", str(out), "-m", "lrunet", "--weights", str(weights), "--noise-level", "2"]) == 0
    assert (out / "in_sr.png").is_file()
    bad = tmp_path / "bad"
    assert cli(["sr", str(src), "-o", str(bad), "-m", "lrunet", "--noise-level", "nan"]) != 0
    assert "noise level must be 'auto'" in capsys.readouterr().err and not bad.exists()
    assert cli(["sr", str(src), "-o", str(bad), "-m", "bicubic", "--noise-level", "3"]) != 0
    assert "is not told how noisy" in capsys.readouterr().err and not bad.exists()


@NIH
def test_the_slicer_worker_takes_a_level_per_request(tmp_path):
    from monai_sr_bundle.worker import Worker

    method, weights = _tiny_lrunet(tmp_path)
    src = tmp_path / "in.png"
    Image.fromarray((_nih(1, 48)[0, 0].numpy() * 255).astype(np.uint8)).save(src)
    worker = Worker()
    request = {"input": str(src), "method": "lrunet", "weights": str(weights)}
    for level, folder in ((0, "zero"), (20, "twenty")):
        reply = worker.handle(json.dumps({**request, "output": str(tmp_path / folder), "noise_level": level}))
        assert reply["written"]
    a, b = (np.asarray(Image.open(tmp_path / f / "in_sr.png")) for f in ("zero", "twenty"))
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0
    with pytest.raises(InputError, match="noise level must be"):
        worker.handle(json.dumps({**request, "output": str(tmp_path / "x"), "noise_level": "1e999"}))
    assert not (tmp_path / "x").exists()
