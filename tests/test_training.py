"""Training glue: resuming from the newest checkpoint, publishing the best checkpoint as hashed weights, and
the integrity of the weights shipped in ``monai_sr_bundle/models``."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import needs_data

from monai_sr_bundle import methods
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.losses import SRBatch
from monai_sr_bundle.pretrained import interpolate_weights
from monai_sr_bundle.stages import train_parser
from monai_sr_bundle.training.loop import SRPrepareBatch, auxiliary_network, latest_checkpoint
from monai_sr_bundle.training.publish import publish_weights, train_command
from monai_sr_bundle.weights import expand_state, load_weights

MODELS = BUNDLE_ROOT / "models"
WEIGHT_NAME = re.compile(r"(?P<method>[a-z0-9_]+?)_(?P<modality>[a-z0-9]+)_x(?P<scale>\d+)\.pt")
#: a latent method's autoencoder stage publishes beside it, for any scale (``Method.autoencoder_weights_path``)
AUTOENCODER_NAME = re.compile(r"(?P<method>[a-z0-9_]+?)_(?P<modality>[a-z0-9]+)_autoencoder\.pt")
MAX_BYTES = 25 * 1024 * 1024


def _srcnn(scale: int = 4) -> torch.nn.Module:
    return methods.get("srcnn", scale).network()


def _best_checkpoint(
    path: Path,
    network: torch.nn.Module,
    scores=((30.5, "model_key_metric=30.5000.pt"), (31.25, "model_key_metric=31.2500.pt")),
) -> Path:
    """What MONAI's CheckpointSaver(save_dict={"model": net}, key_metric_save_state=True) writes: the
    network's state dict flattened, plus the saver's own state under ``checkpointer``."""
    state = dict(network.state_dict())
    state["checkpointer"] = {"_saved": [tuple(s) for s in scores]}
    torch.save(state, path)
    return path


# ----------------------------------------------------------------------------------- latest_checkpoint


def test_latest_checkpoint_by_epoch_number(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "never_created") is None
    for name in (
        "checkpoint_epoch=9.pt",
        "checkpoint_epoch=10.pt",
        "checkpoint_epoch=2.pt",
        "best.pt",
        "checkpoint_epoch=x.pt",
        "checkpoint_epoch=11.pt.tmp",
        "model_key_metric=35.1.pt",
    ):
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=10.pt")  # 10 > 9, not "9" > "10"
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint_epoch=10.pt")


# ------------------------------------------------------------------------------------- publish_weights


def test_publish_weights_plain_state_dict_and_manifest(tmp_path):
    net = _srcnn()
    best = _best_checkpoint(tmp_path / "best.pt", net)
    models = tmp_path / "models"
    models.mkdir()
    other = {"sha256": "0" * 64, "command": "earlier run", "data": "elsewhere"}
    (models / "weights.json").write_text(json.dumps({"vdsr_cxr_x4.pt": other}))
    target = models / "srcnn_cxr_x4.pt"
    provenance = {"command": "python -m monai.bundle run ...", "data": "NIH train split", "scale": 4}
    digest = publish_weights(best, target, provenance)

    assert digest == hashlib.sha256(target.read_bytes()).hexdigest() == sha256(target)
    state = torch.load(target, map_location="cpu", weights_only=True)
    assert "checkpointer" not in state and set(state) == set(net.state_dict())
    fresh = _srcnn()
    fresh.load_state_dict(state, strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)

    manifest = json.loads((models / "weights.json").read_text())
    assert manifest["vdsr_cxr_x4.pt"] == other  # other entries are kept
    entry = manifest["srcnn_cxr_x4.pt"]
    assert entry["sha256"] == digest
    assert entry["command"] == provenance["command"] and entry["data"] == provenance["data"] and entry["scale"] == 4
    assert entry["best_val_psnr"] == 31.25  # the best of the saver's key-metric scores
    assert sorted(p.name for p in models.iterdir()) == ["srcnn_cxr_x4.pt", "weights.json"]  # no temporary file left

    # publishing again (a later run) replaces the entry and the file, still keeping the others
    net2 = _srcnn()
    with torch.no_grad():
        next(net2.parameters()).add_(1.0)
    digest2 = publish_weights(_best_checkpoint(tmp_path / "best2.pt", net2, [(33.0, "m")]), target, provenance)
    manifest = json.loads((models / "weights.json").read_text())
    assert digest2 != digest and manifest["srcnn_cxr_x4.pt"]["sha256"] == digest2 == sha256(target)
    assert manifest["srcnn_cxr_x4.pt"]["best_val_psnr"] == 33.0 and manifest["vdsr_cxr_x4.pt"] == other
    assert list(manifest) == sorted(manifest)


def test_publish_weights_records_a_lower_is_better_metric_unnegated(tmp_path):
    """The GAN stage ranks checkpoints by -LPIPS; the manifest records the LPIPS of the best one."""
    best = _best_checkpoint(tmp_path / "best.pt", _srcnn(), [(-0.21, "a"), (-0.17, "b")])
    publish_weights(best, tmp_path / "w.pt", {"command": "c", "data": "d"}, "val_lpips", lower_is_better=True)
    entry = json.loads((tmp_path / "weights.json").read_text())["w.pt"]
    assert entry["best_val_lpips"] == 0.17 and "best_val_psnr" not in entry


def test_train_command_names_every_setting_the_overlay_does_not_give():
    """A setting equal to the overlay's is left to it; an override (here the learning rate) and any setting
    the overlay lacks are written out; ``None`` is omitted."""
    files = ["configs/inference.json", "configs/train.json"]
    method = methods.get("runet")
    settings = {
        "max_epochs": method.config["max_epochs"],
        "learning_rate": 0.25,
        "modality": "ct",
        "intensity": [-1000, 400],
        "datalist_file": "/d/ct list.json",
        "init_weights": None,
        "degradation": {"transforms": []},
    }
    command = train_command(files, method, settings)
    stages = "\"['configs/inference.json','configs/train.json']\""
    assert command == (
        f"cd monai_sr_bundle && python -m monai.bundle run --config_file {stages} --method runet --learning_rate 0.25"
        ' --modality ct --intensity "[-1000, 400]" --datalist_file "/d/ct list.json"'
        """ --degradation '{"transforms": []}'"""
    )


def test_publish_weights_through_load_network(tmp_path):
    """The published file is what ``Method.load(weights)`` takes."""
    net = _srcnn()
    target = tmp_path / "models" / "srcnn_cxr_x4.pt"  # the models folder is created
    publish_weights(_best_checkpoint(tmp_path / "best.pt", net), target, {"command": "c", "data": "d"})
    loaded = methods.get("srcnn", 4).load(target)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))


def test_publish_weights_without_saver_state(tmp_path):
    net = _srcnn()
    torch.save(net.state_dict(), tmp_path / "best.pt")
    publish_weights(tmp_path / "best.pt", tmp_path / "w.pt", {"command": "c", "data": "d"})
    entry = json.loads((tmp_path / "weights.json").read_text())["w.pt"]
    assert "best_val_psnr" not in entry and entry["sha256"] == sha256(tmp_path / "w.pt")


def test_publish_weights_missing_best_checkpoint(tmp_path):
    missing = tmp_path / "run" / "best.pt"
    with pytest.raises(InputError) as e:
        publish_weights(missing, tmp_path / "models" / "srcnn_cxr_x4.pt", {"command": "c", "data": "d"})
    assert str(missing) in str(e.value) and "validation" in str(e.value)
    assert not (tmp_path / "models").exists()


# --------------------------------------------------------------------------------- shipped weights


def check_weights_folder(models: Path) -> list[str]:
    """Every ``*.pt`` in ``models`` has a ``weights.json`` entry with a matching sha256 and its provenance
    (training command and data), is under 25 MB, is named ``<method>_<modality>_x<scale>.pt`` and loads
    (strictly, ``weights_only``) into that method's network. Returns the names checked."""
    files = sorted(models.glob("*.pt"))
    manifest = models / "weights.json"
    entries = json.loads(manifest.read_text()) if manifest.is_file() else {}
    assert isinstance(entries, dict), f"{manifest} must hold a JSON object"
    for path in files:
        assert path.name in entries, f"{path.name} has no entry in {manifest}"
        entry = entries[path.name]
        assert entry.get("sha256") == sha256(path), f"{path.name}: sha256 in weights.json does not match the file"
        assert str(entry.get("command") or "").strip(), f"{path.name}: no training command recorded"
        assert str(entry.get("data") or "").strip(), f"{path.name}: no training data recorded"
        size = path.stat().st_size
        assert size < MAX_BYTES, f"{path.name} is {size / 2**20:.1f} MB (limit 25 MB)"
        if a := AUTOENCODER_NAME.fullmatch(path.name):  # a latent method's first stage: loads into its autoencoder
            assert a["method"] in methods.names(), f"{path.name}: no configs/methods/{a['method']}.json"
            method = methods.get(a["method"], modality=a["modality"])
            assert method.latent, f"{path.name}: {a['method']} is not a latent method"
            load_weights(method.network().autoencoder, path)  # strict
            continue
        m = WEIGHT_NAME.fullmatch(path.name)
        assert m, f"{path.name} is not named <method>_<modality>_x<scale>.pt (or <method>_<modality>_autoencoder.pt)"
        method, modality, scale = m["method"], m["modality"], int(m["scale"])
        assert method in methods.names(), f"{path.name}: no configs/methods/{method}.json"
        for key, value in (("scale", scale), ("modality", modality)):
            if key in entry:
                assert str(entry[key]) == str(value), f"{path.name}: weights.json says {key}={entry[key]!r}"
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(state, dict) and "checkpointer" not in state, f"{path.name}: not a plain state dict"
        network = methods.get(method, scale, modality).load(path)  # load_state_dict is strict
        stored = expand_state(state)  # int8 / fp16 storage as the fp32 tensors it stands for
        for k, v in network.state_dict().items():
            assert torch.equal(v, stored[k]), f"{path.name}: {k} differs after loading"
    return [p.name for p in files]


def test_shipped_weights():
    checked = check_weights_folder(MODELS)  # passes trivially while nothing is shipped
    for name in checked:  # the shipped files are where Method.load (or the diffusion stage) looks by default
        if m := AUTOENCODER_NAME.fullmatch(name):
            assert methods.get(m["method"], modality=m["modality"]).autoencoder_weights_path == MODELS / name
            continue
        m = WEIGHT_NAME.fullmatch(name)
        assert methods.get(m["method"], int(m["scale"]), m["modality"]).weights_path == MODELS / name
        methods.get(m["method"], int(m["scale"]), m["modality"]).load()


def test_shipped_weights_manifest_entries_are_well_formed():
    manifest = MODELS / "weights.json"
    if not manifest.is_file():
        assert not list(MODELS.glob("*.pt")), f"{MODELS} holds weights but no weights.json"
        return
    for name, entry in json.loads(manifest.read_text()).items():
        assert WEIGHT_NAME.fullmatch(name) or AUTOENCODER_NAME.fullmatch(name), (
            f"weights.json entry {name!r} is not <method>_<modality>_x<scale>.pt (or _autoencoder.pt)"
        )
        assert re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))), f"weights.json: {name} has no sha256"


def test_weights_check_fails_without_entry_or_on_mismatch(tmp_path):
    """The shipped-weights check is not vacuous: a .pt without an entry, or with a stale hash, or with no
    provenance, fails it; a published one passes."""
    models = tmp_path / "models"
    assert check_weights_folder(models) == []
    net = _srcnn()
    target = models / "srcnn_cxr_x4.pt"
    publish_weights(_best_checkpoint(tmp_path / "best.pt", net), target, {"command": "train it", "data": "NIH train"})
    assert check_weights_folder(models) == ["srcnn_cxr_x4.pt"]

    stray = models / "vdsr_cxr_x4.pt"
    torch.save(methods.get("vdsr", 4).network().state_dict(), stray)
    with pytest.raises(AssertionError, match="vdsr_cxr_x4.pt has no entry"):
        check_weights_folder(models)
    stray.unlink()

    manifest = json.loads((models / "weights.json").read_text())
    good = dict(manifest["srcnn_cxr_x4.pt"])
    for broken, match in (
        ({**good, "sha256": "f" * 64}, "sha256"),
        ({**good, "command": ""}, "command"),
        ({**good, "data": None}, "data"),
    ):
        (models / "weights.json").write_text(json.dumps({"srcnn_cxr_x4.pt": broken}))
        with pytest.raises(AssertionError, match=match):
            check_weights_folder(models)


def test_train_config_carries_box_masks_through_crops_and_loss(tmp_path):
    """The train config's preprocessing on a datalist file: the box mask is its own item, cut and flipped
    with the HR image; the prepare-batch hands it to the loss by name, and the configured loss weights
    exactly those pixels."""
    from PIL import Image

    from monai_sr_bundle.data.readers import read_image
    from monai_sr_bundle.losses import PixelLoss

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
    box = [8.0, 16.0, 40.0, 30.0]
    (tmp_path / "list.json").write_text(
        json.dumps({"training": [{"label": "a.png", "boxes": [box]}], "validation": [{"label": "a.png"}]})
    )
    parser = train_parser("srcnn")  # the configs `--method srcnn` trains with
    parser.update({"datalist_file": str(tmp_path / "list.json"), "box_weight": 3.0, "patch_size": 32,
                   "samples_per_image": 6})  # fmt: skip
    items = parser.get_parsed_content("train_datalist")
    assert items[0]["label"] == str(tmp_path / "a.png") and parser.get_parsed_content("val_datalist")[0]["boxes"] == []
    samples = parser.get_parsed_content("train#preprocessing")(items[0])
    for s in samples:
        assert set(s) == {"image", "label", "box_mask"}
        assert s["label"].shape == s["box_mask"].shape == (1, 32, 32) and s["image"].shape == (1, 8, 8)
    hr = read_image(tmp_path / "a.png")[0]
    whole = torch.zeros(64, 64)
    whole[8:40, 16:30] = 1
    for s in samples:  # the mask is cut from the same window as the HR image, flipped alike
        label = s["label"][0].as_tensor()
        windows = [(i, j, f) for i in range(33) for j in range(33) for f in (False, True)]
        found = [
            (i, j, f)
            for i, j, f in windows
            if torch.equal(label, (lambda t: t.flip(0) if f else t)(hr[i : i + 32, j : j + 32]))
        ]
        assert found
        i, j, f = found[0]
        window = whole[i : i + 32, j : j + 32]
        assert torch.equal(torch.as_tensor(s["box_mask"][0]), window.flip(0) if f else window)
    batch = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}
    lr, named = parser.get_parsed_content("prepare_batch")(batch)
    assert torch.equal(lr, batch["image"]) and torch.equal(named.lr, lr) and torch.equal(named.hr, batch["label"])
    assert torch.equal(named.mask, batch["box_mask"]) and named.target is named.hr
    loss = parser.get_parsed_content("loss")  # pixel term only: no perceptual term is built by default
    assert list(loss.terms) == ["pixel"] and isinstance(loss.terms["pixel"], PixelLoss)
    assert loss.terms["pixel"].box_weight == 3.0
    pred = torch.zeros_like(batch["label"])
    err = batch["label"].abs()
    torch.testing.assert_close(loss(pred, named), (err * (1 + 3.0 * batch["box_mask"])).mean())


@needs_data(shared_data_dir() / "weights")
def test_train_stage_adds_a_perceptual_term_when_a_method_asks():
    """Any method, not only a GAN, can train with pixel + perceptual loss (RUNet does) by a loss block in its
    overlay or on the command line; both terms see the same named batch."""
    parser = train_parser("srcnn")
    block = {"_target_": "monai_sr_bundle.losses.PerceptualLoss", "_mode_": "callable", "weight": 0.5}
    parser["losses#perceptual"] = {**block, "layers": {"relu2_2": 1.0}}
    loss = parser.get_parsed_content("loss")
    assert [type(t).__name__ for t in loss.terms.values()] == ["PixelLoss", "PerceptualLoss"]
    pred, target = torch.rand(2, 1, 32, 32), SRBatch(hr=torch.rand(2, 1, 32, 32), mask=torch.rand(2, 1, 32, 32))
    expected = loss.terms["pixel"](pred, target) + 0.5 * loss.terms["perceptual"](pred, target)
    torch.testing.assert_close(loss(pred, target), expected)
    recorded = parser.get_parsed_content("provenance#losses")["perceptual"]
    assert recorded == {"loss": "PerceptualLoss", "weight": 0.5, "layers": {"relu2_2": 1.0}}


def test_train_parser_takes_the_method_from_the_method_key():
    """``train_parser(method)`` is the method's stage configs; they pick the network, its training settings
    (its overlay's keys), the weights it publishes and its run folder."""
    parser = train_parser("vdsr")
    vdsr = methods.get("vdsr", 4)
    assert parser.get_parsed_content("learning_rate") == vdsr.config["learning_rate"]
    assert parser.get_parsed_content("patch_size") == vdsr.config["patch_size"]
    assert isinstance(parser.get_parsed_content("network"), type(vdsr.network()))
    assert Path(parser.get_parsed_content("ckpt_path")) == MODELS / "vdsr_cxr_x4.pt"
    assert Path(parser.get_parsed_content("run_dir")).name == "vdsr_cxr_x4"
    with pytest.raises(InputError, match="'bicubic' declares no training stages"):
        train_parser("bicubic")


def test_train_config_reads_a_degradation_preset():
    """``--degradation <preset>`` reaches the training and validation pipelines: the ADSR preset adds its
    artifacts on the LR key ``image`` only, after the degradation."""
    parser = train_parser()
    parser["degradation"] = "adsr_artifacts_x4"
    load, synthesis = parser.get_parsed_content("load_hr"), parser.get_parsed_content("lr_synthesis")
    copy, degrade, artifacts = synthesis.transforms
    assert type(load).__name__ == "LoadSRImaged" and type(degrade).__name__ == "Resized"
    assert type(artifacts).__name__ == "RandArtifactsd" and list(artifacts.keys) == ["image"]
    assert list(copy.keys) == ["label"] and list(degrade.keys) == ["image"]


def test_training_and_evaluation_make_the_same_lr_bytes_from_a_json_only_preset(tmp_path, monkeypatch):
    """A transform added to a preset by JSON alone (MONAI's own Gaussian noise, after blur and downsampling)
    reaches both the train config's pairs and evaluate(), and the same seed gives the same LR bytes."""
    from PIL import Image

    from monai_sr_bundle import evaluation
    from monai_sr_bundle.inference import Predictor

    preset = {
        "description": "throwaway: blur, bicubic, MONAI noise",
        "transforms": [
            {"_target_": "monai_sr_bundle.transforms.degradation.RandBlurd", "sigma": [0.5, 1.5]},
            {"_target_": "monai_sr_bundle.transforms.degradation.Resized", "scale": "@scale"},
            {"_target_": "RandGaussianNoised", "prob": 1.0, "std": 0.05},
        ],
    }
    (tmp_path / "throwaway.json").write_text(json.dumps(preset))
    image = tmp_path / "hr.png"
    Image.fromarray((np.random.default_rng(0).random((128, 128)) * 255).astype(np.uint8)).save(image)
    parser = train_parser("vdsr")
    parser["degradation"] = str(tmp_path / "throwaway.json")
    load, synthesis = parser.get_parsed_content("load_hr"), parser.get_parsed_content("lr_synthesis")
    trained_on = synthesis.set_random_state(7)(load({"label": str(image)}))["image"]
    seen = []
    monkeypatch.setattr(Predictor, "__call__", lambda self, lr: seen.append(lr) or lr.repeat(1, 4, 4))
    evaluation.evaluate(
        [{"label": str(image)}],
        {"bicubic": methods.get("bicubic").predictor()},
        tmp_path / "eval",
        tmp_path / "throwaway.json",
        lpips=False,
        progress=False,
        seed=7,
    )
    clean = synthesis.transforms[2]({"image": load({"label": str(image)})["label"]})["image"]
    assert trained_on.shape == (1, 32, 32) and not torch.allclose(trained_on, clean, atol=0.02)
    assert torch.equal(torch.as_tensor(seen[0]), torch.as_tensor(trained_on))


def test_content_scale_shrinks_the_hr_image_and_its_boxes_before_the_lr_is_made(tmp_path):
    """``content_scale`` (a zoom range) shrinks each whole HR image and its boxes before the degradation, so
    patches show the anatomy at several pixel sizes; it is recorded with the weights, and without it the
    pipeline has no such step (a run draws the same random numbers as before)."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 96), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"label": "a.png", "boxes": [[0, 0, 96, 96]]}]}))
    parser = train_parser("srcnn")
    steps = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert "RandContentScaled" not in steps
    parser = train_parser("srcnn")
    parser.update({"datalist_file": str(tmp_path / "list.json"), "content_scale": [0.5, 0.5], "patch_size": 32,
                   "samples_per_image": 2, "degradation": "real_train"})  # fmt: skip
    pipeline = parser.get_parsed_content("train#preprocessing")
    assert [type(t).__name__ for t in pipeline.transforms][:3] == ["LoadSRImaged", "RandContentScaled", "LRSynthesis"]
    item = parser.get_parsed_content("train_datalist")[0]
    shrunk = pipeline.transforms[1](pipeline.transforms[0](item))
    assert shrunk["label"].shape == (1, 48, 48) and shrunk["boxes"].tolist() == [[0, 0, 48, 48]]
    for sample in pipeline(item):
        assert sample["label"].shape == (1, 32, 32) and sample["image"].shape == (1, 8, 8)
        assert float(sample["box_mask"].min()) == 1.0  # the box still covers the shrunk image
    assert parser.get_parsed_content("provenance#content_scale") == [0.5, 0.5]
    assert '--content_scale "[0.5, 0.5]"' in parser.get_parsed_content("provenance#command")


def test_validation_degrades_as_training_unless_val_degradation_says_otherwise():
    """Model selection of a robust model scores a fixed preset (``val_degradation``), not the wide random
    training one; by default validation degrades as training does (with its own random state)."""
    parser = train_parser("srcnn")
    parser["degradation"] = "real_train"
    assert "real_train" in parser.get_parsed_content("validate#preprocessing").transforms[1].what
    parser = train_parser("srcnn")
    parser.update({"degradation": "real_train", "val_degradation": "real_eval_x4"})
    synthesis = parser.get_parsed_content("validate#preprocessing").transforms[1]
    assert "real_eval_x4" in synthesis.what and "real_train" in parser.get_parsed_content("lr_synthesis").what
    assert parser.get_parsed_content("provenance#val_degradation") == "real_eval_x4"
    parser["scale"] = 2  # an x2 training's command reruns at x2
    assert "--scale 2 " in parser.get_parsed_content("provenance#command")


def test_a_method_trains_on_its_overlays_degradation():
    """ADSR learns artifact removal wherever it is trained (CLI, MONAI Label, NVFlare): its overlay names
    the artifact preset; a method that names none trains on antialiased bicubic."""
    assert train_parser("adsr").get_parsed_content("degradation") == "adsr_artifacts_x4"
    assert train_parser("vdsr").get_parsed_content("degradation") == "bicubic"


# ------------------------------------------------------------------------------- network interpolation


def test_interpolate_weights_blends_every_parameter_and_records_both_sources(tmp_path):
    psnr, gan = _srcnn(), _srcnn()  # two random initialisations stand in for the two trainings
    torch.save(psnr.state_dict(), tmp_path / "psnr.pt")
    torch.save(gan.state_dict(), tmp_path / "gan.pt")
    gan_entry = {"command": "the GAN stage", "data": "NIH train split", "intensity": [-1000, 400]}
    (tmp_path / "weights.json").write_text(json.dumps({"gan.pt": gan_entry}))
    out = tmp_path / "models" / "blend.pt"
    digest = interpolate_weights("srcnn", tmp_path / "psnr.pt", tmp_path / "gan.pt", 0.25, out)

    blend = torch.load(out, map_location="cpu", weights_only=True)
    assert set(blend) == set(psnr.state_dict())
    for k, v in blend.items():
        torch.testing.assert_close(v, 0.25 * psnr.state_dict()[k] + 0.75 * gan.state_dict()[k])
    entry = json.loads((out.parent / "weights.json").read_text())["blend.pt"]
    assert entry["sha256"] == digest == sha256(out) and entry["alpha"] == 0.25
    assert entry["intensity"] == [-1000, 400] and entry["data"] == "NIH train split"  # read as its sources
    assert entry["interpolated_from"]["gan"]["command"] == "the GAN stage"
    assert entry["interpolated_from"]["psnr"]["sha256"] == sha256(tmp_path / "psnr.pt")
    assert entry["command"].startswith("monai-sr interpolate -m srcnn --scale 4 --modality cxr --alpha 0.25 ")


def test_interpolate_weights_refuses_bad_alpha_foreign_weights_and_overwriting_a_source(tmp_path):
    torch.save(_srcnn().state_dict(), tmp_path / "a.pt")
    torch.save(methods.get("vdsr").network().state_dict(), tmp_path / "vdsr.pt")
    cases = [
        (("srcnn", tmp_path / "a.pt", tmp_path / "a.pt", 1.5, tmp_path / "o.pt"), "between 0"),
        (("srcnn", tmp_path / "a.pt", tmp_path / "vdsr.pt", 0.5, tmp_path / "o.pt"), "fit this network"),
        (("srcnn", tmp_path / "a.pt", tmp_path / "a.pt", 0.5, tmp_path / "a.pt"), "overwrite"),
    ]
    before = (tmp_path / "a.pt").read_bytes()
    for args, words in cases:
        with pytest.raises(InputError, match=words):
            interpolate_weights(*args)
    assert not (tmp_path / "o.pt").exists() and (tmp_path / "a.pt").read_bytes() == before


def test_cli_interpolates(tmp_path, capsys):
    from monai_sr_bundle.cli import main as cli

    for name in ("p.pt", "g.pt"):
        torch.save(_srcnn().state_dict(), tmp_path / name)
    sources = [str(tmp_path / "p.pt"), str(tmp_path / "g.pt")]
    assert cli(["interpolate", "-m", "srcnn", "--alpha", "0.5", *sources, "-o", str(tmp_path / "b.pt")]) == 0
    assert "sha256" in capsys.readouterr().out and (tmp_path / "b.pt").is_file()
    assert cli(["interpolate", "-m", "srcnn", "--alpha", "-1", *sources, "-o", str(tmp_path / "c.pt")]) == 2
    assert "alpha" in capsys.readouterr().err and not (tmp_path / "c.pt").exists()


def test_the_gan_stage_ranks_checkpoints_lower_is_better():
    parser = train_parser("srgan")  # the GAN stage: LPIPS, lower is better
    assert parser.get_parsed_content("best_saver#key_metric_negative_sign") is True


@pytest.mark.parametrize(
    ("method", "switch", "read", "when_false"),
    [
        ("srcnn", "lower_is_better", "best_saver#key_metric_negative_sign", False),
        ("srcnn", "validate_in_training", "train#handlers#{validation}#_disabled_", True),
        ("srcnn", "compile", "predictor#compile", False),
        ("esrgan", "relativistic", "adversarial_loss#relativistic", False),
        ("esrgan", "relativistic", "provenance#adversarial#relativistic", False),
    ],
)
def test_every_switch_given_as_text_on_the_command_line_is_read_as_a_switch(method, switch, read, when_false):
    """``--lower_is_better false``, ``--validate_in_training false``, ``--compile false`` and ``--relativistic
    false`` arrive as text: read as truthy strings they once published the worst epoch of a PSNR pre-training,
    validated, compiled and played the relativistic game all the same."""
    parser = train_parser(method)
    handlers = parser["train"]["handlers"]
    read = read.format(validation=next(i for i, h in enumerate(handlers) if h["_target_"] == "ValidationHandler"))
    for text, value in (("false", when_false), ("true", not when_false), ("False", when_false)):
        parser[switch] = text
        assert parser.get_parsed_content(read) is value, (switch, text)


# ------------------------------------------------------------------------- the named batch, a teacher


def test_the_box_weighted_loss_through_the_named_batch_is_the_old_mask_channel_value():
    """The loss blocks read the mask by name now, where they once split it off the target's last channel: on
    a fixed batch the box-weighted pixel, squared and box terms give the value that path gave
    (0.6203651428222656, computed by the mask-channel code before it was removed)."""
    from functools import partial

    from monai_sr_bundle.losses import BoxLoss, PixelLoss, WeightedSumLoss

    g = torch.Generator().manual_seed(55)
    hr, pred = torch.rand(3, 1, 16, 16, generator=g), torch.rand(3, 1, 16, 16, generator=g)
    mask = torch.zeros(3, 1, 16, 16)
    mask[0, :, 2:9, 4:12], mask[2, :, 10:16, 0:5] = 1, 1
    loss = WeightedSumLoss(
        {
            "pixel": partial(PixelLoss, weight=1.0, box_weight=3.0),
            "mse": partial(PixelLoss, weight=0.4, distance="mse", box_weight=2.0),
            "box": partial(BoxLoss, weight=0.3),
        }
    )
    lr, named = SRPrepareBatch()({"image": hr[..., ::4, ::4], "label": hr, "box_mask": mask})
    assert loss(pred, named).item() == 0.6203651428222656
    with pytest.raises(InputError, match=r"target \(3, 1, 16, 16\) must have the prediction's shape"):
        loss(pred[:, :, :8], named)


def test_a_declared_teacher_is_frozen_and_the_distillation_term_reads_the_lr_image_by_name():
    """``auxiliary_network`` loads a shipped method once, frozen; ``DistillationLoss`` compares the student's
    SR with the teacher's SR of the batch's ``lr``, with gradients to the student's prediction only."""
    from monai_sr_bundle.losses import DistillationLoss

    teacher = auxiliary_network("srcnn", 4, "cxr")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    loss = DistillationLoss(teacher, distance="mse")
    assert loss.state_dict() == {} and list(loss.parameters()) == []  # held by reference: never saved
    lr = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        wanted = teacher(lr)
    pred = torch.zeros_like(wanted, requires_grad=True)
    value = loss(pred, SRBatch(lr=lr, hr=torch.rand_like(wanted)))
    torch.testing.assert_close(value, wanted.square().mean())
    value.backward()
    assert pred.grad is not None and all(p.grad is None for p in teacher.parameters())
    assert loss(wanted, SRBatch(lr=lr, hr=torch.rand_like(wanted))).item() == 0


@needs_data(shared_data_dir() / "nih_cxr14")
@pytest.mark.slow
def test_a_student_trains_toward_the_teacher_its_stage_declares(tmp_path, monkeypatch):
    """A distillation stage is a config: an overlay declares an ``auxiliary`` teacher and a ``DistillationLoss``
    block that names it; ``monai.bundle run`` trains a student toward it, and the checkpoints and published
    weights hold the student alone. The teacher is a network of the student's method made to answer -0.2
    everywhere, far from the HR images: a student that learnt from the HR, not from the teacher, would move
    away from it."""
    from test_bundle import _ok, run_config, train_files

    overlay = {
        "network_def": {"_target_": "monai_sr_bundle.networks.SRCNN", "scale": "@scale", "residual": False},
        "stages": {"distill": ["train.json"]},
        "stage": "distill",
        **{"patch_size": 32, "batch_size": 2, "samples_per_image": 2, "learning_rate": 0.001},
        "auxiliary": {
            "teacher": {
                "_target_": "monai_sr_bundle.training.loop.auxiliary_network",
                **{"method": "tiny_student", "weights": str(tmp_path / "teacher.pt")},
                **{"scale": "@scale", "modality": "@modality", "device": "@device"},
            }
        },
        "losses": {
            "distill": {
                "_target_": "monai_sr_bundle.losses.DistillationLoss",
                "_mode_": "callable",
                "weight": 1.0,
                "teacher": "@auxiliary#teacher",
                "distance": "mse",
            }
        },
    }
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "tiny_student.json").write_text(json.dumps(overlay))
    monkeypatch.setenv("MONAI_SR_METHODS", str(tmp_path / "overlays"))
    student = methods.get("tiny_student")
    teacher = student.network()
    last = teacher.body[-1]
    torch.nn.init.zeros_(last.weight), torch.nn.init.constant_(last.bias, -0.2)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    args = ("--train_limit", "2", "--val_limit", "1", "--max_epochs", "4", "--run_dir", tmp_path / "run")
    _ok(run_config(train_files("tiny_student"), "tiny_student", *args, "--ckpt_path", tmp_path / "w.pt"))

    record = json.loads((tmp_path / "weights.json").read_text())["w.pt"]
    assert record["stage"] == "distill"
    assert record["losses"] == {"distill": {"loss": "DistillationLoss", "weight": 1.0, "distance": "mse"}}
    fresh_keys = set(student.network().state_dict())
    saved = torch.load(tmp_path / "run" / "checkpoint_epoch=4.pt", weights_only=True)
    assert set(saved["network"]) == fresh_keys  # no teacher tensors in the checkpoint
    trained = student.network(tmp_path / "w.pt").eval()  # strict: the student alone, no teacher tensors
    teacher = student.load(tmp_path / "teacher.pt")
    torch.manual_seed(0)
    fresh = student.network().eval()
    lr = torch.rand(2, 1, 24, 24)
    with torch.no_grad():
        wanted = teacher(lr)
        assert F.mse_loss(trained(lr), wanted) < 0.25 * F.mse_loss(fresh(lr), wanted)


def test_a_noise_aware_method_trains_told_each_images_level_estimated_on_the_whole_lr(tmp_path):
    """``lrunet``'s ``conditioning`` estimates the noise level on the whole LR image, before the patches are
    cut, so every patch of an image carries the level the predictor would give it; the prepare-batch hands the
    levels to the network as ``noise_level``, and the noisier image gets the higher level."""
    from PIL import Image

    from monai_sr_bundle.networks.noise import estimate_noise_level

    rng = np.random.default_rng(2)
    smooth = np.add.outer(np.arange(96), np.arange(96)).astype(np.float32) / 190 * 200 + 20
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "clean.png")
    Image.fromarray(np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)).save(
        tmp_path / "noisy.png"
    )
    items = [{"label": "clean.png"}, {"label": "noisy.png"}]
    (tmp_path / "list.json").write_text(json.dumps({"training": items, "validation": items[:1]}))
    parser = train_parser("lrunet")
    parser.update({"datalist_file": str(tmp_path / "list.json"), "patch_size": 32, "samples_per_image": 2,
                   "content_scale": None, "degradation": "bicubic", "conditioning#1#prob": 0.0})  # fmt: skip
    pipeline = parser.get_parsed_content("train#preprocessing")
    levels = []
    for item in parser.get_parsed_content("train_datalist"):
        whole = pipeline.transforms[1](pipeline.transforms[0](dict(item)))["image"]  # the LR image, uncut
        samples = pipeline(dict(item))
        expected = float(estimate_noise_level(whole[None]))
        assert [float(s["noise_level"]) for s in samples] == pytest.approx([expected] * len(samples), abs=1e-5)
        levels.append(float(samples[0]["noise_level"]))
    assert levels[1] > levels[0] + 1
    batch = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}
    lr, target, args, kwargs = parser.get_parsed_content("prepare_batch")(batch)
    assert args == () and torch.equal(kwargs["noise_level"], batch["noise_level"]) and lr.shape == (2, 1, 8, 8)
