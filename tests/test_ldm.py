"""Latent-diffusion SR's network: a chest X-ray autoencoder and a latent denoiser (networks/ldm.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data
from PIL import Image
from test_bundle import _configs, _ok, run_config, train_files
from torch.nn.functional import pixel_shuffle

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.networks.ldm import LDM, LatentAutoencoder
from monai_sr_bundle.training.diffusion import DiffusionPrepareBatch

AUTOENCODER = {"block": 2, "channels": (8, 16), "latent_channels": 3, "norm_num_groups": 8}
TINY = {"autoencoder": AUTOENCODER, "channels": (16, 32), "norm_num_groups": 8, "sampler": "ddim", "steps": 2}


@pytest.mark.parametrize("scale, side, multiple", [(4, (13, 30), 2), (3, (11, 9), 8), (2, (16, 9), 4)])
def test_any_lr_size_from_the_least_one_gives_the_scaled_image(scale, side, multiple):
    """The LR image is padded to what the autoencoder (x4 smaller) and the denoiser (one halving) divide after
    x scale, and the SR cropped back: the smallest side is that multiple."""
    torch.manual_seed(0)
    sr = LDM(scale=scale, **TINY).eval()
    assert sr.lr_multiple == multiple
    with torch.inference_mode():
        for h, w in (side, (multiple, multiple)):
            out = sr(torch.rand(1, 1, h, w))
            assert out.shape == (1, 1, h * scale, w * scale) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(InputError, match=f"at least {multiple}x{multiple} pixels.*got 1x"):
        sr(torch.rand(1, 1, 1, 20))


def test_a_seed_fixes_the_result_and_another_changes_it():
    torch.manual_seed(0)
    sr, lr = LDM(**TINY).eval(), torch.rand(1, 1, 12, 12)
    with torch.inference_mode():
        a, b = (sr(lr, torch.Generator().manual_seed(1)) for _ in range(2))
        c = sr(lr, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_diffused_sample_is_the_hr_latent_and_decodes_back_through_the_autoencoder():
    """Training noises the HR image's latent and conditions on the upsampled LR's latent, both a quarter of
    the side, and compares the decoded estimate with the HR image; the clean sample decodes to what the
    autoencoder reconstructs."""
    torch.manual_seed(0)
    sr = LDM(**TINY).eval()
    lr, hr = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 32, 32)
    noisy, target, _, kwargs = DiffusionPrepareBatch(sr)({"image": lr, "label": hr})
    assert noisy.shape == kwargs["condition"].shape == (2, 3, 8, 8) and torch.equal(target.target, hr)
    assert sr.estimate_image(noisy, kwargs["condition"], kwargs["timesteps"]).shape == hr.shape
    with torch.no_grad():
        sample = sr.sample_of(hr, kwargs["condition"])
        torch.testing.assert_close(sr.image_of(sample, kwargs["condition"]), sr.autoencoder(hr).clamp(0, 1))


def test_the_autoencoder_brings_its_latent_to_unit_spread_while_it_trains():
    """The running spread follows each latent channel's standard deviation, is saved with the weights and
    divides the latent, so the diffusion schedule sees about unit spread in every channel."""
    torch.manual_seed(0)
    ae = LatentAutoencoder(**AUTOENCODER)
    with torch.no_grad():
        ae.linear_encoder.weight.mul_(torch.tensor([20.0, 0.1, 3.0])[:, None, None, None])  # spreads far from 1
    images = torch.rand(4, 1, 16, 16)
    ae.train()
    for _ in range(600):
        with torch.no_grad():
            ae(images)
    assert torch.isfinite(ae.kl) and ae.kl > 0
    ae.eval()
    with torch.no_grad():
        raw, _ = ae.posterior(images)
        assert raw[:, 0].std() > 3 and raw[:, 1].std() < 0.1
        assert (ae.encode(images).std(dim=(0, 2, 3)) - 1).abs().max() < 0.05
    assert "spread" in ae.state_dict()


def test_a_fresh_autoencoder_is_its_linear_block_code():
    """Training starts from the linear code of the blocks' lowest DCT frequencies (``AutoencoderKL``'s part
    starts at zero): a fresh autoencoder reconstructs an image made of those frequencies exactly and keeps
    most of any other."""
    from monai_sr_bundle.networks.ldm import dct_basis

    torch.manual_seed(0)
    ae = LatentAutoencoder(**{**AUTOENCODER, "latent_channels": 8}).eval()
    basis = dct_basis(4, 8)
    assert torch.allclose(basis @ basis.T, torch.eye(8), atol=1e-6)  # orthonormal
    coefficients = torch.randn(1, 8, 6, 5) * 0.2 + torch.tensor([2.0] + [0.0] * 7)[:, None, None]
    image = (pixel_shuffle(torch.einsum("bkhw,kp->bphw", coefficients, basis), 4) + 1) / 2
    with torch.no_grad():
        torch.testing.assert_close(ae(image), image, atol=1e-5, rtol=0)
        noise = torch.rand(1, 1, 24, 20)
        assert (ae(noise) - noise).square().mean() < 0.75 * (noise - noise.mean()).square().mean()


def test_the_kl_term_trains_the_encoder():
    torch.manual_seed(0)
    ae = LatentAutoencoder(**AUTOENCODER).train()
    ae(torch.rand(2, 1, 16, 16))
    ae.kl.backward()
    assert ae.autoencoder.quant_conv_mu.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "args, message",
    [
        ({"autoencoder": "big"}, "autoencoder's arguments as an object"),
        ({"autoencoder": {**AUTOENCODER, "latent_channels": 0}}, "latent_channels, a whole number >= 1"),
        ({"autoencoder": {**AUTOENCODER, "latent_channels": 2.5}}, "latent_channels, a whole number >= 1"),
        ({"autoencoder": {**AUTOENCODER, "block": 0}}, "block, a whole number >= 1"),
        (
            {"autoencoder": {**AUTOENCODER, "latent_channels": 17}},
            r"latent_channels \(17\) can be at most the 16 pixels",
        ),
    ],
)
def test_bad_autoencoder_settings_are_refused_in_one_sentence(args, message):
    with pytest.raises(InputError, match=message):
        LDM(**{**TINY, **args})


def test_an_hr_patch_the_autoencoder_cannot_halve_is_refused():
    ae = LatentAutoencoder(**AUTOENCODER)
    with pytest.raises(InputError, match="multiple of 4, got 30x32"):
        ae.encode(torch.rand(1, 1, 30, 32))


def _tiny_overlay(tmp_path, monkeypatch, autoencoder: dict = AUTOENCODER) -> str:
    """A tiny latent method through the registry (the shipped overlay is too wide for a test); its weights
    live in a bundle root of its own under ``tmp_path``."""
    overlay = {
        "network_def": {
            "_target_": "monai_sr_bundle.networks.LDM",
            "scale": "@scale",
            **TINY,
            "autoencoder": autoencoder,
        },
        "stages": {
            "autoencoder": ["train.json", "train_autoencoder.json"],
            "diffusion": ["train.json", "train_diffusion.json", "train_latent.json"],
        },
        **{"patch_size": 32, "batch_size": 2, "samples_per_image": 1},
        "losses#lpips": {"_target_": "monai_sr_bundle.losses.LPIPSLoss", "_mode_": "callable", "weight": 0.1},
        **{"autoencoder_patch_size": 32, "autoencoder_batch_size": 2, "autoencoder_samples_per_image": 1},
        **{"autoencoder_learning_rate": 0.0001, "autoencoder_max_epochs": 10, "autoencoder_val_interval": 1},
        "autoencoder_losses": {
            "pixel": {"_target_": "monai_sr_bundle.losses.PixelLoss", "_mode_": "callable", "weight": 1.0},
            "lpips": {"_target_": "monai_sr_bundle.losses.LPIPSLoss", "_mode_": "callable", "weight": 0.1},
            "kl": {
                "_target_": "monai_sr_bundle.losses.TrainingTermsLoss",
                "_mode_": "callable",
                "weight": 1e-06,
                "module": "@network",
                "terms": ["kl"],
            },
        },
    }
    (tmp_path / "overlays").mkdir(exist_ok=True)
    (tmp_path / "overlays" / "tiny_ldm.json").write_text(json.dumps(overlay))
    monkeypatch.setenv("MONAI_SR_METHODS", str(tmp_path / "overlays"))
    return "tiny_ldm"


STAGE_ARGS = ("--train_limit", "2", "--val_limit", "1", "--max_epochs", "1")


@needs_data(DATA / "nih_cxr14")
@pytest.mark.slow
def test_the_autoencoder_then_the_denoiser_train_through_the_bundle(tmp_path, monkeypatch):
    """Stage one publishes the autoencoder (with its latent spread) beside the method's weights; stage two
    trains the denoiser on it frozen, with the pixel and LPIPS terms on the decoded image, and the
    published weights hold both, the autoencoder unchanged."""
    name, root = _tiny_overlay(tmp_path, monkeypatch), tmp_path / "bundle"
    common = (*STAGE_ARGS, "--bundle_root", root)
    _ok(run_config(train_files(name, "autoencoder"), name, *common))
    autoencoder_file = root / "models" / f"{name}_cxr_autoencoder.pt"
    autoencoder = torch.load(autoencoder_file, weights_only=True)
    assert autoencoder["spread"].shape == (3, 1, 1) and (autoencoder["spread"] != 1).all()  # moved from its start
    record = json.loads((root / "models" / "weights.json").read_text())[autoencoder_file.name]
    assert {k: b["weight"] for k, b in record["losses"].items()} == {"pixel": 1.0, "lpips": 0.1, "kl": 1e-06}
    assert "train_autoencoder.json" in record["command"]

    _ok(run_config(train_files(name, "diffusion"), name, *common))
    weights = torch.load(root / "models" / f"{name}_cxr_x4.pt", weights_only=True)
    for key, value in autoencoder.items():
        torch.testing.assert_close(weights[f"autoencoder.{key}"], value)
    LDM(**TINY).load_state_dict(weights)  # strict: denoiser and autoencoder
    record = json.loads((root / "models" / "weights.json").read_text())[f"{name}_cxr_x4.pt"]
    assert record["autoencoder"]["sha256"] == sha256(autoencoder_file)
    assert record["losses"]["lpips"]["weight"] == 0.1 and "train_latent.json" in record["command"]

    # deployment: the denoiser and the decoder exported, the sampler on ONNX Runtime, TensorRT's config
    # falling back to PyTorch here (no GPU); the same seed gives the same image either way
    png = tmp_path / "in" / "cxr.png"
    png.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (36, 40), dtype=np.uint8)).save(png)
    _ok(run_config(_configs("inference.json", "export_denoiser.json"), name, "--bundle_root", root))
    assert {f"{name}_cxr_x4.onnx", f"{name}_cxr_x4_decoder.onnx"} <= {p.name for p in (root / "models").iterdir()}
    sampled = {}
    for runtime in ("inference_onnx.json", "inference_trt.json"):
        proc = _ok(
            run_config(
                _configs("inference.json", runtime), name, "--bundle_root", root, "--input", png,
                "--output_dir", tmp_path / runtime, "--steps", "2", "--seed", "4",
            )
        )  # fmt: skip
        sampled[runtime] = np.asarray(Image.open(tmp_path / runtime / "cxr_sr.png"), dtype=int)
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        assert "trt_compile() has no effect" in proc.stdout
    assert sampled["inference_onnx.json"].shape == (144, 160)
    assert np.abs(sampled["inference_onnx.json"] - sampled["inference_trt.json"]).max() <= 1


@needs_data(DATA / "nih_cxr14")
@pytest.mark.slow
def test_a_latent_method_without_its_stages_or_autoencoder_is_refused_and_nothing_written(tmp_path, monkeypatch):
    name, root = _tiny_overlay(tmp_path, monkeypatch), tmp_path / "bundle"
    common = (*STAGE_ARGS, "--bundle_root", root)
    proc = run_config(_configs("inference.json", "train.json"), name, *common)
    assert proc.returncode != 0 and f"method '{name}' has no 'train' stage" in proc.stdout
    assert "train it, in this order, with autoencoder: --config_file" in proc.stdout
    proc = run_config(train_files(name, "diffusion"), name, *common)
    assert proc.returncode != 0 and "no autoencoder weights; train the autoencoder first" in proc.stdout
    proc = run_config(train_files(name, "autoencoder"), "srcnn", *common)
    assert proc.returncode != 0 and "method 'srcnn' has no 'autoencoder' stage" in proc.stdout
    # autoencoder weights of another latent width: one sentence naming the file
    (root / "models").mkdir(parents=True)
    other = LatentAutoencoder(**{**AUTOENCODER, "latent_channels": 2})
    torch.save(other.state_dict(), root / "models" / f"{name}_cxr_autoencoder.pt")
    proc = run_config(train_files(name, "diffusion"), name, *common)
    assert proc.returncode != 0 and "weights do not fit this network" in proc.stdout
    assert "must agree on its channels, block and latent_channels" in proc.stdout
    assert sorted(p.name for p in (root / "models").iterdir()) == [f"{name}_cxr_autoencoder.pt"]


def test_the_surfaces_train_a_latent_method_through_its_diffusion_stage(tmp_path, monkeypatch):
    """The CLI, the MONAI Label trainer and the NVFlare client ask ``train_configs``: the denoiser stage."""
    from monai_sr_bundle.stages import train_configs

    name = _tiny_overlay(tmp_path, monkeypatch)
    names = [Path(f).name for f in train_configs(name)]
    assert names == ["inference.json", "train.json", f"{name}.json", "train_diffusion.json", "train_latent.json"]
    assert [Path(f).name for f in train_configs("srgan")][-1] == "train_gan.json"


@pytest.mark.slow
def test_the_sampler_runs_on_onnx_runtime_with_the_exported_denoiser_and_decoder(tmp_path, monkeypatch):
    """Both exported parts match torch (export refuses a gap of 1e-4), and the whole seeded sampler on ONNX
    Runtime gives the torch result; a missing decoder file is named."""
    from monai_sr_bundle import methods
    from monai_sr_bundle.onnx_runtime import export_decoder, export_denoiser, onnx_network

    method = methods.get(_tiny_overlay(tmp_path, monkeypatch))
    torch.manual_seed(0)
    network, weights = method.network().eval(), tmp_path / "w.pt"
    torch.save(network.state_dict(), weights)
    denoiser, decoder = export_denoiser(network, tmp_path / "w.onnx"), export_decoder(network, tmp_path / "w_dec.onnx")
    on_ort = onnx_network(method, denoiser, weights, decoder)
    lr = torch.rand(1, 1, 12, 16)
    with torch.inference_mode():
        expected = method.load(weights)(lr, torch.Generator().manual_seed(5), steps=3)
        torch.testing.assert_close(on_ort(lr, torch.Generator().manual_seed(5), steps=3), expected, atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="nothing.onnx: ONNX model not found; export it first"):
        onnx_network(method, denoiser, weights, tmp_path / "nothing.onnx")


def test_a_fresh_posterior_starts_narrow():
    """MONAI starts the posterior's standard deviation at about 1, as large as the latent; here it starts at
    INITIAL_SIGMA, so the decoder learns from latents close to the mean (``networks/ldm.py`` says why)."""
    from monai_sr_bundle.networks.ldm import INITIAL_SIGMA

    torch.manual_seed(0)
    with torch.no_grad():
        _, sigma = LatentAutoencoder(**AUTOENCODER).posterior(torch.rand(2, 1, 16, 16))
    assert INITIAL_SIGMA / 3 < sigma.median() < INITIAL_SIGMA * 3


def test_an_lr_image_too_small_for_the_shipped_ldm_is_one_sentence_and_the_rest_go_on(tmp_path, capsys):
    """Through the CLI with the shipped weights: an image below the entry point's least side (8x the scale,
    above what the autoencoder and the denoiser need: tested on the network above) is refused in one sentence
    naming it; the good image beside it is written."""
    from monai_sr_bundle.cli import main

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for name, shape in (("thin.png", (3, 40)), ("good.png", (36, 40))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "in" / name)
    out = tmp_path / "out"
    assert main(["sr", str(tmp_path / "in"), "-o", str(out), "-m", "ldm", "--steps", "2"]) == 3  # partly written
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and "thin.png: image (40, 3) is smaller than 32 px" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["failed.csv", "good_sr.png"]
