"""Winograd F(4x4, 3x3) inference path: transform matrices and equivalence with ``nn.Conv2d``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from monai_sr_bundle.networks import VDSR
from monai_sr_bundle.winograd import AT, BT, G, WinogradSequential, winograd_inference


def _randomize(net: nn.Module) -> nn.Module:
    """Fresh He-scaled weights and small biases everywhere (VDSR starts with a zero last layer)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=math.sqrt(2 / (9 * m.in_channels)))
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.05, 0.05)
    return net.eval()


def test_matrices_compute_1d_correlation():
    torch.manual_seed(0)
    d, g = torch.randn(6, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    y = AT @ ((G @ g) * (BT @ d))
    assert torch.allclose(y, torch.stack([d[i : i + 3] @ g for i in range(4)]), atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 6, 5), (2, 1, 9, 4), (1, 1, 3, 11)])
def test_vdsr_matches_eager(shape):
    torch.manual_seed(0)
    net = _randomize(VDSR(scale=4, depth=6, channels=16))
    fast = winograd_inference(net, compile=False)
    assert isinstance(fast.body, WinogradSequential)
    x = torch.rand(*shape)
    with torch.no_grad():
        ref, out = net(x), fast(x)
    assert out.shape == ref.shape and (ref - x.repeat_interleave(4, 2).repeat_interleave(4, 3)).std() > 0.1
    assert (out - ref).abs().max() < 1e-4


def test_sequential_without_relu_or_bias_and_repeat_calls():
    torch.manual_seed(1)
    seq = _randomize(
        nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.Conv2d(32, 16, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.Conv2d(16, 8, 1),
        )  # fmt: skip
    )
    fast = winograd_inference(seq, compile=False)
    assert [s[0] for s in fast.steps] == ["wino", "wino", "module", "wino", "module"]
    with torch.no_grad():
        for shape in [(2, 16, 13, 7), (1, 16, 5, 18), (2, 16, 13, 7)]:  # the workspace is reused / resized
            x = torch.randn(*shape)
            assert (fast(x) - seq(x)).abs().max() < 1e-4


@pytest.mark.slow
def test_compiled_path():
    torch.manual_seed(2)
    net = _randomize(VDSR(scale=2, depth=4, channels=16))
    x = torch.rand(1, 1, 10, 7)
    with torch.no_grad():
        assert (winograd_inference(net)(x) - net(x)).abs().max() < 1e-4


@pytest.mark.slow
def test_load_network_winograd_option(tmp_path):
    from monai_sr_bundle import methods

    torch.manual_seed(1)
    weights = tmp_path / "vdsr.pt"
    torch.save(_randomize(VDSR(scale=4)).state_dict(), weights)
    plain = methods.get("vdsr", 4).load(weights)
    fast = methods.get("vdsr", 4).load(weights, winograd=True)
    x = torch.rand(1, 1, 12, 10)
    with torch.inference_mode():  # the buffers made here must not break a later call outside inference mode
        assert (plain(x) - fast(x)).abs().max().item() < 1e-4
    with torch.no_grad():
        assert (plain(x) - fast(x)).abs().max().item() < 1e-4


def test_winograd_is_refused_where_it_gains_nothing(tmp_path):
    """SRResNet's folded sub-pixel tail needs its upsampler's layers, and Winograd did not speed it up: the
    option is refused in one sentence instead of failing inside the swap."""
    from monai_sr_bundle import methods
    from monai_sr_bundle.errors import InputError

    method = methods.get("srresnet", 4)
    torch.save(method.network().state_dict(), tmp_path / "w.pt")
    with pytest.raises(InputError, match="'srresnet' gains nothing from it: drop --winograd"):
        method.load(tmp_path / "w.pt", winograd=True)
