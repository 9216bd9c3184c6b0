"""Readers of published SR weights: Real-ESRGAN's compact model in ncnn form checked against the ncnn
package's own forward pass on a real radiograph, the BasicSR ``.pth`` layout, the one-channel fold, and files
of another architecture or broken files refused in one sentence."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data
from PIL import Image
from torch import nn

from monai_sr_bundle import methods, zoo
from monai_sr_bundle.cli import main as cli
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.srvgg import SRVGGNetCompact
from monai_sr_bundle.pretrained import read_ncnn_param, srvgg_from_basicsr, srvgg_from_ncnn

REALESRGAN = DATA / "weights" / "realesrgan" / "realesr-general-x4v3"
with_realesrgan = needs_data(DATA / "weights" / "realesrgan")
#: what the readers may read of a file here (a compact network's files take a few MB)
LIMIT = 64 << 20


def _radiograph(side: int = 48) -> np.ndarray:
    path = sorted((DATA / "nih_cxr14" / "images_512").glob("*.png"))[0]
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((side, side), Image.BICUBIC), np.float32) / 255


@with_realesrgan
def test_ncnn_compact_model_matches_ncnn_on_a_real_radiograph():
    """The converted one-channel network equals ncnn's RGB forward of the same file on the grey image repeated
    to RGB, averaged over the colours."""
    ncnn = pytest.importorskip("ncnn")
    state, args = srvgg_from_ncnn(f"{REALESRGAN}.param", f"{REALESRGAN}.bin", LIMIT)
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


@with_realesrgan
def test_basicsr_file_folds_rgb_to_one_channel(tmp_path):
    """A BasicSR ``.pth`` (``params_ema``) of an RGB compact network: the one-channel network on a grey image
    equals the RGB network on it repeated to RGB, averaged over the colours."""
    torch.manual_seed(0)
    rgb_net = SRVGGNetCompact(4, in_channels=3, channels=8, convs=2).eval()
    torch.save({"params_ema": rgb_net.state_dict(), "params": {}}, tmp_path / "net.pth")
    state, args = srvgg_from_basicsr(tmp_path / "net.pth", LIMIT)
    assert args == {"scale": 4, "channels": 8, "convs": 2}
    grey_net = SRVGGNetCompact(**args).eval()
    grey_net.load_state_dict(state)
    x = torch.from_numpy(_radiograph(20))[None, None]
    with torch.no_grad():
        torch.testing.assert_close(grey_net(x), rgb_net(x.repeat(1, 3, 1, 1)).mean(dim=1, keepdim=True))


@with_realesrgan
def test_another_architecture_and_broken_files_are_one_sentence(tmp_path):
    lines = open(f"{REALESRGAN}.param").read().splitlines()
    layers = ["Convolution conv 1 1 data a 0=64 1=3 5=1 6=1728", "Concat cat 2 1 a a b", "Eltwise e 1 1 b out"]
    (tmp_path / "rrdb.param").write_text("\n".join([lines[0], "4 5", lines[2], *layers]) + "\n")
    with pytest.raises(InputError, match="not a Real-ESRGAN compact network .* it holds 1 Concat, 1 Convolution"):
        srvgg_from_ncnn(tmp_path / "rrdb.param", f"{REALESRGAN}.bin", LIMIT)
    (tmp_path / "text.param").write_text("hello\n")
    with pytest.raises(InputError, match="not an ncnn network description"):
        read_ncnn_param(tmp_path / "text.param")
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(open(f"{REALESRGAN}.bin", "rb").read()[:100000])
    with pytest.raises(InputError, match="ends before the weights"):
        srvgg_from_ncnn(f"{REALESRGAN}.param", truncated, LIMIT)
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a PyTorch weights file"):
        srvgg_from_basicsr(tmp_path / "junk.pth", LIMIT)
    torch.save({"params": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not a Real-ESRGAN compact network"):
        srvgg_from_basicsr(tmp_path / "other.pth", LIMIT)


@with_realesrgan
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


# ------------------------------------------------------------- hostile and careless use of the converters
# Files of realesrgan's network shape made here (no shared data): an RGB SRVGGNetCompact as Real-ESRGAN
# publishes it, in ncnn form (float16 tagged weights) and as a BasicSR .pth.


def _rgb_compact(seed: int = 0) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    return SRVGGNetCompact(4, in_channels=3, channels=64, convs=32).eval()


def _write_ncnn(folder: Path, net: SRVGGNetCompact, name: str = "m") -> Path:
    """``net`` as ncnn's exporter writes it: ``name.param`` (returned) and ``name.bin`` in ``folder``."""
    layers, data, blob = ["Input in 0 1 data", "Split split 1 2 data d0 d1"], bytearray(), "d1"
    for i, module in enumerate(net.body):
        w = module.weight.detach().numpy()
        if isinstance(module, nn.Conv2d):
            layers.append(f"Convolution c{i} 1 1 {blob} b{i} 0={w.shape[0]} 1=3 4=1 5=1 6={w.size}")
            data += struct.pack("<I", 0x01306B47) + w.astype("<f2").tobytes() + b"\0" * ((-2 * w.size) % 4)
            data += module.bias.detach().numpy().astype("<f4").tobytes()
        else:
            layers.append(f"PReLU p{i} 1 1 {blob} b{i} 0={w.size}")
            data += w.astype("<f4").tobytes()
        blob = f"b{i}"
    layers += [f"PixelShuffle ps 1 1 {blob} s 0={net.scale}", "Interp up 1 1 d0 u 0=1 1=4.0 2=4.0"]
    layers.append("BinaryOp add 2 1 s u output")
    (folder / f"{name}.bin").write_bytes(bytes(data))
    param = folder / f"{name}.param"
    param.write_text("\n".join(["7767517", f"{len(layers)} {len(layers) + 1}", *layers]) + "\n")
    return param


@pytest.fixture(scope="module")
def compact_files(tmp_path_factory) -> dict[str, Path]:
    """One realesrgan-shaped network as ncnn (``param``, ``bin``) and BasicSR (``pth``) files, read-only."""
    folder = tmp_path_factory.mktemp("compact")
    net = _rgb_compact()
    files = {"param": _write_ncnn(folder, net), "bin": folder / "m.bin", "pth": folder / "m.pth"}
    torch.save({"params_ema": net.state_dict()}, files["pth"])
    for path in files.values():
        path.chmod(0o444)
    return files


def _tree(folder: Path) -> dict:
    """Every entry under ``folder`` (links not followed): its kind, and a regular file's bytes and mtime."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        out[path] = (stat.S_IFMT(st.st_mode), path.read_bytes() if stat.S_ISREG(st.st_mode) else None, st.st_mtime_ns)
    return out


def _one_sentence(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), err
    return lines[0]


def _converter(command: str, files: dict[str, Path], output: str) -> list[str]:
    srcnn = str(methods.get("srcnn").weights_path)
    return {
        "pretrained": ["pretrained", str(files["param"]), "-m", "realesrgan", "-o", output],
        "interpolate": ["interpolate", srcnn, srcnn, "--alpha", "0.5", "-m", "srcnn", "-o", output],
        "export-zoo": ["export-zoo", "-m", "srcnn", "-o", output],
    }[command]


@pytest.mark.parametrize("target", ["user_file", "folder", "symlink", "char_device", "empty"])
@pytest.mark.parametrize("command", ["pretrained", "interpolate", "export-zoo"])
def test_a_converter_replaces_nothing_it_did_not_write(command, target, compact_files, tmp_path, monkeypatch, capsys):
    """Findings 1, 2, 5 of issue 71 and its bar: ``-o`` a user's file, a folder, a link, a device or ``''`` is
    refused in one sentence before anything is read or written; nothing changes, no temporary file is left.
    export-zoo's ``-o`` is the folder that receives the bundle: its folder case is a user's folder at the
    bundle's name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thesis.docx").write_bytes(b"years of work")
    if target == "user_file":
        output = tmp_path / "thesis.docx"
    elif target == "folder":
        output = tmp_path / "out"
        (output / zoo.bundle_name(methods.get("srcnn")) if command == "export-zoo" else output).mkdir(parents=True)
    elif target == "symlink":
        output = tmp_path / "link.pt"
        output.symlink_to(tmp_path / "thesis.docx")
    elif target == "char_device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a character device needs root")
        output = tmp_path / "null"
        try:
            os.mknod(output, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
        except PermissionError:
            pytest.skip("this container may not make device files (no CAP_MKNOD)")
    else:
        output = ""
    before = _tree(tmp_path)
    assert cli(_converter(command, compact_files, str(output))) == 2
    _one_sentence(capsys.readouterr().err)
    assert _tree(tmp_path) == before


def test_pretrained_refuses_its_own_source_and_a_broken_manifest_beside_the_target(compact_files, tmp_path, capsys):
    """Finding 2: ``-o`` the source ``.bin``, or a new file beside a ``weights.json`` that is a JSON list or not
    JSON, is refused before the first byte is written; an earlier output of monai-sr (its sha256 recorded in
    ``weights.json``) is replaced by a rerun."""
    param = shutil.copy(compact_files["param"], tmp_path / "m.param")
    source_bin = shutil.copy(compact_files["bin"], tmp_path / "m.bin")
    before = _tree(tmp_path)
    assert cli(["pretrained", str(param), "-m", "realesrgan", "-o", str(source_bin)]) == 2
    assert "m.bin" in _one_sentence(capsys.readouterr().err) and _tree(tmp_path) == before
    for manifest in ("[]", "{not json", '{"x.pt": 5}'):
        (tmp_path / "weights.json").write_text(manifest)
        before = _tree(tmp_path)
        assert cli(["pretrained", str(param), "-m", "realesrgan", "-o", str(tmp_path / "new.pt")]) == 2
        assert "weights.json" in _one_sentence(capsys.readouterr().err) and _tree(tmp_path) == before
    (tmp_path / "weights.json").unlink()
    out = tmp_path / "models" / "realesrgan_cxr_x4.pt"
    for _ in range(2):  # the second run replaces the first one's file, which monai-sr wrote
        assert cli(["pretrained", str(param), "-m", "realesrgan", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["realesrgan_cxr_x4.pt", "weights.json"]
    net = methods.get("realesrgan").network(out).eval()
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            net(x), _rgb_compact()(x.repeat(1, 3, 1, 1)).mean(1, keepdim=True), atol=2e-3, rtol=0
        )
    capsys.readouterr()
    (out.parent / "file").write_text("a user's file")
    assert cli(["pretrained", str(param), "-m", "realesrgan", "-o", str(out.parent / "file" / "x.pt")]) == 2
    assert "file" in _one_sentence(capsys.readouterr().err)


def test_interpolate_refuses_a_users_file_and_replaces_its_own(tmp_path, capsys):
    """Finding 2 for ``interpolate``: a user's file at ``-o`` stays; monai-sr's own earlier blend is replaced."""
    srcnn = str(methods.get("srcnn").weights_path)
    blend = ["interpolate", srcnn, srcnn, "--alpha", "0.3", "-m", "srcnn", "-o"]
    out = tmp_path / "blend.pt"
    for _ in range(2):
        assert cli([*blend, str(out)]) == 0
    (tmp_path / "user.pt").write_bytes(b"not ours")
    assert cli([*blend, str(tmp_path / "user.pt")]) == 2
    assert "not written by monai-sr" in _one_sentence(capsys.readouterr().err)
    assert (tmp_path / "user.pt").read_bytes() == b"not ours"


def _edited_param(compact_files, tmp_path: Path, old: str, new: str, conv: int = 0) -> Path:
    """The ncnn pair with ``old`` replaced by ``new`` in the options of Convolution number ``conv``."""
    lines = compact_files["param"].read_text().splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("Convolution")][conv]
    assert old in lines[at]
    lines[at] = lines[at].replace(old, new)
    (tmp_path / "e.param").write_text("\n".join(lines) + "\n")
    shutil.copy(compact_files["bin"], tmp_path / "e.bin")
    return tmp_path / "e.param"


NCNN_EDITS = {
    "zero_outputs": ("0=64 ", "0=0 "),
    "negative_outputs": ("0=64 ", "0=-64 "),
    "float_outputs": ("0=64 ", "0=1e9 "),
    "word_outputs": ("0=64 ", "0=abc "),
    "no_outputs": ("0=64 ", ""),
    "negative_count": ("6=1728", "6=-1"),
    "short_count": ("6=1728", "6=1000"),
    "no_count": (" 6=1728", ""),
}


@pytest.mark.parametrize("edit", sorted(NCNN_EDITS))
def test_a_malformed_ncnn_param_is_one_sentence(edit, compact_files, tmp_path, capsys):
    """Finding 5: a Convolution's options that cannot describe the weights are refused in one sentence."""
    param = _edited_param(compact_files, tmp_path, *NCNN_EDITS[edit])
    assert cli(["pretrained", str(param), "-m", "realesrgan", "-o", str(tmp_path / "out.pt")]) == 2
    assert "e.param" in _one_sentence(capsys.readouterr().err) and not (tmp_path / "out.pt").exists()
    second = _edited_param(compact_files, tmp_path, "6=36864", "6=1000", conv=1)  # a body convolution's count
    assert cli(["pretrained", str(second), "-m", "realesrgan", "-o", str(tmp_path / "out.pt")]) == 2
    _one_sentence(capsys.readouterr().err)


def test_a_broken_ncnn_bin_is_one_sentence(compact_files, tmp_path, capsys):
    """Finding 5: a .bin cut inside a storage tag, missing, or a folder."""
    param = shutil.copy(compact_files["param"], tmp_path / "m.param")
    # the first convolution (tag, 1728 float16, 64 float32 biases), the PReLU's 64 slopes, 2 bytes of a tag
    (tmp_path / "m.bin").write_bytes(compact_files["bin"].read_bytes()[: 4 + 1728 * 2 + 64 * 4 + 64 * 4 + 2])
    (tmp_path / "folder.bin").mkdir()
    for extra in ([], [str(tmp_path / "missing.bin")], [str(tmp_path / "folder.bin")]):
        assert cli(["pretrained", str(param), *extra, "-m", "realesrgan", "-o", str(tmp_path / "out.pt")]) == 2
        _one_sentence(capsys.readouterr().err)
    assert not (tmp_path / "out.pt").exists()


def _pth_cases() -> dict:
    state = _rgb_compact().state_dict()
    w, b, last = state["body.2.weight"], state["body.2.bias"], f"body.{len(_rgb_compact().body) - 1}"

    def change(values: dict) -> dict:
        return {"params_ema": {**state, **values}}

    return {
        "int_value": change({"body.2.weight": 5}),
        "list_value": change({"body.2.weight": [1.0, 2.0]}),
        "string_value": change({"body.2.weight": "weights"}),
        "int_key": change({7: torch.zeros(3)}),
        "params_a_tensor": {"params_ema": torch.zeros(3, 3)},
        "no_input_channels": change({"body.0.weight": torch.zeros(64, 0, 3, 3)}),
        "47_outputs": change({f"{last}.weight": torch.zeros(47, 64, 3, 3), f"{last}.bias": torch.zeros(47)}),
        "sparse": change({"body.2.weight": w.to_sparse()}),
        # finding 10: not finite real numbers
        "nan": change({"body.2.weight": torch.full_like(w, float("nan"))}),
        "inf": change({"body.2.bias": torch.full_like(b, float("inf"))}),
        "complex": change({"body.2.weight": w.to(torch.complex64)}),
        "bool": change({"body.2.weight": w > 0}),
    }


@pytest.mark.parametrize("case", sorted(_pth_cases()))
def test_a_malformed_basicsr_file_is_one_sentence(case, tmp_path, capsys):
    """Findings 5 and 10: values that are not real-valued dense tensors of the compact network's shapes, keys that
    are not names, non-finite weights: refused at conversion in one sentence, nothing written."""
    torch.save(_pth_cases()[case], tmp_path / "bad.pth")
    assert cli(["pretrained", str(tmp_path / "bad.pth"), "-m", "realesrgan", "-o", str(tmp_path / "out.pt")]) == 2
    assert "bad.pth" in _one_sentence(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


def test_non_finite_ncnn_weights_are_refused_at_conversion(compact_files, tmp_path, capsys):
    """Finding 10 for ncnn: a float16 NaN in the weights."""
    param = shutil.copy(compact_files["param"], tmp_path / "m.param")
    data = bytearray(compact_files["bin"].read_bytes())
    data[4:6] = np.array([np.nan], "<f2").tobytes()
    (tmp_path / "m.bin").write_bytes(bytes(data))
    assert cli(["pretrained", str(param), "-m", "realesrgan", "-o", str(tmp_path / "out.pt")]) == 2
    assert "finite" in _one_sentence(capsys.readouterr().err) and not (tmp_path / "out.pt").exists()


def _zip_bomb(path: Path, inflated: int = 256 << 20) -> Path:
    """A ``.pth`` of a few hundred KB whose storage inflates to ``inflated`` bytes (a zip entry of deflated
    zeros), as torch.load would allocate it."""
    small = path.with_suffix(".small")
    torch.save({"params_ema": {"body.0.weight": torch.zeros(4)}}, small)
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                out.writestr(info.filename, src.read(info))
                continue
            with out.open(info.filename, "w", force_zip64=True) as f:
                for _ in range(inflated >> 20):
                    f.write(bytes(1 << 20))
    small.unlink()
    return path


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path, capsys):
    """Finding 4: the storages a ``.pth`` declares are checked against the network before torch reads them, in
    ``pretrained`` and wherever weights load (``sr --weights``)."""
    bomb = _zip_bomb(tmp_path / "bomb.pth")
    assert cli(["pretrained", str(bomb), "-m", "realesrgan", "-o", str(tmp_path / "out.pt")]) == 2
    assert "bomb.pth: its zip entries inflate to 268435" in _one_sentence(capsys.readouterr().err)
    with pytest.raises(InputError, match="bomb.pth: its zip entries inflate to 268435"):
        methods.get("srcnn").network(bomb)


CHILD = """
import contextlib, io, json, resource, sys
from monai_sr_bundle.cli import main
status = lambda key: next(int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith(key + ":"))
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + (3 << 30), resource.RLIM_INFINITY))
answers = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    answers.append([code, [line for line in err.getvalue().splitlines() if line.startswith("error: ")]])
print(json.dumps({"answers": answers, "peak": status("VmHWM")}))
"""


def test_hostile_weight_files_are_refused_in_bounded_memory(compact_files, tmp_path):
    """Findings 3 and 4 and the memory bar: /dev/zero as the .bin, FIFOs, a .param of millions of lines and a zip
    bomb (in ``pretrained`` and ``sr --weights``) are each refused in one sentence, none read whole, by a
    process whose peak resident memory stays under 3 GB (its address space capped a little above that)."""
    os.mkfifo(tmp_path / "fifo.bin")
    os.mkfifo(tmp_path / "fifo.param")
    huge = tmp_path / "huge.param"
    with open(huge, "w") as f:
        f.write("7767517\n2000000 2000001\n" + "PReLU p 1 1 a a 0=64\n" * 200000)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    bomb = _zip_bomb(tmp_path / "bomb.pth")
    param, out, sr = str(compact_files["param"]), str(tmp_path / "out.pt"), str(tmp_path / "sr")
    cases = [
        ["pretrained", param, "/dev/zero", "-m", "realesrgan", "-o", out],
        ["pretrained", param, str(tmp_path / "fifo.bin"), "-m", "realesrgan", "-o", out],
        ["pretrained", str(tmp_path / "fifo.param"), str(compact_files["bin"]), "-m", "realesrgan", "-o", out],
        ["pretrained", str(huge), str(compact_files["bin"]), "-m", "realesrgan", "-o", out],
        ["pretrained", str(bomb), "-m", "realesrgan", "-o", out],
        ["sr", str(tmp_path / "x.png"), "-m", "srcnn", "--weights", str(bomb), "--runtime", "torch", "-o", sr],
    ]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    for argv, (code, errors) in zip(cases, report["answers"]):
        assert code == 2 and len(errors) == 1, (argv, code, errors, done.stderr[-2000:])
    assert report["peak"] < 3 << 30, report["peak"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.pth", "fifo.bin", "fifo.param", "huge.param", "x.png"]
