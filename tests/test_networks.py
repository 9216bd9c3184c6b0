"""SR networks (bicubic, SRCNN, VDSR, SRResNet) and building them from their overlays (``methods.get(...).load``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.methods import load_weights
from monai_sr_bundle.networks import SRCNN, VDSR, Bicubic, SRResNet
from monai_sr_bundle.networks.srresnet import upsampling_factors
from monai_sr_bundle.tiling import SRInferer

NETWORKS = {"bicubic": Bicubic, "srcnn": SRCNN, "vdsr": VDSR}


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
def test_output_shape(name, scale, size):
    torch.manual_seed(0)
    net = NETWORKS[name](scale=scale).eval()
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        y = net(x)
    assert tuple(y.shape) == (2, 1, size[0] * scale, size[1] * scale)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_bicubic_is_torch_bicubic():
    x = torch.rand(1, 1, 10, 14)
    ref = F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False)
    assert torch.equal(Bicubic(3)(x), ref)
    assert _n_params(Bicubic(4)) == 0


@pytest.mark.parametrize("scale", [2, 4])
def test_vdsr_is_residual(scale):
    """With its body zeroed, VDSR returns the bicubic pre-upsampling exactly: the body learns HR - bicubic."""
    net = VDSR(scale=scale, depth=4).eval()
    for p in net.body.parameters():
        torch.nn.init.zeros_(p)
    x = torch.rand(1, 1, 9, 13)
    with torch.no_grad():
        assert torch.equal(net(x), Bicubic(scale)(x))


def test_parameter_counts():
    # SRCNN 9-5-5 with 64/32 filters on one channel: 1*64*81+64 + 64*32*25+32 + 32*25+1
    assert _n_params(SRCNN(4)) == 5248 + 51232 + 801 == 57281
    # VDSR: 20 3x3 layers, 64 channels: first 640, 18 x (64*64*9+64), last 64*9+1
    assert _n_params(VDSR(4)) == 640 + 18 * 36928 + 577 == 665921
    # the scale is a pre-upsampling factor, not a layer: same weights for every scale
    assert _n_params(SRCNN(2)) == _n_params(SRCNN(4)) and _n_params(VDSR(3)) == _n_params(VDSR(4))
    assert _n_params(VDSR(4, depth=5, channels=16)) == 160 + 3 * (16 * 16 * 9 + 16) + 145


def test_vdsr_rejects_too_shallow():
    with pytest.raises(ValueError, match="depth"):
        VDSR(depth=1)


def test_methods_listed():
    assert {"bicubic", "srcnn", "vdsr"} <= set(methods.names())


def test_load_network_bicubic_needs_no_weights():
    net = methods.get("bicubic", 3).load()
    assert isinstance(net, Bicubic) and net.scale == 3 and not net.training
    with pytest.raises(InputError, match="no weights"):
        methods.get("bicubic", 4).load("whatever.pt")


@pytest.mark.parametrize("method", ["srcnn", "vdsr"])
def test_load_network_with_weights(method, tmp_path):
    torch.manual_seed(1)
    src = methods.get(method, scale=4).network().eval()  # as the overlay builds it
    path = tmp_path / f"{method}.pt"
    torch.save(src.state_dict(), path)
    net = methods.get(method, 4).load(path)
    assert isinstance(net, NETWORKS[method]) and not net.training
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), src(x))


def test_load_network_missing_weights_names_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(InputError, match="weights file not found") as e:
        methods.get("srcnn", 4).load(missing)
    assert str(missing) in str(e.value)


def test_unknown_method_lists_available():
    with pytest.raises(InputError, match="unknown method") as e:
        methods.get("espcn", 4).load()
    for name in methods.names():
        assert name in str(e.value)
    with pytest.raises(InputError, match="unknown method"):
        methods.get("../srcnn")


def test_method_config_sets_scale():
    net = methods.get("vdsr", scale=2).network()
    assert isinstance(net, VDSR) and net.scale == 2


def test_load_weights_wrong_architecture(tmp_path):
    path = tmp_path / "vdsr.pt"
    torch.save(VDSR(4, depth=3, channels=8).state_dict(), path)
    with pytest.raises(InputError, match="do not fit") as e:
        load_weights(SRCNN(4), path)
    assert str(path) in str(e.value)
    # same layer names, other shapes (a narrower SRCNN) is refused too
    torch.save(SRCNN(4, filters=(16, 8)).state_dict(), path)
    with pytest.raises(InputError, match="do not fit"):
        load_weights(SRCNN(4), path)


def test_load_weights_not_a_state_dict(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(InputError) as e:
        load_weights(SRCNN(4), path)
    assert str(path) in str(e.value)
    torch.save(torch.zeros(3), path)  # a tensor, not a state dict
    with pytest.raises(InputError, match="do not fit"):
        load_weights(SRCNN(4), path)


# ---------------------------------------------------------------- SRResNet


def test_srresnet_parameter_count_is_the_papers():
    # head 9x9 (5248) + PReLU (64); 16 blocks of 2 convs, 2 BNs, 1 PReLU; closing conv + BN; two x2 stages
    # (conv 64 -> 256, PReLU); tail 9x9 (5185): SRGAN's generator on one channel, ~1.5M parameters
    block = 2 * (64 * 64 * 9 + 64) + 2 * 128 + 64
    assert _n_params(SRResNet(4)) == 5312 + 16 * block + 36928 + 128 + 2 * (64 * 256 * 9 + 256 + 64) + 5185
    assert _n_params(SRResNet(2)) < _n_params(SRResNet(4))  # one upsampling stage per factor of two


@pytest.mark.parametrize("scale, stages", [(2, [2]), (3, [3]), (4, [2, 2]), (8, [2, 2, 2]), (6, [2, 3])])
def test_srresnet_scales(scale, stages):
    net = SRResNet(scale, channels=8, blocks=1).eval()
    assert upsampling_factors(scale) == stages
    with torch.no_grad():
        assert tuple(net(torch.rand(1, 1, 7, 9)).shape) == (1, 1, 7 * scale, 9 * scale)


@pytest.mark.parametrize("scale", [1, 5, 9])
def test_srresnet_refuses_other_scales(scale):
    with pytest.raises(InputError, match=f"scale {scale}"):
        SRResNet(scale)


def test_srresnet_residual_starts_at_bicubic():
    x = torch.rand(2, 1, 10, 12)
    with torch.no_grad():
        assert torch.equal(SRResNet(4, channels=8, blocks=2, residual=True).eval()(x), Bicubic(4)(x))
        assert not torch.allclose(SRResNet(4, channels=8, blocks=2).eval()(x), Bicubic(4)(x), atol=1e-2)


def test_srresnet_halo_makes_tiles_exact():
    """The declared halo (LR pixels) is the receptive field: tiles with it equal one pass, tiles with one
    pixel less do not (the contract test's image is too small to tile a 16-block network)."""
    torch.manual_seed(0)
    net = SRResNet(4, channels=8, blocks=2).eval()
    for p in net.parameters():  # weights far from zero, so the image's edges reach every output pixel
        p.data.normal_(0, 0.3)
    x = torch.rand(1, 1, 50, 46)
    # head 4, blocks 2 x 2, closing conv 1, x2 convs at LR (1) and at 2x (1/2), 9x9 tail at 4x (1): 11.5
    assert net.halo == 12
    with torch.no_grad():
        whole = SRInferer(4, tile_size=64)(x, net)
        tiled = SRInferer(4, tile_size=2 * net.halo + 6, halo=net.halo)(x, net)
        short = SRInferer(4, tile_size=2 * net.halo + 6, halo=net.halo - 1)(x, net)
    assert (tiled - whole).abs().max().item() < 1e-4 * whole.abs().max().item()
    assert (short - whole).abs().max().item() > 1e-3 * whole.abs().max().item()
