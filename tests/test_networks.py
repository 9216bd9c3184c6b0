"""SR networks (bicubic, SRCNN, VDSR, SRResNet, RRDBNet, SRGANVDSR, RUNet) and building them from their overlays
(``methods.get(...).load``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks import SRCNN, SRGANVDSR, VDSR, Bicubic, RRDBNet, RUNet, SRResNet
from monai_sr_bundle.networks.srresnet import fold_after_shuffle, upsampling_factors
from monai_sr_bundle.tiling import SRInferer
from monai_sr_bundle.weights import INT8_SCALE, STORAGES, compact_state, load_weights

NETWORKS = {"bicubic": Bicubic, "srcnn": SRCNN, "vdsr": VDSR}


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
@pytest.mark.slow
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
    # the message says what does not fit, not only torch's header line
    with pytest.raises(InputError, match="do not fit this network \\(size mismatch for "):
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


@pytest.mark.parametrize("storage", STORAGES)
def test_compact_storage_loads_back_as_the_fp32_weights_within_its_precision(storage, tmp_path):
    torch.manual_seed(0)
    net, x = VDSR(2, depth=4, channels=48).eval(), torch.rand(1, 1, 12, 12)
    full, small = tmp_path / "fp32.pt", tmp_path / f"{storage}.pt"
    torch.save(net.state_dict(), full)
    torch.save(compact_state(net.state_dict(), storage), small)
    assert small.stat().st_size < full.stat().st_size * {"fp16": 0.6, "int8": 0.35, "int8_kernel": 0.42}[storage]
    loaded = load_weights(VDSR(2, depth=4, channels=48), small).eval()
    for key, value in net.state_dict().items():
        # int8: half a step of the scale (the output channel's or the kernel's largest weight / 127); fp16: its
        # rounding
        dims = 2 if storage == "int8_kernel" else 1
        step = 0
        if value.ndim > 1 and storage != "fp16":
            step = value.abs().flatten(dims).amax(-1).view(*value.shape[:dims], *[1] * (value.ndim - dims)) / 127
        bound = step / 2 + value.abs() * 2**-10 + 1e-7
        assert ((loaded.state_dict()[key] - value).abs() <= bound * 1.01).all(), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0.01)
    # a scale that does not fit its weight is refused like any other foreign file
    state = compact_state(net.state_dict(), "int8")
    if storage != "fp16":  # the thin first and last layers stay fp16 (fewer than INT8_MIN_SIZE weights)
        stored = compact_state(net.state_dict(), storage)
        assert stored["body.0.weight"].dtype == torch.float16 and stored["body.2.weight"].dtype == torch.int8
        assert stored["body.2.weight" + INT8_SCALE].shape == (48, 48)[: 2 if storage == "int8_kernel" else 1]
    state["body.2.weight" + INT8_SCALE] = torch.ones(3, dtype=torch.float16)
    torch.save(state, small)
    with pytest.raises(InputError, match="do not fit"):
        load_weights(VDSR(2, depth=4, channels=48), small)


# ---------------------------------------------------------------- SRResNet


def test_srresnet_parameter_count_is_the_papers():
    # head 9x9 (5248) + PReLU (64); 16 blocks of 2 convs, 2 BNs, 1 PReLU; closing conv + BN; two x2 stages
    # (conv 64 -> 256, PReLU); tail 9x9 (5185): SRGAN's generator on one channel, ~1.5M parameters
    block = 2 * (64 * 64 * 9 + 64) + 2 * 128 + 64
    assert _n_params(SRResNet(4)) == 5312 + 16 * block + 36928 + 128 + 2 * (64 * 256 * 9 + 256 + 64) + 5185
    assert _n_params(SRResNet(2)) < _n_params(SRResNet(4))  # one upsampling stage per factor of two
    # without BatchNorm (EDSR's choice): the 33 BN layers' 128 parameters each are gone, nothing else
    assert _n_params(SRResNet(4)) - _n_params(SRResNet(4, batch_norm=False)) == 33 * 128
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in SRResNet(4, blocks=2, batch_norm=False).modules())


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


@pytest.mark.parametrize("factor, kernel", [(2, 9), (3, 9), (2, 3), (4, 5)])
def test_a_convolution_after_pixel_shuffle_folds_in_front_of_it(factor, kernel):
    """The folded kernel before the shuffle gives the original convolution's output after it, borders
    included (the fast path of SRResNet's and the hybrid's last stage)."""
    torch.manual_seed(0)
    x, weight = torch.randn(2, 3 * factor * factor, 6, 5), torch.randn(2, 3, kernel, kernel)
    folded, padding = fold_after_shuffle(weight, factor)
    expected = F.conv2d(F.pixel_shuffle(x, factor), weight, padding=kernel // 2)
    # the same sums in another order: float32 rounding of ~250-term sums of values near 15, up to ~3e-5
    torch.testing.assert_close(
        F.pixel_shuffle(F.conv2d(x, folded, padding=padding), factor), expected, atol=1e-4, rtol=1e-5
    )


@pytest.mark.parametrize("network", [SRResNet, SRGANVDSR])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_subpixel_networks_equal_their_unfolded_layout(network, scale):
    """``forward`` (tail folded in front of the last shuffle) equals the layers applied as the paper draws
    them, with PReLU slopes and a tail far from their initial values."""
    torch.manual_seed(0)
    net = network(scale, channels=8, blocks=1, **({"vdsr_depth": 2} if network is SRGANVDSR else {})).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    x = torch.rand(2, 1, 7, 9)
    with torch.no_grad():
        body = net.body if network is SRResNet else net.vdsr
        h = net.head(x) if network is SRResNet else net.blocks(net.head(x))
        features = h + body(h)
        expected = net.tail(net.upsample(features))
        torch.testing.assert_close(net(x), expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-5)


def test_srresnet_residual_starts_at_bicubic():
    x = torch.rand(2, 1, 10, 12)
    with torch.no_grad():
        assert torch.equal(SRResNet(4, channels=8, blocks=2, residual=True).eval()(x), Bicubic(4)(x))
        assert not torch.allclose(SRResNet(4, channels=8, blocks=2).eval()(x), Bicubic(4)(x), atol=1e-2)


@pytest.mark.slow
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


def _far_reaching(net: torch.nn.Module, gain: float) -> None:
    """Positive weights on the bottom-right tap of every spatial convolution only (dense weights elsewhere):
    every path through the network adds up instead of cancelling and reads as far right and down as it can,
    so the edge of the receptive field weighs enough to be seen in float32 (with whole 3x3 kernels of
    random sign it fades by ~3x per layer, below float precision in a 20-layer RRDB)."""
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            w = torch.zeros_like(m.weight)
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1:
                w[..., -1, -1].uniform_(0, 2 * gain / m.weight.shape[1])
            else:
                w.uniform_(0, 2 * gain / m.weight[0].numel())
            m.weight.data.copy_(w)
            if m.bias is not None:
                m.bias.data.uniform_(0, 0.1)


def _tiling_errors(net: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Largest |tiled - whole| with tiles carrying the declared halo, and with one pixel less. The output
    is mapped onto [0, 1] first, so that SRInferer's clamp hides nothing."""
    net = net.eval().to(dtype)
    with torch.no_grad():
        raw = net(x.to(dtype))
    lo, hi = raw.min().item(), raw.max().item()

    def unit(t: torch.Tensor) -> torch.Tensor:
        return ((net(t.to(dtype)) - lo) / (hi - lo)).float()

    s, tile = net.scale, 2 * net.halo + 6
    with torch.no_grad():
        whole = SRInferer(s, tile_size=1000)(x, unit)
        tiled = SRInferer(s, tile_size=tile, halo=net.halo)(x, unit)
        short = SRInferer(s, tile_size=tile, halo=net.halo - 1)(x, unit)
    return (tiled - whole).abs().max().item(), (short - whole).abs().max().item()


# ---------------------------------------------------------------- RRDBNet (ESRGAN)


def test_rrdb_parameter_count_is_the_papers():
    # a dense block: four convs adding 32 channels to 64, 96, 128, 160 inputs, one from 192 back to 64
    dense = sum((64 + 32 * i) * 32 * 9 + 32 for i in range(4)) + 192 * 64 * 9 + 64
    conv = 64 * 64 * 9 + 64
    # head 3x3 (640); 23 RRDBs of 3 dense blocks; trunk conv; two upsampling convs; HR conv; 3x3 to the image
    assert _n_params(RRDBNet(4)) == 640 + 23 * 3 * dense + conv + 2 * conv + conv + 577 == 16_695_681
    # on RGB it is ESRGAN's published RRDB_ESRGAN_x4 generator: 16,697,987 parameters
    assert _n_params(RRDBNet(4, in_channels=3)) == 16_697_987


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_rrdb_shapes(scale):
    net = RRDBNet(scale, channels=8, growth=4, blocks=1).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 1, 7, 9))
    assert tuple(y.shape) == (2, 1, 7 * scale, 9 * scale) and torch.isfinite(y).all()


def test_rrdb_residual_starts_at_bicubic():
    x = torch.rand(2, 1, 10, 12)
    with torch.no_grad():
        assert torch.equal(RRDBNet(4, channels=8, growth=4, blocks=1, residual=True).eval()(x), Bicubic(4)(x))
        assert not torch.allclose(RRDBNet(4, channels=8, growth=4, blocks=1).eval()(x), Bicubic(4)(x), atol=1e-2)


@pytest.mark.slow
def test_rrdb_halo_makes_tiles_exact():
    torch.manual_seed(0)
    net = RRDBNet(4, channels=4, growth=8, blocks=1)
    _far_reaching(net, gain=4.0)
    # LR: head 1 + 3 dense blocks x 5 convs + trunk conv 1 = 17 (68 HR), x2 convs at 2x and 4x (2 + 1 HR),
    # two tail convs at 4x (2 HR): 73 HR pixels, 19 LR
    assert net.halo == 19
    tiled, short = _tiling_errors(net, torch.rand(1, 1, 50, 46))
    assert tiled < 1e-5 and short > 1e-4


# ---------------------------------------------------------------- SRGANVDSR


def test_srgan_vdsr_parameter_count():
    # SRResNet's head (5312) and 16 residual blocks, 20 VDSR convs of 64 channels, two x2 sub-pixel
    # stages, 9x9 tail (5185)
    block = 2 * (64 * 64 * 9 + 64) + 2 * 128 + 64
    up = 2 * (64 * 256 * 9 + 256 + 64)
    assert _n_params(SRGANVDSR(4)) == 5312 + 16 * block + 20 * (64 * 64 * 9 + 64) + up + 5185 == 2_231_425


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_srgan_vdsr_shapes(scale):
    net = SRGANVDSR(scale, channels=8, blocks=1, vdsr_depth=3).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 1, 7, 9))
    assert tuple(y.shape) == (2, 1, 7 * scale, 9 * scale) and torch.isfinite(y).all()


def test_srgan_vdsr_residual_starts_at_bicubic():
    x = torch.rand(2, 1, 10, 12)
    with torch.no_grad():
        net = SRGANVDSR(4, channels=8, blocks=1, vdsr_depth=3, residual=True).eval()
        assert torch.equal(net(x), Bicubic(4)(x))
        net = SRGANVDSR(4, channels=8, blocks=1, vdsr_depth=3).eval()
        assert not torch.allclose(net(x), Bicubic(4)(x), atol=1e-2)


def test_srgan_vdsr_halo_makes_tiles_exact():
    torch.manual_seed(0)
    net = SRGANVDSR(4, channels=8, blocks=1, vdsr_depth=3)
    _far_reaching(net, gain=1.0)
    # LR: head 4 + block 2 + VDSR 3 = 9 (36 HR); sub-pixel convs at LR (4 HR) and 2x (2 HR); tail 4 HR: 46 -> 12
    assert net.halo == 12
    tiled, short = _tiling_errors(net, torch.rand(1, 1, 40, 36))
    assert tiled < 1e-5 and short > 1e-2


# ---------------------------------------------------------------- RUNet


def test_runet_parameter_count():
    def res_block(c_in, c_out):  # two bias-free 3x3 convs with BN, a 1x1 projection where the width changes
        return 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out + (c_in * c_out + c_out if c_in != c_out else 0)

    chans = (32, 64, 128, 256)
    down = sum(res_block(w, c) + res_block(c, c) for w, c in zip((32,) + chans, chans))
    up = sum(4 * hi * lo + lo for lo, hi in zip(chans, chans[1:]))  # 2x2 transposed convs
    decode = sum(27 * c * c + 4 * c for c in chans[:-1])  # conv 2c -> c and c -> c, with BN
    assert _n_params(RUNet(4)) == 9 * 32 + 64 + down + up + decode + 33 == 3_547_809
    assert _n_params(RUNet(2)) == _n_params(RUNet(4))  # pre-upsampling: the scale is not a layer


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_runet_shapes(scale):
    """Any size works: 7 x 9 at x3 is 21 x 27, padded to 24 x 32 for the pooled levels and cropped back."""
    net = RUNet(scale, channels=(8, 16, 32, 64), res_blocks=1).eval()
    torch.nn.init.normal_(net.last.weight, 0, 0.3)
    with torch.no_grad():
        y = net(torch.rand(2, 1, 7, 9))
    assert tuple(y.shape) == (2, 1, 7 * scale, 9 * scale) and torch.isfinite(y).all()


def test_runet_starts_at_the_interpolation_and_modes_differ():
    torch.manual_seed(0)
    net = RUNet(4, channels=(8, 16), res_blocks=1).eval()
    x = torch.rand(1, 1, 9, 11)
    with torch.no_grad():
        assert torch.equal(net(x), Bicubic(4)(x))  # zero last conv: the interpolated image
        torch.nn.init.normal_(net.last.weight, 0, 0.3)
        outs = {}
        for mode in ("bicubic", "bilinear", "nearest"):
            net.pre_upsample = mode
            outs[mode] = net(x)
    assert not torch.allclose(outs["bicubic"], outs["bilinear"], atol=1e-3)
    assert not torch.allclose(outs["bilinear"], outs["nearest"], atol=1e-3)
    net.pre_upsample = "lanczos"
    with pytest.raises(InputError, match="lanczos"):
        net(x)


@pytest.mark.slow
def test_runet_halo_makes_tiles_exact_when_pooling_grids_line_up():
    """Three levels at x4: a pooled pixel covers 4 HR = 1 LR pixel, so every tile pools the same pixel pairs
    as the whole image and the halo makes tiles exact (computed in float64: the receptive field's edge
    enters only through bicubic's smallest tap, ~1% of a pixel, and float32 rounding would hide it)."""
    torch.manual_seed(0)
    net = RUNet(4, channels=(8, 16, 32), res_blocks=1)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.weight.data.normal_(0, 3.0 / m.weight[0].numel() ** 0.5)
    # HR: head 1, one block (2 convs) per level: 2 + 4 + 8, decoder 2 convs + pool pair per upper level:
    # 3 + 6: 24 HR, ceil(24 / 4) + 2 for bicubic = 8 LR
    assert net.halo == 8
    tiled, short = _tiling_errors(net, torch.rand(1, 1, 30, 26), torch.float64)
    assert tiled < 1e-7 and short > 1e-6


@pytest.mark.slow
def test_runet_tiles_are_not_exact_when_pooling_grids_differ():
    """Four levels at x4: a pooled pixel covers 8 HR = 2 LR pixels, and a tile starting at an odd LR pixel
    pools other pairs than the whole image does. Tiled output then differs from whole-image output; this
    bounds how much, for random weights (measured: 2.3e-2 for a residual of up to 0.19; over four seeds
    at most 14% of the residual)."""
    torch.manual_seed(0)
    net = RUNet(4, channels=(8, 16, 32, 64), res_blocks=1).eval()
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.weight.data.normal_(0, 1.0 / m.weight[0].numel() ** 0.5)
    x = torch.rand(1, 1, 45, 41)
    with torch.no_grad():
        residual = (net(x) - Bicubic(4)(x)).abs().max().item()
        whole = SRInferer(4, tile_size=1000)(x, net)
        tiled = SRInferer(4, tile_size=2 * net.halo + 9, halo=net.halo)(x, net)
    diff = (tiled - whole).abs().max().item()
    assert 1e-4 < diff < 0.2 * residual


def test_new_networks_reject_empty_configurations():
    with pytest.raises(ValueError, match="vdsr_depth"):
        SRGANVDSR(vdsr_depth=0)
    with pytest.raises(ValueError, match="level"):
        RUNet(channels=())
    with pytest.raises(InputError, match="scale 5"):
        RRDBNet(5)
