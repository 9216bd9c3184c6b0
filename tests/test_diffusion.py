"""The diffusion machinery as the surfaces use it, on a tiny SR3 registered as a throwaway method
(``$MONAI_SR_METHODS``): training through the bundle's train config, the samplers chosen per run, several
samples with their uncertainty maps, the ONNX denoiser, and the bad sampling options refused."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATA, needs_data
from PIL import Image
from test_bundle import _configs, _ok, run_config, train_files

from monai_sr_bundle import methods
from monai_sr_bundle.batch import run_inference
from monai_sr_bundle.cli import main
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.onnx_runtime import export_denoiser, onnx_network
from monai_sr_bundle.request import SRRequest, check_sampling
from monai_sr_bundle.transforms.degradation import downsample
from monai_sr_bundle.uncertainty import MAPS, uncertainty_maps
from monai_sr_bundle.weights import load_weights

NAME = "tiny_diffusion"
OVERLAY = {
    "network_def": {
        "_target_": "monai_sr_bundle.networks.SR3",
        "scale": "@scale",
        "channels": [8, 8],
        "norm_num_groups": 8,
        "train_steps": 20,
        "steps": 3,
    },
    "stages": {"diffusion": ["train.json", "train_diffusion.json"]},
    **{"patch_size": 32, "batch_size": 2, "samples_per_image": 1, "val_limit": 1, "val_interval": 5},
}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The tiny method, with weights whose every parameter is non-zero (MONAI zeroes the U-Net's last
    convolution, which would make any two denoisers agree)."""
    folder = tmp_path / "overlays"
    folder.mkdir()
    (folder / f"{NAME}.json").write_text(json.dumps(OVERLAY))
    monkeypatch.setenv("MONAI_SR_METHODS", str(folder))
    method = methods.get(NAME)
    network = method.network()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    weights = tmp_path / "w.pt"
    torch.save(network.state_dict(), weights)
    return method, weights


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "in" / "cxr.png"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (36, 40), dtype=np.uint8)).save(path)
    return path


def test_uncertainty_maps_are_the_spread_and_the_lr_gap():
    draws = torch.stack([torch.full((1, 1, 8, 8), 0.2), torch.full((1, 1, 8, 8), 0.6)])
    lr = torch.full((1, 1, 2, 2), 0.5)
    maps = uncertainty_maps(lr, draws, 4)
    assert list(maps) == ["sr", *MAPS]
    assert torch.allclose(maps["sr"], torch.tensor(0.4)) and torch.allclose(maps["std"], torch.tensor(0.2))
    assert torch.allclose(maps["lr_consistency"], torch.tensor(0.1), atol=1e-6)  # |degrade(0.4) - 0.5|
    volume = uncertainty_maps(
        lr[..., None].expand(-1, -1, -1, -1, 3), draws[..., None].expand(-1, -1, -1, -1, -1, 3), 4
    )
    assert volume["lr_consistency"].shape == (1, 1, 8, 8, 3) and torch.allclose(
        volume["lr_consistency"], torch.tensor(0.1), atol=1e-6
    )


@pytest.mark.slow
def test_several_samples_write_the_mean_and_the_maps_reproducibly(tiny, png, tmp_path):
    method, weights = tiny
    predictor = method.predictor(weights, sampler="dpmpp", steps=3, seed=5)
    outs = []
    for run in ("a", "b"):
        written = run_inference(png, predictor, tmp_path / run, progress=False, request=SRRequest(samples=3))
        assert [p.split("/")[-1] for p in written] == [
            "cxr_sr.png",
            "cxr_sr_std.nii.gz",
            "cxr_sr_lr_consistency.nii.gz",
        ]
        outs.append(
            [open(p, "rb").read() if p.endswith(".png") else sitk.GetArrayFromImage(sitk.ReadImage(p)) for p in written]
        )
    assert outs[0][0] == outs[1][0] and all(np.array_equal(a, b) for a, b in zip(outs[0][1:], outs[1][1:]))
    std, gap = outs[0][1], outs[0][2]
    assert std.shape == gap.shape == (144, 160) and std.dtype == np.float32
    assert std.max() > 0 and std.min() >= 0 and gap.min() >= 0
    assert std.max() <= 255  # in the PNG's grey levels, not [0, 1]
    sr = np.asarray(Image.open(tmp_path / "a" / "cxr_sr.png"), dtype=np.float32) / 255
    lr = np.asarray(Image.open(png), dtype=np.float32) / 255
    lo, hi = lr.min(), lr.max()  # the reader's min-max map
    shrunk = downsample(torch.from_numpy(sr)[None], 4)[0].numpy() * (hi - lo) + lo
    expected = np.abs(shrunk - lr) * 255 / (hi - lo) * (hi - lo)
    assert np.abs(gap[::4, ::4] - expected).max() < 2.5  # the mean was rounded to 8 bits before this check
    one = run_inference(png, predictor, tmp_path / "one", progress=False)
    assert [p.split("/")[-1] for p in one] == ["cxr_sr.png"]


@pytest.mark.parametrize(
    "options, message",
    [({"sampler": "euler"}, "unknown sampler 'euler'"), ({"sampler": 3}, "unknown sampler 3"),
     ({"samples": 0}, "samples must be a whole number >= 1"), ({"samples": 65}, "at most 64"),
     ({"samples": "4"}, "samples must be a whole number"), ({"steps": -2}, "steps must be a whole number"),
     ({"steps": 2.5}, "steps must be a whole number"), ({"seed": "x"}, "seed must be a whole number >= 0")],
)  # fmt: skip
def test_bad_sampling_options_are_refused(tiny, options, message):
    method, _ = tiny
    with pytest.raises(InputError, match=message):
        check_sampling(method, **options)


def test_sampling_options_go_with_each_call_and_leave_the_network_as_it_is(tiny, png, tmp_path):
    """One loaded network serves every sampler and step count (MONAI Label keeps one per method): a call's
    options are checked against the training schedule and never written into the network."""
    method, weights = tiny
    with pytest.raises(InputError, match="from 1 to 20"):
        method.predictor(weights, steps=21)
    predictor = method.predictor(weights, seed=1)
    before = (predictor.network.sampler, predictor.network.steps)
    with pytest.raises(InputError, match="from 1 to 20"):
        run_inference(png, predictor, tmp_path / "none", progress=False, request=SRRequest(steps=21))
    with pytest.raises(InputError, match="samples must be a whole number >= 1, got 0"):  # the bundle's --samples 0
        run_inference(png, predictor, tmp_path / "none", progress=False, request=SRRequest(samples=0))
    assert not (tmp_path / "none").exists()
    lr = torch.rand(1, 9, 11)
    ddpm = predictor(lr, sampler="ddpm", steps=20)
    assert (predictor.network.sampler, predictor.network.steps) == before
    assert torch.equal(ddpm, method.predictor(weights, sampler="ddpm", steps=20, seed=1)(lr))
    assert not torch.equal(ddpm, predictor(lr, steps=2))


@pytest.mark.slow
def test_onnx_denoiser_matches_torch_and_drives_the_sampler(tiny, tmp_path):
    method, weights = tiny
    network = method.load(weights)
    path = export_denoiser(network, tmp_path / "d.onnx")  # refuses to keep a model off by 1e-4 or more
    on_ort = onnx_network(method, path, weights)
    lr = torch.rand(1, 1, 9, 11)
    with torch.inference_mode():
        a = network(lr, torch.Generator().manual_seed(2), steps=3)
        b = on_ort(lr, torch.Generator().manual_seed(2), steps=3)
    assert a.shape == (1, 1, 36, 44) and (a - b).abs().max() < 1e-4


@pytest.mark.slow
def test_cli_sampling_flags(tiny, png, tmp_path, capsys):
    _, weights = tiny
    out = tmp_path / "cli"
    args = ["-m", NAME, "--weights", weights, "--sampler", "ddim", "--steps", 2, "--samples", 2, "--seed", 1]
    assert main(["sr", str(png), "-o", str(out), *map(str, args)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["cxr_sr.png", "cxr_sr_lr_consistency.nii.gz", "cxr_sr_std.nii.gz"]
    for bad, message in [
        (("-m", NAME, "--weights", weights, "--steps", "21"), "from 1 to 20"),
        (("-m", NAME, "--weights", weights, "--samples", "0"), "samples must be a whole number >= 1"),
        (("-m", NAME, "--weights", weights, "--sampler", "euler"), "unknown sampler 'euler'"),
        (("-m", "bicubic", "--samples", "2"), "deterministic and has no sampler: drop samples"),
    ]:  # refused by the CLI's own entry point; in this process, as the run above: a process proves nothing more
        capsys.readouterr()
        assert main(["sr", str(png), "-o", str(tmp_path / "bad"), *map(str, bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


@needs_data(DATA / "nih_cxr14")
@pytest.mark.slow
def test_diffusion_trains_and_samples_through_the_bundle(tiny, png, tmp_path):
    run = tmp_path / "run"
    train = run_config(
        train_files(NAME), NAME, "--train_limit", "2", "--max_epochs", "1",
        "--run_dir", run, "--ckpt_path", run / "w.pt",
    )  # fmt: skip
    _ok(train)
    assert "Epoch[1] Complete" in train.stdout and "val_psnr" in train.stdout  # validated at the end (interval 5)
    load_weights(methods.get(NAME).network(), run / "w.pt")
    infer = run_config(
        "configs/inference.json", NAME, "--ckpt_path", run / "w.pt", "--input", png, "--output_dir", tmp_path / "out",
        "--sampler", "dpmpp", "--steps", "2", "--samples", "2", "--seed", "4",
    )  # fmt: skip
    _ok(infer)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cxr_sr.png", "cxr_sr_lr_consistency.nii.gz", "cxr_sr_std.nii.gz"
    ]  # fmt: skip
    onnx = tmp_path / "d.onnx"
    _ok(
        run_config(
            _configs("inference.json", "export_denoiser.json"), NAME, "--ckpt_path", run / "w.pt", "--onnx_path", onnx
        )
    )
    _ok(
        run_config(
            _configs("inference.json", "inference_onnx.json"), NAME, "--ckpt_path", run / "w.pt", "--onnx_path", onnx,
            "--input", png, "--output_dir", tmp_path / "ort", "--steps", "2", "--seed", "4",
        )
    )  # fmt: skip
    assert (tmp_path / "ort" / "cxr_sr.png").is_file()
    trt = run_config(
        _configs("inference.json", "inference_trt.json"), NAME, "--ckpt_path", run / "w.pt", "--input", png,
        "--output_dir", tmp_path / "trt", "--steps", "2",
    )  # fmt: skip
    _ok(trt)  # TensorRT compiles the denoiser alone on a GPU; without one it says so and runs PyTorch
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        assert "trt_compile() has no effect" in trt.stdout
    assert (tmp_path / "trt" / "cxr_sr.png").is_file()
