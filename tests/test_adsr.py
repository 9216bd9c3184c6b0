"""ADSR's network: SR3 with a VAE branch beside the denoiser's bottleneck (networks/adsr.py)."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data
from test_bundle import _ok, run_config, train_files

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.losses import BoxLoss, PixelLoss, SRBatch, TrainingTermsLoss, WeightedSumLoss
from monai_sr_bundle.networks.adsr import ADSR
from monai_sr_bundle.networks.sr3 import SR3

TINY = {"scale": 4, "channels": (16, 32), "num_res_blocks": 1, "norm_num_groups": 8, "sampler": "ddim", "steps": 2}


def _inputs(side: int = 24):
    g = torch.Generator().manual_seed(0)
    noisy, condition = torch.randn(2, 1, side, side, generator=g), torch.rand(2, 1, side, side, generator=g)
    return noisy, condition, torch.tensor([10, 900])


def test_any_input_size_gives_the_scaled_image():
    """A per-position latent keeps the denoiser size-agnostic, so tiles of any size work."""
    torch.manual_seed(0)
    sr = ADSR(latent_channels=4, **TINY).eval()
    with torch.inference_mode():
        assert sr(torch.rand(1, 1, 10, 13)).shape == (1, 1, 40, 52)


def test_it_starts_as_the_sr3_it_extends():
    """The fusion starts at the bottleneck's output alone: SR3's weights in an ADSR give SR3's estimates."""
    torch.manual_seed(0)
    sr3, adsr = SR3(**TINY).eval(), ADSR(latent_channels=4, **TINY).eval()
    state = {
        k.replace("denoiser.middle_block.", "denoiser.middle_block.middle."): v for k, v in sr3.state_dict().items()
    }
    missing, unexpected = adsr.load_state_dict(state, strict=False)
    assert not unexpected and missing and all(".middle_block." in k and ".middle." not in k for k in missing)
    with torch.inference_mode():
        torch.testing.assert_close(adsr.denoise(*_inputs()), sr3.denoise(*_inputs()))


def test_branch_terms_are_finite_trainable_and_deterministic_in_evaluation():
    torch.manual_seed(0)
    adsr = ADSR(latent_channels=4, **TINY).train()
    adsr.denoise(*_inputs()).square().mean().backward(retain_graph=True)
    kl, reconstruction = adsr.branch.kl, adsr.branch.reconstruction
    assert torch.isfinite(kl) and kl >= 0 and torch.isfinite(reconstruction) and reconstruction >= 0
    adsr.zero_grad()
    (kl + reconstruction).backward()
    assert adsr.branch.encoder[0].weight.grad.abs().sum() > 0 and adsr.branch.decoder[0].weight.grad.abs().sum() > 0
    adsr.eval()
    with torch.inference_mode():
        torch.testing.assert_close(adsr.denoise(*_inputs()), adsr.denoise(*_inputs()))


@pytest.mark.parametrize("latent", [0, -2, 2.5, True, "8"])
def test_a_branch_without_a_whole_latent_is_one_sentence(latent):
    with pytest.raises(InputError, match="latent_channels, a whole number >= 1"):
        ADSR(latent_channels=latent, **TINY)


def test_a_vae_switch_that_is_not_true_or_false_is_one_sentence():
    with pytest.raises(InputError, match="true or false"):
        ADSR(vae="no", **TINY)


def test_without_the_vae_branch_it_is_sr3s_network_with_the_rest_of_the_loss():
    """The paper's ablation: SR3's denoiser (same parameters), the box and reconstruction terms only."""
    ablation = ADSR(vae=False, **TINY)
    assert ablation.branch is None
    assert ablation.state_dict().keys() == SR3(**TINY).state_dict().keys()
    loss = WeightedSumLoss(
        {"reconstruction": partial(PixelLoss, distance="mse", weight=1.0), "box": partial(BoxLoss, weight=10.0)}
    )
    pred, hr, mask = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    pred[0, 0, 0, 0], mask[0, 0, :2, :2] = 2.0, 1
    torch.testing.assert_close(loss(pred, SRBatch(hr=hr, mask=mask)), torch.tensor(4 / 16 + 10.0 * 4 / 4))


# ------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_the_image_estimate_inverts_the_noising_for_every_prediction(prediction, monkeypatch):
    """With a denoiser that finds exactly what it should, the implied image is the HR image itself."""
    from monai_sr_bundle.diffusion.samplers import make_sampler

    torch.manual_seed(0)
    sr = SR3(**{**TINY, "prediction": prediction})
    hr, condition = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    sample, noise, t = sr.sample_of(hr, condition), torch.randn(2, 1, 16, 16), torch.tensor([5, 990])
    schedule = make_sampler("ddpm", sr.train_steps, sr.train_steps, *sr.betas)
    noisy = schedule.add_noise(original_samples=sample, noise=noise, timesteps=t)
    exact = {"epsilon": noise, "sample": sample, "v_prediction": schedule.get_velocity(sample, noise, t)}[prediction]
    monkeypatch.setattr(sr, "denoise", lambda *args: exact)
    torch.testing.assert_close(sr.estimate_image(noisy, condition, t), hr, atol=2e-4, rtol=0)


def test_training_pairs_the_implied_image_with_the_clean_hr_and_its_boxes():
    from monai_sr_bundle.training.diffusion import DenoisingStep, DiffusionPrepareBatch

    torch.manual_seed(0)
    adsr = ADSR(latent_channels=4, **TINY)
    hr, mask = torch.rand(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    batch = {"image": torch.rand(2, 1, 8, 8), "label": hr, "box_mask": mask}
    noisy, named, _, kwargs = DiffusionPrepareBatch(adsr)(batch)
    assert torch.equal(named.target, hr) and torch.equal(named.mask, mask)  # the clean HR and its boxes, not noise
    assert DenoisingStep(adsr)(noisy, **kwargs).shape == (2, 1, 32, 32)


def test_the_overlays_loss_blocks_are_the_papers_lambdas():
    """L = 0.4 L_R + 0.3 L_B + 0.3 (L_VR + L_KL): ADSR's overlay replaces the pixel block with these three."""
    blocks = methods.get("adsr").config["losses"]
    assert {k: (b["_target_"].rsplit(".", 1)[1], b["weight"]) for k, b in blocks.items()} == {
        "reconstruction": ("PixelLoss", 0.4),
        "box": ("BoxLoss", 0.3),
        "vae": ("TrainingTermsLoss", 0.3),
    }
    assert blocks["reconstruction"]["distance"] == "mse" and blocks["vae"]["terms"] == ["reconstruction", "kl"]


def test_the_loss_is_the_papers_sum_and_skips_images_without_boxes():
    adsr = ADSR(latent_channels=4, **TINY)
    adsr.branch.kl, adsr.branch.reconstruction = torch.tensor(2.0), torch.tensor(1.0)
    vae = partial(TrainingTermsLoss, module=adsr.branch, terms=["reconstruction", "kl"], weight=0.5)
    loss = WeightedSumLoss(
        {
            "reconstruction": partial(PixelLoss, distance="mse", weight=1.0),
            "box": partial(BoxLoss, weight=10.0),
            "vae": vae,
        }
    )
    hr, pred = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    pred[0, 0, 0, 0] = 2.0  # error 4 on one pixel, inside the first image's box
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2, :2] = 1  # a 4-pixel box in the first image, none in the second
    expected = 1.0 * 4 / 32 + 10.0 * 4 / 4 + 0.5 * 3.0
    torch.testing.assert_close(loss(pred, SRBatch(hr=hr, mask=mask)), torch.tensor(expected))
    no_boxes = loss(pred, SRBatch(hr=hr, mask=torch.zeros_like(mask)))
    assert torch.isfinite(no_boxes) and no_boxes.item() == pytest.approx(4 / 32 + 1.5)
    assert loss(pred, SRBatch(hr=hr)).item() == pytest.approx(4 / 32 + 1.5)  # no mask at all


def test_a_vae_block_on_a_network_without_the_branch_is_one_sentence():
    loss = WeightedSumLoss({"vae": partial(TrainingTermsLoss, module=ADSR(vae=False, **TINY), weight=0.3)})
    with pytest.raises(InputError, match="ADSR left no kl from its forward"):
        loss(torch.zeros(1, 1, 4, 4), SRBatch(hr=torch.zeros(1, 1, 4, 4)))


@needs_data(DATA)
@pytest.mark.slow
def test_the_train_config_trains_it_with_its_own_loss(tmp_path, monkeypatch):
    """Through the bundle's one training path, as a tiny throwaway method (the real overlay is too wide for
    a test): the train config takes the overlay's loss blocks, one reweighed, and records them."""
    adsr = methods.get("adsr").config
    overlay = {
        "network_def": {"_target_": "monai_sr_bundle.networks.adsr.ADSR", "latent_channels": 4, **TINY},
        "stages": adsr["stages"],
        **{"patch_size": 32, "batch_size": 2, "samples_per_image": 1},
        "losses": {**adsr["losses"], "box": {**adsr["losses"]["box"], "weight": 0.5}},
    }
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "tiny_adsr.json").write_text(json.dumps(overlay))
    monkeypatch.setenv("MONAI_SR_METHODS", str(tmp_path / "overlays"))
    args = ("--train_limit", "2", "--val_limit", "1", "--max_epochs", "1")
    files = train_files("tiny_adsr")
    _ok(run_config(files, "tiny_adsr", *args, "--run_dir", tmp_path / "run", "--ckpt_path", tmp_path / "w.pt"))
    provenance = json.loads((tmp_path / "weights.json").read_text())["w.pt"]
    weights = {name: block["weight"] for name, block in provenance["losses"].items()}
    assert weights == {"reconstruction": 0.4, "box": 0.5, "vae": 0.3}
    assert "losses" not in provenance["command"] and "train_diffusion.json" in provenance["command"]
    ADSR(latent_channels=4, **TINY).load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))  # strict


@needs_data(DATA)
@pytest.mark.slow
def test_an_artifact_preset_with_unknown_kinds_stops_training_before_anything_is_written(tmp_path):
    artifacts = {"_target_": "monai_sr_bundle.transforms.artifacts.RandArtifactsd", "kinds": ["circle", "arrow"]}
    preset = {"scale": 4, "transforms": [artifacts]}
    (tmp_path / "bad.json").write_text(json.dumps(preset))
    args = ("--train_limit", "2", "--val_limit", "1", "--max_epochs", "1", "--degradation", tmp_path / "bad.json")
    proc = run_config(
        train_files("adsr"), "adsr", *args, "--run_dir", tmp_path / "run", "--ckpt_path", tmp_path / "w.pt"
    )
    assert proc.returncode != 0
    assert "RandArtifacts `kinds` must be a non-empty subset of circle, letter, digit, line" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


@pytest.mark.slow
@needs_data(DATA / "nih_cxr14")
def test_monai_sr_sr_with_adsr_removes_a_burnt_in_artifact(tmp_path):
    """The user-facing artifact-removal mode with the shipped weights: ``monai-sr sr --method adsr`` on a real
    64x64 LR radiograph (an NIH test image at the protocol's 256, downsampled) with a bright circle and a
    letter burnt in; inside the artifacts its SR is at least 3 dB closer to the clean HR than bicubic's."""
    from PIL import Image

    from monai_sr_bundle.cli import main
    from monai_sr_bundle.data.datalist import nih_datalist
    from monai_sr_bundle.metrics import masked_psnr
    from monai_sr_bundle.networks.bicubic import upsample
    from monai_sr_bundle.transforms.artifacts import RandArtifacts
    from monai_sr_bundle.transforms.degradation import downsample

    with Image.open(nih_datalist("test", limit=1)[0]["label"]) as img:
        hr = torch.from_numpy(np.asarray(img.convert("L").resize((256, 256), Image.LANCZOS)) / 255.0).float()
    hr = hr.T[None]  # (C, X, Y): the library's axes are the transpose of PIL's rows and columns
    artifacts = RandArtifacts(prob=1.0, num_artifacts=2, kinds=("circle", "letter")).set_random_state(0)
    lr = artifacts(downsample(hr, 4).clamp(0, 1))
    region = torch.from_numpy(artifacts.render_mask(lr.shape[1:]) > 0).repeat_interleave(4, 0).repeat_interleave(4, 1)
    Image.fromarray((lr[0].T.numpy() * 255).round().astype(np.uint8)).save(tmp_path / "lr.png")
    assert main(["sr", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"), "--method", "adsr", "--seed", "0"]) == 0
    with Image.open(tmp_path / "out" / "lr_sr.png") as img:
        sr = torch.from_numpy(np.asarray(img) / 255.0).float().T[None]
    bicubic = upsample(lr[None], 4)[0].clamp(0, 1)
    assert masked_psnr(sr[None], hr[None], region) >= masked_psnr(bicubic[None], hr[None], region) + 3
