"""Readers of published SR weights: Real-ESRGAN's compact model in ncnn form checked against the ncnn
package's own forward pass on a real radiograph, the BasicSR ``.pth`` layout, the one-channel fold, and files
of another architecture or broken files refused in one sentence."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data
from PIL import Image

from monai_sr_bundle.cli import main as cli
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.srvgg import SRVGGNetCompact
from monai_sr_bundle.pretrained import read_ncnn_param, srvgg_from_basicsr, srvgg_from_ncnn

REALESRGAN = DATA / "weights" / "realesrgan" / "realesr-general-x4v3"
pytestmark = needs_data(DATA / "weights" / "realesrgan")


def _radiograph(side: int = 48) -> np.ndarray:
    path = sorted((DATA / "nih_cxr14" / "images_512").glob("*.png"))[0]
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((side, side), Image.BICUBIC), np.float32) / 255


def test_ncnn_compact_model_matches_ncnn_on_a_real_radiograph():
    """The converted one-channel network equals ncnn's RGB forward of the same file on the grey image repeated
    to RGB, averaged over the colours."""
    ncnn = pytest.importorskip("ncnn")
    state, args = srvgg_from_ncnn(f"{REALESRGAN}.param", f"{REALESRGAN}.bin")
    assert args == {"scale": 4, "channels": 64, "convs": 32}
    net = SRVGGNetCompact(**args).eval()
    net.load_state_dict(state)
    grey = _radiograph()
    rgb = np.ascontiguousarray(np.repeat(grey[None], 3, 0))  # kept alive while ncnn's Mat points into it
    reference = ncnn.Net()
    reference.opt.use_vulkan_compute = False
    reference.load_param(f"{REALESRGAN}.param")
    reference.load_model(f"{REALESRGAN}.bin")
    extractor = reference.create_extractor()
    extractor.input("data", ncnn.Mat(rgb))
    _, out = extractor.extract("output")
    expected = np.array(out).mean(axis=0)
    with torch.no_grad():
        ours = net(torch.from_numpy(grey)[None, None])[0, 0].numpy()
    assert ours.shape == expected.shape == (192, 192)
    assert np.abs(ours - expected).max() < 1e-4


def test_basicsr_file_folds_rgb_to_one_channel(tmp_path):
    """A BasicSR ``.pth`` (``params_ema``) of an RGB compact network: the one-channel network on a grey image
    equals the RGB network on it repeated to RGB, averaged over the colours."""
    torch.manual_seed(0)
    rgb_net = SRVGGNetCompact(4, in_channels=3, channels=8, convs=2).eval()
    torch.save({"params_ema": rgb_net.state_dict(), "params": {}}, tmp_path / "net.pth")
    state, args = srvgg_from_basicsr(tmp_path / "net.pth")
    assert args == {"scale": 4, "channels": 8, "convs": 2}
    grey_net = SRVGGNetCompact(**args).eval()
    grey_net.load_state_dict(state)
    x = torch.from_numpy(_radiograph(20))[None, None]
    with torch.no_grad():
        torch.testing.assert_close(grey_net(x), rgb_net(x.repeat(1, 3, 1, 1)).mean(dim=1, keepdim=True))


def test_another_architecture_and_broken_files_are_one_sentence(tmp_path):
    lines = open(f"{REALESRGAN}.param").read().splitlines()
    layers = ["Convolution conv 1 1 data a 0=64 1=3 5=1 6=1728", "Concat cat 2 1 a a b", "Eltwise e 1 1 b out"]
    (tmp_path / "rrdb.param").write_text("\n".join([lines[0], "4 5", lines[2], *layers]) + "\n")
    with pytest.raises(InputError, match="not a Real-ESRGAN compact network .* it holds 1 Concat, 1 Convolution"):
        srvgg_from_ncnn(tmp_path / "rrdb.param", f"{REALESRGAN}.bin")
    (tmp_path / "text.param").write_text("hello\n")
    with pytest.raises(InputError, match="not an ncnn network description"):
        read_ncnn_param(tmp_path / "text.param")
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(open(f"{REALESRGAN}.bin", "rb").read()[:100000])
    with pytest.raises(InputError, match="ends before the weights"):
        srvgg_from_ncnn(f"{REALESRGAN}.param", truncated)
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a PyTorch weights file"):
        srvgg_from_basicsr(tmp_path / "junk.pth")
    torch.save({"params": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not a Real-ESRGAN compact network"):
        srvgg_from_basicsr(tmp_path / "other.pth")


def test_cli_converts_with_provenance_and_refuses_a_method_it_does_not_fit(tmp_path, capsys):
    param = tmp_path / "m.param"
    shutil.copy(f"{REALESRGAN}.param", param)
    shutil.copy(f"{REALESRGAN}.bin", tmp_path / "m.bin")
    out = tmp_path / "models" / "realesrgan_cxr_x4.pt"
    assert cli(["pretrained", str(param), "-m", "realesrgan", "-o", str(out)]) in (0, None)
    record = json.loads((out.parent / "weights.json").read_text())[out.name]
    assert record["licence"].startswith("BSD-3-Clause") and "Real-ESRGAN" in record["cite"]
    assert set(record["converted_from"]) == {"m.param", "m.bin"}
    assert cli(["pretrained", str(param), "-m", "vdsr", "-o", str(tmp_path / "v.pt")]) != 0
    assert "does not fit method 'vdsr'" in capsys.readouterr().err and not (tmp_path / "v.pt").exists()
