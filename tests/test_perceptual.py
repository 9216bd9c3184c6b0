"""The ImageNet backbone shared by LPIPS and the perceptual loss, and the perceptual loss itself."""

from __future__ import annotations

import pytest
import torch

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.imagenet import ImageNetFeatures, default_weights_path, layer_names
from monai_sr_bundle.losses import PerceptualLoss, SRBatch
from monai_sr_bundle.metrics import load_lpips

needs_vgg = pytest.mark.skipif(
    not default_weights_path("vgg").is_file(),
    reason=f"VGG16 weights {default_weights_path('vgg')} not found (shared data folder absent; set MONAI_SR_DATA)",
)


def _pair(seed: int = 0, size: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.nn.functional.interpolate(torch.rand(2, 1, size // 4, size // 4, generator=g), size=(size, size))
    return (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1), hr


def test_layer_names_follow_the_vgg_convention():
    vgg = layer_names("vgg")
    assert len(vgg) == 30 and vgg[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert vgg[-2:] == ["conv5_3", "relu5_3"] and vgg.index("relu2_2") == 8
    assert layer_names("alex")[:3] == ["conv1", "relu1", "pool1"] and layer_names("alex")[-1] == "relu5"


@needs_vgg
def test_backbone_is_the_one_lpips_uses():
    """The perceptual loss and LPIPS (VGG) run the same ImageNet layers: same weights, same activations."""
    lpips = load_lpips("vgg")
    loss = PerceptualLoss({"relu2_2": 1.0})
    assert isinstance(lpips.backbone, ImageNetFeatures)
    for a, b in zip(lpips.backbone.state_dict().values(), loss.vgg.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.rand(1, 3, 20, 20)
    (got,) = loss.vgg(x, ["conv3_1"])
    assert got.shape == (1, 256, 5, 5) and loss.vgg.channels("relu4_3") == 512


@needs_vgg
def test_perceptual_loss_values_and_gradients():
    sr, hr = _pair()
    sr.requires_grad_(True)
    loss = PerceptualLoss({"relu2_2": 1.0, "conv5_3": 0.5})
    value = loss(sr, SRBatch(hr=hr))
    assert value.item() > 0 and loss(hr, SRBatch(hr=hr)).item() == 0
    value.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())  # the backbone does not train
    # weights scale the terms; grey equals its RGB replica; the batch's box mask plays no part
    with torch.no_grad():
        single = PerceptualLoss({"relu2_2": 2.0})(sr, SRBatch(hr=hr))
        assert single.item() == pytest.approx(2 * PerceptualLoss({"relu2_2": 1.0})(sr, SRBatch(hr=hr)).item(), rel=1e-6)
        rgb = PerceptualLoss({"relu2_2": 2.0})(sr.expand(-1, 3, -1, -1), SRBatch(hr=hr.expand(-1, 3, -1, -1)))
        assert rgb.item() == pytest.approx(single.item(), rel=1e-6)
        masked = PerceptualLoss({"relu2_2": 2.0})(sr, SRBatch(hr=hr, mask=torch.ones_like(hr)))
        assert masked.item() == pytest.approx(single.item(), rel=1e-6)
        l1 = PerceptualLoss({"relu2_2": 1.0}, distance="l1")(sr, SRBatch(hr=hr))
        assert l1.item() > 0 and l1.item() != pytest.approx(single.item() / 2)


@needs_vgg
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": {"relu5_4": 1.0}}, "no layer 'relu5_4'"),
        ({"layers": {"relu2_2": -1.0}}, "weights >= 0"),
        ({"layers": {}}, "weights >= 0"),
        ({"distance": "ssim"}, "distance must be one of"),
    ],
)
def test_perceptual_loss_bad_config(kwargs, message):
    with pytest.raises(InputError, match=message):
        PerceptualLoss(**kwargs)


@needs_vgg
def test_perceptual_loss_bad_shapes():
    loss = PerceptualLoss({"relu1_2": 1.0})
    with pytest.raises(InputError, match="perceptual loss needs"):
        loss(torch.rand(1, 1, 16, 16), SRBatch(hr=torch.rand(1, 1, 16, 20)))
    with pytest.raises(InputError, match="perceptual loss needs"):
        loss(torch.rand(1, 2, 16, 16), SRBatch(hr=torch.rand(1, 2, 16, 16)))


def test_missing_or_corrupt_weights_are_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_SR_DATA", str(tmp_path))
    with pytest.raises(InputError, match="MONAI_SR_DATA") as e:
        PerceptualLoss()
    assert str(tmp_path / "weights" / "lpips_vgg16_full_v0.1.npz") in str(e.value)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(InputError, match="not a valid LPIPS v0.1 archive"):
        PerceptualLoss(weights_path=bad)
