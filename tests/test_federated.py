"""Federated training: site configs, the job builder, the client's local trainer and worker, the deployment
kits, NVFlare's real simulator (3 sites x 2 rounds; failing, killed and empty sites) and its real POC mode
(server and sites as processes, jobs through the admin API), ending in a checkpoint the bundle's inference runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DATA, TINY_GAN, USER_PYTHON, needs_data
from PIL import Image

from monai_sr_bundle import methods
from monai_sr_bundle.constants import MODALITIES
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated.client import SiteTrainer, parse_args
from monai_sr_bundle.federated.controller import FAILED_AT_SITE, REPORT_NAME
from monai_sr_bundle.federated.deploy import main as deploy_main
from monai_sr_bundle.federated.deploy import python_first
from monai_sr_bundle.federated.job import SERVER_APP, client_args, export_job, load_job_config, run_simulation
from monai_sr_bundle.federated.sites import SITE_CONFIG_ENV, balanced_patient_split, load_site, write_example_sites
from monai_sr_bundle.hashing import sha256

REPO = Path(__file__).resolve().parents[1]
FED_CONFIGS = REPO / "configs" / "federated"
NIH = DATA / "nih_cxr14"
CT = DATA / "chest_ct"
pytestmark = [needs_data(NIH), pytest.mark.federated]


def make_site(folder: Path, name: str, training: list, validation: list) -> Path:
    """A site config + datalist in ``folder`` whose image paths are absolute."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_datalist.json").write_text(json.dumps({"training": training, "validation": validation}))
    (folder / f"{name}.json").write_text(json.dumps({"datalist": f"{name}_datalist.json"}))
    return folder / f"{name}.json"


def nih_items(split: str, start: int, n: int) -> list[dict]:
    return [{"label": d["label"], "boxes": d["boxes"]} for d in nih_datalist(split)[start : start + n]]


def job_file(folder: Path, name: str, site_map: dict, **extra) -> Path:
    config = {
        "name": name,
        "method": "srcnn",
        "num_rounds": 2,
        "local_epochs": 1,
        "min_clients": len(site_map),
        "round_timeout_s": 300,  # a site whose result is lost fails the test in minutes, not never
        "sites": site_map,
        **extra,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


# ---- sites ---------------------------------------------------------------------------------------------


def test_example_sites_are_reproducible_and_split_nih_by_patient(tmp_path):
    names = write_example_sites(tmp_path)
    for name in names:  # the committed files are exactly what the documented command writes
        for suffix in (".json", "_datalist.json"):
            assert (tmp_path / f"{name}{suffix}").read_text() == (FED_CONFIGS / "sites" / f"{name}{suffix}").read_text()
    patient = {Path(d["label"]).name: d["patient_id"] for d in nih_datalist("all")}
    seen, images = {}, []
    for i in (1, 2, 3):
        site = load_site(f"cxr-site-{i}", FED_CONFIGS / "sites" / f"cxr-site-{i}.json")
        for d in site.training + site.validation:
            p = patient[Path(d["label"]).name]
            assert seen.setdefault(p, i) == i, f"patient {p} is at two sites"
        images += [Path(d["label"]).name for d in site.training]
    assert sorted(images) == sorted(Path(d["label"]).name for d in nih_datalist("train"))


@needs_data(CT)
def test_ct_sites_load_dicom_slices():
    for name in ("ct-site-1", "ct-site-2"):
        site = load_site(name, FED_CONFIGS / "sites" / f"{name}.json")
        assert site.training and site.validation
        assert all(Path(d["label"]).is_relative_to(CT) for d in site.training + site.validation)


def test_balanced_patient_split():
    items = [{"patient_id": p, "i": i} for i, p in enumerate("aaabbcdddde")]
    groups = balanced_patient_split(items, 3)
    assert sorted(d["i"] for g in groups for d in g) == list(range(len(items)))
    assert [len(g) for g in groups] == [4, 4, 3]
    owners = {d["patient_id"]: k for k, g in enumerate(groups) for d in g}
    assert all(owners[d["patient_id"]] == k for k, g in enumerate(groups) for d in g)


def test_site_config_errors_name_the_site(tmp_path, monkeypatch):
    monkeypatch.delenv(SITE_CONFIG_ENV, raising=False)
    with pytest.raises(InputError, match=f"site h1: no site config.*{SITE_CONFIG_ENV}"):
        load_site("h1")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="site h1: its site config .* is not readable JSON"):
        load_site("h1", tmp_path / "bad.json")
    (tmp_path / "nolist.json").write_text(json.dumps({"data_dir": "/x"}))
    with pytest.raises(InputError, match='site h1: .* needs "datalist", a path'):
        load_site("h1", tmp_path / "nolist.json")
    with pytest.raises(InputError, match="site h2: .*'training' list must hold items"):
        load_site("h2", make_site(tmp_path, "empty", [], nih_items("val", 0, 1)))
    with pytest.raises(InputError, match="site h3: 1 validation image"):
        load_site(
            "h3", make_site(tmp_path, "gone", nih_items("train", 0, 1), [{"label": str(tmp_path / "missing.png")}])
        )
    (tmp_path / "y.json").write_text('{"datalist": "nope.json"}')
    with pytest.raises(InputError, match="site h4: .*datalist file not found"):
        load_site("h4", tmp_path / "y.json")
    for bad in (0, "2", True, 65):
        (tmp_path / "p.json").write_text(json.dumps({"datalist": "empty_datalist.json", "processes": bad}))
        with pytest.raises(InputError, match='site h5: .*"processes" must be a whole number from 1 to 64'):
            load_site("h5", tmp_path / "p.json")
    many = make_site(tmp_path, "many", nih_items("train", 0, 3), nih_items("val", 0, 1))
    many.write_text(json.dumps({**json.loads(many.read_text()), "processes": 2}))
    with pytest.raises(InputError, match="site h6: 'processes' 2 in .* but 1 validation image.*at most 1"):
        load_site("h6", many)
    two = make_site(tmp_path, "two", nih_items("train", 0, 2), nih_items("val", 0, 2))
    two.write_text(json.dumps({**json.loads(two.read_text()), "processes": 2}))
    assert load_site("h7", two).processes == 2


def test_site_config_from_the_site_environment(tmp_path, monkeypatch):
    """Production: the job carries no path; the site's own environment points at its config. Relative image
    paths start at ``data_dir``, where ``${MONAI_SR_DATA}`` means the shared data folder."""
    names = [Path(d["label"]).name for d in nih_datalist("train")[:2]]
    (tmp_path / "list.json").write_text(
        json.dumps({"training": [{"label": names[0]}], "validation": [{"label": names[1]}]})
    )
    (tmp_path / "site.json").write_text(
        json.dumps({"datalist": "list.json", "data_dir": "${MONAI_SR_DATA}/nih_cxr14/images_512"})
    )
    monkeypatch.setenv(SITE_CONFIG_ENV, str(tmp_path / "site.json"))
    monkeypatch.setenv("MONAI_SR_DATA", str(DATA))
    site = load_site("hospital-a")
    assert site.training[0]["label"] == str(NIH / "images_512" / names[0]) and site.training[0]["boxes"] == []


# ---- job config and recipe -----------------------------------------------------------------------------


def test_job_config_checks(tmp_path):
    sites = {"a": "a.json", "b": None}
    config = load_job_config(job_file(tmp_path, "ok", sites, privacy=True), num_rounds=3)
    assert config["num_rounds"] == 3 and config["privacy"] == {"percentile": 10, "gamma": 0.01}
    assert config["sites"] == {"a": str(tmp_path / "a.json"), "b": None}
    assert load_job_config(job_file(tmp_path, "ct", sites, intensity=[-1000, 400]))["intensity"] == [-1000, 400]
    # without one, a job reads images as the method's weights were trained, else as its modality says
    assert config["intensity"] == "minmax"
    ct = load_job_config(job_file(tmp_path, "ct_default", sites, modality="ct"))
    assert ct["intensity"] == MODALITIES["ct"] == (-1000, 400)
    torch.save(methods.get("srcnn").network().state_dict(), tmp_path / "w.pt")
    assert load_job_config(job_file(tmp_path, "w", sites, initial_weights="w.pt"))["initial_weights"] == str(
        tmp_path / "w.pt"
    )
    for bad, match in [
        ({"colour": 1}, "unknown key"),
        ({"num_rounds": 0}, "num_rounds must be a positive integer"),
        ({"batch_size": "8"}, "batch_size must be a positive integer"),
        ({"privacy": "yes"}, "privacy must be null, true"),
        ({"privacy": {"epsilon": 1}}, "privacy takes numbers for percentile and gamma only"),
        ({"min_clients": 3}, "min_clients is 3 but only 2"),
        ({"sites": {}}, "'sites' must map"),
        ({"intensity": "foo"}, 'intensity must be "minmax" or a \\[lo, hi\\] window'),
        ({"intensity": [400, -1000]}, "intensity must be"),
        ({"intensity": [0, "1"]}, "intensity must be"),
        ({"wait_after_min_s": "soon"}, "wait_after_min_s must be a number of at least 0, got 'soon'"),
        ({"wait_after_min_s": -5}, "wait_after_min_s must be a number of at least 0"),
        ({"round_timeout_s": 0}, "round_timeout_s must be a number of at least 1, got 0"),
        ({"box_weight": -1}, "box_weight must be a number of at least 0"),
        ({"box_weight": True}, "box_weight must be a number"),
        ({"modality": "mri"}, "unknown modality 'mri'; the weights families are cxr, ct"),
        ({"seed": -1}, "seed must be an integer of at least 0"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"initial_weights": 3}, "initial_weights must be null, 'shipped' or a file"),
        ({"initial_weights": "missing.pt"}, "missing.pt: weights file not found"),
        ({"initial_weights": str(methods.get("vdsr").weights_path)}, "weights do not fit this network"),
    ]:
        with pytest.raises(InputError, match=match):
            load_job_config(job_file(tmp_path, "bad", sites, **bad))
    (tmp_path / "noname.json").write_text(json.dumps({"method": "srcnn", "sites": sites}))
    with pytest.raises(InputError, match="missing name"):
        load_job_config(tmp_path / "noname.json")
    (tmp_path / "nomethod.json").write_text(json.dumps({"name": "x", "sites": sites}))  # no default method
    with pytest.raises(InputError, match="missing method"):
        load_job_config(tmp_path / "nomethod.json")
    (tmp_path / "broken.json").write_text("[1, 2")
    with pytest.raises(InputError, match="the job config is not readable JSON"):
        load_job_config(tmp_path / "broken.json")


def test_job_config_refuses_a_method_that_cannot_be_trained(tmp_path):
    untrainable = sorted(set(methods.names()) - set(methods.trainable_names()))
    assert untrainable  # the interpolation baseline
    for method in untrainable + ["nope"]:
        with pytest.raises(InputError, match=f"method '{method}' cannot be trained; use one of ") as e:
            load_job_config(job_file(tmp_path, "bad", {"a": "a.json"}, method=method))
        assert str(e.value).rstrip(".").endswith(", ".join(methods.trainable_names()))


def test_network_spec_builds_the_bundle_network():
    spec = methods.get("srcnn", 4, "cxr").network_spec()
    module, name = spec["class_path"].rsplit(".", 1)
    network = getattr(__import__(module, fromlist=[name]), name)(**spec["args"])
    network.load_state_dict(torch.load(methods.get("srcnn", 4, "cxr").weights_path, weights_only=True))


def test_export_for_poc_and_production(tmp_path):
    """The exported job: our controller on the server, the client script and per-site arguments on each site,
    PercentilePrivacy on the sites' results when asked for; a null site carries no path."""
    config = load_job_config(job_file(tmp_path, "exp", {"hospital-a": None, "hospital-b": "b.json"}, privacy=True))
    export_job(config, tmp_path / "job")
    server = (tmp_path / "job" / "exp" / "app_server" / "config" / "config_fed_server.json").read_text()
    assert "monai_sr_bundle.federated.controller.SRFedAvg" in server and '"min_responses": 2' in server
    a = (tmp_path / "job" / "exp" / "app_hospital-a" / "config" / "config_fed_client.json").read_text()
    b = (tmp_path / "job" / "exp" / "app_hospital-b" / "config" / "config_fed_client.json").read_text()
    assert "PercentilePrivacy" in a and "WEIGHT_DIFF" in a
    assert "--site_config" not in a and f"--site_config {tmp_path / 'b.json'}" in b
    assert '"task_script_path": "client.py"' in a  # found by name in the job's custom folder, at any site
    assert [p.name for p in (tmp_path / "job" / "exp" / "app_hospital-a" / "custom").rglob("*.py")] == ["client.py"]


def test_the_initial_model_travels_in_the_job_and_follows_the_seed(tmp_path):
    """Round 0 starts from a model inside the job (no path of the exporting machine): the same seed gives the
    same model at every export, another seed another one, and initial weights are carried as they are."""

    def initial(name, **extra):
        config = load_job_config(job_file(tmp_path, name, {"a": None}, **extra))
        job = export_job(config, tmp_path / "job")
        assert str(tmp_path) not in "".join(p.read_text() for p in job.rglob("*.json"))
        return torch.load(job / "app_server" / "custom" / "initial_model.pt", weights_only=True)

    first, again, other = initial("s1"), initial("s2"), initial("s3", seed=7)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    shipped = torch.load(methods.get("srcnn").weights_path, weights_only=True)
    carried = initial("s4", initial_weights="shipped")
    assert all(torch.equal(carried[k], shipped[k]) for k in shipped)


def test_the_initial_model_is_in_custom_whatever_is_on_sys_path(tmp_path, monkeypatch):
    """NVFlare places a job file by its path relative to the longest ``sys.path`` entry that holds it: with
    the temporary folder's parent on ``sys.path`` (a script run from ``/tmp``) the round-0 model went to
    ``custom/monai_sr_job_*/initial_model.pt`` and the server failed at round 0."""
    monkeypatch.syspath_prepend(tempfile.gettempdir())
    job = export_job(load_job_config(job_file(tmp_path, "p", {"a": None})), tmp_path / "job")
    assert [p.relative_to(job).as_posix() for p in job.rglob("initial_model.pt")] == [
        "app_server/custom/initial_model.pt"
    ]


def test_client_arguments_survive_nvflares_whitespace_split(tmp_path):
    config = load_job_config(
        job_file(tmp_path, "ct", {"a": "a.json"}, modality="ct", intensity=[-1000, 400], local_epochs=2, batch_size=3)
    )
    args = parse_args(client_args(config, config["sites"]["a"], threads=1).split())
    assert args.intensity == [-1000, 400] and args.local_epochs == 2 and args.modality == "ct" and args.threads == 1
    assert args.method == "srcnn"
    assert args.batch_size == 3 and parse_args(["--method", "srcnn"]).batch_size is None
    assert args.site_config == str(tmp_path / "a.json") and parse_args(["--method", "srcnn"]).intensity == "minmax"
    with pytest.raises(SystemExit):  # the method has no default
        parse_args([])
    with pytest.raises(InputError, match="split on whitespace"):
        client_args(config, str(tmp_path / "my site.json"))


# ---- the client's local trainer ------------------------------------------------------------------------


def test_site_trainer_scores_and_trains(tmp_path):
    site = load_site("s", make_site(tmp_path, "s", nih_items("train", 0, 4), nih_items("val", 0, 1)))
    trainer = SiteTrainer(site, "srcnn", 4, "cxr", "minmax", total_epochs=2, work_dir=tmp_path / "runs")
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    metrics = trainer.evaluate()
    assert set(metrics) == {"psnr", "ssim"} and 0 < metrics["ssim"] <= 1
    assert trainer.train(1) == 1 and trainer.train(1) == 1  # 4 images x 2 patches, batch 8: one step an epoch
    assert trainer.trainer.state.epoch == 2
    small = SiteTrainer(site, "srcnn", 4, "cxr", "minmax", total_epochs=1, work_dir=tmp_path / "runs", batch_size=2)
    assert small.train(1) == 2
    assert any(not torch.equal(before[k], v) for k, v in trainer.network.state_dict().items())


def test_site_trainer_refuses_a_bad_global_model(tmp_path):
    """Weights from the server that do not fit, or hold NaN, are refused before any training or scoring."""
    site = load_site("s5", make_site(tmp_path, "s5", nih_items("train", 0, 1), nih_items("val", 0, 1)))
    trainer = SiteTrainer(site, "srcnn", 4, "cxr", "minmax", 1, tmp_path / "runs")
    good = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    first = next(iter(good))
    for bad in (
        {**good, first: torch.full_like(good[first], float("nan"))},
        {k: v for k, v in good.items() if k != first},
        {**good, first: torch.zeros(3, 3)},
        {**good, first: np.array(["x"] * 4)},
        {**good, first: torch.ones_like(good[first], dtype=torch.bool)},
        None,
    ):
        with pytest.raises(InputError, match="site s5: the global model does not fit"):
            trainer.load_global(bad)
    assert all(torch.equal(v, good[k]) for k, v in trainer.network.state_dict().items())
    trainer.load_global({k: v.numpy() for k, v in good.items()})  # NVFlare's numpy exchange format


def test_site_trainer_refuses_a_corrupt_image_naming_the_site(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 64)
    site = load_site(
        "s9", make_site(tmp_path, "s9", [{"label": str(tmp_path / "corrupt.png")}], nih_items("val", 0, 1))
    )
    with pytest.raises(InputError, match="site s9: cannot load its images"):
        SiteTrainer(site, "srcnn", 4, "cxr", "minmax", 1, tmp_path / "runs")


def test_site_trainer_refuses_wrong_shapes_naming_the_site(tmp_path):
    """An image smaller than the training patch, or a volume among 2D images, fails the round with one
    sentence naming the site, not a traceback from inside the data loader."""
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / "tiny.png")
    site = load_site("s7", make_site(tmp_path, "s7", [{"label": str(tmp_path / "tiny.png")}], nih_items("val", 0, 1)))
    with pytest.raises(InputError, match="site s7: training failed .*smaller than the patch"):
        SiteTrainer(site, "srcnn", 4, "cxr", "minmax", 1, tmp_path / "runs").train(1)
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image([32, 32, 8], sitk.sitkFloat32), str(tmp_path / "volume.nii.gz"))
    site = load_site(
        "s8", make_site(tmp_path, "s8", nih_items("train", 0, 1), [{"label": str(tmp_path / "volume.nii.gz")}])
    )
    with pytest.raises(InputError, match="site s8: "):
        SiteTrainer(site, "srcnn", 4, "cxr", "minmax", 1, tmp_path / "runs").evaluate()


@needs_data(CT)
def test_site_trainer_windows_ct_in_hu(tmp_path):
    site = load_site("ct-site-2", FED_CONFIGS / "sites" / "ct-site-2.json")
    trainer = SiteTrainer(site, "srcnn", 4, "ct", [-1000, 400], 1, tmp_path / "runs")
    image = trainer.evaluator.data_loader.dataset[0]["label"]
    assert tuple(image.meta["intensity_range"]) == (-1000.0, 400.0)
    assert trainer.train(1) >= 1


# ---- NVFlare's simulator -------------------------------------------------------------------------------


def _report(app: Path) -> dict:
    return json.loads((app / REPORT_NAME).read_text())


def test_the_latent_diffusion_jobs_site_keeps_the_bundles_autoencoder(tmp_path):
    """The shipped latent-diffusion job's client in this process (the simulator around a client is the srcnn
    job's above): a round scores a sampled SR and trains the denoiser through the latent stage, and the frozen
    autoencoder the site loads and sends back is the bundle's own, not the fresh server model's random one."""
    shipped = json.loads((FED_CONFIGS / "cxr_nih_ldm.json").read_text())
    method = methods.get(shipped["method"], shipped["scale"], shipped["modality"])
    site = load_site("s", make_site(tmp_path, "s", nih_items("train", 0, 2), nih_items("val", 0, 1)))
    runs, batch = tmp_path / "runs", shipped["batch_size"]
    trainer = SiteTrainer(site, method.name, method.scale, method.modality, "minmax", 1, runs, batch_size=batch)
    fresh = method.network().state_dict()  # what a new server model holds: a random autoencoder
    trainer.load_global(fresh)
    assert 0 < trainer.evaluate()["psnr"] < 100  # scored on a sampled SR
    assert trainer.train(1) >= 1
    sent = trainer.network.state_dict()
    own = torch.load(method.autoencoder_weights_path, weights_only=True)
    for key, value in own.items():
        torch.testing.assert_close(sent[f"autoencoder.{key}"], value)
    assert any(not torch.equal(sent[k], fresh[k]) for k in sent if not k.startswith("autoencoder."))


def test_the_diffusion_jobs_site_trains_its_denoiser_and_exchanges_the_methods_weights(tmp_path):
    """The shipped SR3 job's client in this process (the simulator around it is the one above): a round
    trains the denoiser through DenoisingStep, and what the site loads and sends is the method's own state
    dict, not the training wrapper's."""
    shipped = json.loads((FED_CONFIGS / "cxr_nih_sr3.json").read_text())
    site = load_site("s", make_site(tmp_path, "s", nih_items("train", 0, 2), nih_items("val", 0, 1)))
    trainer = SiteTrainer(site, shipped["method"], 4, "cxr", "minmax", 1, tmp_path / "runs", batch_size=2)
    assert type(trainer.trainer.network).__name__ == "DenoisingStep"
    own = methods.get(shipped["method"]).network().state_dict()
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    assert before.keys() == own.keys()
    trainer.load_global(own)
    assert trainer.train(1) >= 1
    after = trainer.network.state_dict()
    assert any(not torch.equal(after[k], own[k]) for k in own)


def test_a_sites_discriminator_carries_on_across_rounds(tmp_path, tiny_gan):
    """A GAN method (the tiny one) at a site: it trains with the GAN stage, sends the generator alone (the
    discriminator never reaches the server), and between rounds loads the global generator while its
    discriminator and its optimizer keep their state (Adam's step count goes on) instead of starting over."""
    site = load_site("s7", make_site(tmp_path, "s7", nih_items("train", 0, 2), nih_items("val", 0, 1)))
    trainer = SiteTrainer(site, TINY_GAN, 4, "cxr", "minmax", 2, tmp_path / "runs")
    generator = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    assert trainer.train(1) == 1
    critic = {k: v.clone() for k, v in trainer.trainer.discriminator.state_dict().items()}
    trainer.load_global(generator)  # the next round starts from the (here: initial) global generator
    assert trainer.train(1) == 1
    steps = {int(s["step"]) for s in trainer.trainer.d_optimizer.state_dict()["state"].values()}
    assert steps == {2}
    assert trainer.network.state_dict().keys() == tiny_gan.network().state_dict().keys()  # what it sends
    after = trainer.trainer.discriminator.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in critic.items())


def test_an_exported_job_runs_in_the_nvflare_simulator_and_publishes_its_model(tmp_path):
    """The exported job folder run with the ``nvflare simulator`` command, one site from the shipped weights, one
    round: the site reports PSNR/SSIM and steps, the job publishes its model, changed from the shipped one, with
    its sha256 and the site that trained; nothing about the site's images reaches the server; and the bundle's
    inference config runs the checkpoint as-is. The faults a job trains past (a site failing round after round,
    its log saying why, a killed worker, poisoned updates) are the POC ``crash`` job's (:func:`poc_deployment`),
    where a site's relay lives across rounds: the simulator, taking several sites in turns, starts each site's
    relay and worker again at every turn, so each site and round more costs seconds of imports here."""
    site = make_site(tmp_path / "a", "site-a", nih_items("train", 0, 4), nih_items("val", 0, 1))
    config = load_job_config(
        job_file(tmp_path, "one", {"site-a": str(site)}, min_clients=1, num_rounds=1, initial_weights="shipped")
    )
    export_job(config, tmp_path / "job")
    command = [str(Path(USER_PYTHON).with_name("nvflare")), "simulator", str(tmp_path / "job" / "one")]
    command += ["-w", str(tmp_path / "ws"), "-c", "site-a", "-t", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    app = tmp_path / "ws" / SERVER_APP
    (only,) = _report(app)["rounds"]
    assert not only["failed"] and set(only["sites"]) == {"site-a"}
    assert all(s["psnr"] > 20 and 0 < s["ssim"] <= 1 and s["steps"] == 1 for s in only["sites"].values())

    ckpt = app / "models" / "srcnn_cxr_x4.pt"
    manifest = json.loads((app / "models" / "weights.json").read_text())["srcnn_cxr_x4.pt"]
    assert manifest["sites_trained"] == ["site-a"]
    assert manifest["sha256"] == sha256(ckpt) and manifest["rounds_completed"] == 1 and "federated" in manifest["data"]
    final = torch.load(ckpt, weights_only=True)
    shipped = torch.load(methods.get("srcnn", 4, "cxr").weights_path, weights_only=True)
    assert final.keys() == shipped.keys() and any(not torch.allclose(final[k], shipped[k]) for k in final)

    image_names = [Path(d["label"]).name for d in nih_items("train", 0, 4) + nih_items("val", 0, 1)]
    server_files = [p for p in (tmp_path / "ws" / "server").rglob("*") if p.is_file() and p.suffix != ".pt"]
    server_text = "".join(p.read_text(errors="ignore") for p in server_files)
    assert server_text and not [n for n in image_names if n in server_text]
    assert _bundle_inference_size(ckpt, tmp_path) == (192, 192)


def _bundle_inference_size(ckpt: Path, work: Path) -> tuple[int, int]:
    """The size of the SR that the bundle's inference config makes of a 48x48 image with the checkpoint ``ckpt``
    as-is: ``python -m monai.bundle run``'s command line parsed and run in this process, from the bundle root
    (tests/test_bundle.py's ``run_config``; a process of its own cost seconds of imports and proved nothing more)."""
    from test_bundle import run_config

    Image.fromarray((np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)).save(work / "in.png")
    args = ["--ckpt_path", ckpt, "--input", work / "in.png", "--output_dir", work / "sr"]
    run = run_config("configs/inference.json", "srcnn", *args)
    assert run.returncode == 0, run.stdout[-2000:]
    return Image.open(work / "sr" / "in_sr.png").size


def test_a_round_without_a_site_that_trained_stops_the_job_naming_them_and_publishes_nothing(tmp_path):
    """min_clients 1, and neither site can train: one has an empty datalist, the other a corrupt image. The job
    stops; its error names both sites, each site's own log says why, the report lists both as failed, and
    no global model is published. The empty datalist is refused before a worker process is started."""
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 64)
    sites = {
        "site-e": str(make_site(tmp_path / "e", "site-e", [], nih_items("val", 30, 1))),
        "site-f": str(
            make_site(tmp_path / "f", "site-f", [{"label": str(tmp_path / "corrupt.png")}], nih_items("val", 0, 1))
        ),
    }
    config = load_job_config(job_file(tmp_path, "allfail", sites, min_clients=1, num_rounds=1))
    with pytest.raises(InputError, match="job allfail stopped: site\\(s\\) site-e, site-f failed"):
        run_simulation(config, tmp_path / "ws")
    logs = {s: (tmp_path / "ws" / "allfail" / s / "log.txt").read_text() for s in sites}
    assert "site site-e: " in logs["site-e"] and "'training' list must hold items" in logs["site-e"]
    assert "site site-f: cannot load its images" in logs["site-f"]
    workers = {p.parent.name for p in (tmp_path / "ws" / "allfail").rglob("worker.pid")}
    assert workers == {"site-f"}  # site-e's datalist was refused before a worker process was started
    app = tmp_path / "ws" / "allfail" / SERVER_APP
    assert _report(app)["rounds"][0]["failed"] == {s: FAILED_AT_SITE for s in sites}
    assert not (app / "models").exists()


def _killer(pid_files, victim, killed: list) -> threading.Thread:
    """A started thread that SIGKILLs the first process ``victim`` names from one of the PID files ``pid_files()``
    finds, and records it in ``killed`` (gives up after 300 s)."""

    def kill_first() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            for pid_file in pid_files():
                pid = victim(pid_file)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.2)

    thread = threading.Thread(target=kill_first, daemon=True)
    thread.start()
    return thread


def _worker(pid_file: Path) -> int:
    """The site worker a PID file names (0 while it is being written)."""
    return int(pid_file.read_text() or 0)


def _second_rank(pid_file: Path) -> int:
    """One of a torchrun site's two processes, once both run (its PID file names torchrun); else 0."""
    import psutil

    try:
        ranks = psutil.Process(int(pid_file.read_text())).children()
    except (ValueError, psutil.NoSuchProcess):
        return 0
    return ranks[-1].pid if len(ranks) == 2 else 0


def test_production_project_provisions_the_example_sites(tmp_path):
    """``configs/federated/project.yml`` provisions a startup kit for the server, the admin and every site of
    the chest X-ray job, under the same names."""
    subprocess.run(
        [
            str(Path(USER_PYTHON).with_name("nvflare")),
            "provision",
            "-p",
            str(FED_CONFIGS / "project.yml"),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    kits = tmp_path / "monai_sr_federation" / "prod_00"
    sites = json.loads((FED_CONFIGS / "cxr_nih.json").read_text())["sites"]
    for name in ["server1", "admin@coordinator.org", *sites]:
        assert (kits / name / "startup").is_dir(), name


def test_deploy_kit_sets_up_provisioned_kits_for_the_job(tmp_path):
    """``deploy kit`` on provisioned kits: the job's classes allowed (our controller at the server, only stock
    classes beside NVFlare's at the sites), the server on the given address, this Python first on PATH; run
    twice, it changes nothing more. A folder that is no kit is refused in one sentence."""
    subprocess.run(
        [str(Path(USER_PYTHON).with_name("nvflare")), "provision", "-p", str(FED_CONFIGS / "project.yml"),
         "-w", str(tmp_path)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    kits = tmp_path / "monai_sr_federation" / "prod_00"
    job = str(FED_CONFIGS / "cxr_nih.json")
    for kit in ("server1", "cxr-site-1", "admin@coordinator.org"):
        for _ in range(2):
            assert deploy_main(["kit", job, str(kits / kit), "--host", "10.1.2.3", "--port", "9102"]) == 0
    server = json.loads((kits / "server1" / "local" / "resources.json").read_text())
    assert "monai_sr_bundle.federated.controller.SRFedAvg" in server["class_allow_list"]
    assert "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor" in server["class_allow_list"]
    site = json.loads((kits / "cxr-site-1" / "local" / "resources.json").read_text())
    assert site["allow_log_streaming"] is False and "SRFedAvg" not in json.dumps(site)
    fed_server = json.loads((kits / "server1" / "startup" / "fed_server.json").read_text())["servers"][0]
    assert fed_server["service"]["target"] == "10.1.2.3:9102" and fed_server["admin_port"] == 9102
    fed_client = json.loads((kits / "cxr-site-1" / "startup" / "fed_client.json").read_text())["servers"][0]
    assert fed_client["service"]["target"] == "10.1.2.3:9102"
    admin = json.loads((kits / "admin@coordinator.org" / "startup" / "fed_admin.json").read_text())["admin"]
    assert (admin["host"], admin["port"]) == ("10.1.2.3", 9102)
    script = (kits / "cxr-site-1" / "startup" / "sub_start.sh").read_text()
    assert script.count(f'export PATH="{Path(sys.executable).parent}:$PATH"') == 1
    assert deploy_main(["kit", job, str(tmp_path)]) == 2


def test_python_first_is_idempotent():
    folder = str(Path(sys.executable).parent)
    once = python_first({"PATH": f"/usr/bin{os.pathsep}{folder}"})
    assert once["PATH"] == f"{folder}{os.pathsep}/usr/bin" and python_first(once)["PATH"] == once["PATH"]


# ---- NVFlare's POC mode: server and sites as processes, the job submitted through the admin API ----------


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


#: the POC's sites and what each stands for; site-c is in the jobs but never started
POC_SITES = {
    "site-a": "healthy",
    "site-b": "its worker SIGKILLed in round 0; then claims 10^9 training images",
    "site-d": "every training image corrupt",
    "site-e": "every training image corrupt",
    "site-g": "two GPUs: its rounds trained by two torchrun processes, one SIGKILLed in round 0",
    "site-p": "sends NaN weights in round 0, a (1,) tensor for a layer in round 1",
    "site-q": "sends its weights times 1e6 in round 0, an extra key in round 1",
}


def poc_deployment(work: Path) -> SimpleNamespace:
    """A POC federation (server and sites as processes, kits as ``deploy.prepare_poc`` writes them, each site
    started with its own MONAI_SR_SITE_CONFIG, jobs through the admin API) running the fault table's jobs once,
    stopped at the end; returns what they left, for the tests that read it (the ``federated_poc`` fixture of
    tests/conftest.py). The faults share jobs where they cannot interfere, since each site of a POC job starts
    processes that import torch and MONAI (seconds each on 2 cores) while a round more costs little:

    - ``crash`` (2 rounds from the shipped weights, min_clients 1, batch 2): every site of :data:`POC_SITES` but
      site-e, and site-c, never connected; site-b's, site-p's and site-q's clients are the fault table's attacker.
    - ``allfail`` (1 round), submitted with ``crash`` and run beside it: site-d and site-e, both failing.
    - once ``allfail`` is done, while ``crash`` runs on, a copy of site-e's kit started beside it.
    - then ``restart`` (site-a, 3 rounds): the server killed once round 0 is published, and started again.
    """
    from monai_sr_bundle.federated.poc import LocalPoc
    from tools.poc_faults import copied_kit, poison, server_restart

    (work / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 64)
    corrupt = [{"label": str(work / "corrupt.png")}]
    training = {"site-a": 0, "site-b": 200, "site-g": 300, "site-p": 400, "site-q": 500}
    validation = {"site-a": 0, "site-b": 30, "site-g": 40, "site-p": 50, "site-q": 55}
    sites = {
        s: make_site(
            work / s,
            s,
            nih_items("train", training[s], 4) if s in training else corrupt,
            nih_items("val", validation.get(s, 0), 2 if s == "site-g" else 1),
        )
        for s in POC_SITES
    }
    sites["site-g"].write_text(json.dumps({**json.loads(sites["site-g"].read_text()), "processes": 2}))
    poc_config = load_job_config(job_file(work, "poc", {**{s: str(p) for s, p in sites.items()}, "site-c": None}))

    def job(name, names, **extra):
        config = load_job_config(
            job_file(work, name, dict.fromkeys(names), min_clients=1, wait_after_min_s=300, **extra)
        )
        return export_job(config, work / "jobs")

    found = SimpleNamespace(work=work, sites=sites, killed_worker=[], killed_rank=[])
    with LocalPoc(poc_config, work / "ws", USER_PYTHON) as poc:
        found.kits = poc.kits
        for name in ("server", *sites):
            poc.start(name)
        poc.connect(list(sites), timeout=300)
        found.listening = _listening_addresses(poc.port)

        crash_sites = ["site-a", "site-b", "site-c", "site-d", "site-g", "site-p", "site-q"]
        crash = job("crash", crash_sites, batch_size=2, initial_weights="shipped")
        poison(crash, "site-b", "claims")
        poison(crash, "site-p", "nan", "broadcast")
        poison(crash, "site-q", "scaled", "extra")

        def pid_files(site):
            return lambda: (poc.kits / site).glob(f"monai_sr_runs/*/{site}/worker.pid")

        killers = [
            _killer(pid_files("site-b"), _worker, found.killed_worker),
            _killer(pid_files("site-g"), _second_rank, found.killed_rank),
        ]
        allfail = poc.submit(job("allfail", ["site-d", "site-e"], num_rounds=1))
        crash_id = poc.submit(crash)
        found.allfail_status, out = poc.result(allfail, timeout=400)
        found.allfail = out / "workspace" / "app_server"
        found.copied = copied_kit(poc, "site-e")  # while crash runs: site-e is in no job now
        found.crash_status, out = poc.result(crash_id, timeout=600)
        for killer in killers:
            killer.join()
        found.crash = out / "workspace" / "app_server"
        found.crash_logs = {s: (poc.kits / s / out.name / "log.txt").read_text() for s in sites if s != "site-e"}
        found.restarted = server_restart(poc, job("restart", ["site-a"], num_rounds=3))

    import psutil

    ws = str(work / "ws")
    found.left = [p.pid for p in psutil.process_iter(["cmdline"]) if ws in " ".join(p.info["cmdline"] or [])]
    return found


def shared_poc_deployment(tmp_path_factory) -> SimpleNamespace:
    """:func:`poc_deployment` once per test session, for the ``federated_poc`` fixture. Under pytest-xdist the first
    worker to need it runs it while holding a lock in the run's shared temporary folder and leaves what it found
    there for the others, which wait: ``make test`` keeps its readers in one worker (``--dist loadgroup``), a
    plain ``pytest -n N`` spreads them."""
    import fcntl

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return poc_deployment(tmp_path_factory.mktemp("poc"))
    run = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    shared = run / "federated_poc.json"
    with open(run / "federated_poc.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not shared.is_file():
            found = poc_deployment(tmp_path_factory.mktemp("poc"))
            shared.write_text(json.dumps(_to_json(vars(found))))
    return SimpleNamespace(**_from_json(json.loads(shared.read_text())))


def _to_json(value):
    """``value`` (paths, sets, dicts, lists, numbers, strings) as JSON, paths and sets marked for :func:`_from_json`."""
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, set):
        return {"__set__": sorted(value)}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value):
    if isinstance(value, dict) and set(value) == {"__path__"}:
        return Path(value["__path__"])
    if isinstance(value, dict) and set(value) == {"__set__"}:
        return set(value["__set__"])
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def test_poc_deployment_survives_faults_and_leaks_nothing(federated_poc):
    """The POC federation of :func:`poc_deployment`: the server on loopback only, our classes allowed. (1) The
    ``crash`` job completes: site-b's worker killed in round 0 fails its round, not the job, and site-b trains
    again in round 1 with a new worker; site-c never connecting is reported as not connected in each round,
    which goes on without waiting for it; site-d, its images corrupt, fails each round, its log saying why; each
    site that trained reports PSNR/SSIM and its steps; the published model, with its sha256 and the sites that
    trained in weights.json, runs with the bundle's inference config. (2) Every site failing (corrupt images): no
    model. (3) A copied kit. (4) A server restart mid-job (the fault table's flows). Then nothing of the POC
    is left running, and nothing on the server side (kits, job store) names a site's file. Over 120 s with its
    fixture: three POC jobs and a server restart, each job starting a process per site that imports torch."""
    found = federated_poc
    assert found.listening == {"0100007F"}  # 127.0.0.1, not every interface

    assert found.killed_worker and found.crash_status == "FINISHED:COMPLETED", found.crash_status
    first, second = _report(found.crash)["rounds"]
    assert set(first["failed"]) == {"site-b", "site-c", "site-d", "site-g", "site-p", "site-q"}, first["failed"]
    assert first["failed"]["site-b"] == first["failed"]["site-d"] == FAILED_AT_SITE
    assert first["failed"]["site-c"] == second["failed"]["site-c"] == "not connected"
    assert set(first["sites"]) == {"site-a"}
    assert set(second["sites"]) == {"site-a", "site-b", "site-g"}, second["failed"]
    assert set(second["failed"]) == {"site-c", "site-d", "site-p", "site-q"}
    assert second["failed"]["site-d"] == FAILED_AT_SITE
    assert "site-b round 0 failed: site site-b: its worker process ended (exit code -9)" in found.crash_logs["site-b"]
    for r in (0, 1):  # the worker that could not load them says so again each round
        assert f"site-d round {r} failed: site site-d: cannot load its images" in found.crash_logs["site-d"]
    for r in (first, second):  # each site that trained scores the global model and says how many steps it took
        for site, done in r["sites"].items():
            assert done["psnr"] > 20 and 0 < done["ssim"] <= 1 and done["steps"] == (1 if site == "site-g" else 2)
    assert second["global_model"] == "models/srcnn_cxr_x4.pt"
    ckpt = found.crash / second["global_model"]
    manifest = json.loads((ckpt.parent / "weights.json").read_text())[ckpt.name]
    assert manifest["sites_trained"] == ["site-a", "site-b", "site-g"] and manifest["rounds_completed"] == 2
    assert manifest["sha256"] == sha256(ckpt)
    assert _bundle_inference_size(ckpt, found.work) == (192, 192)

    assert found.allfail_status != "FINISHED:COMPLETED"
    assert _report(found.allfail)["rounds"][0]["failed"] == {s: FAILED_AT_SITE for s in ("site-d", "site-e")}
    assert not (found.allfail / "models").exists()

    # (3) site-e's kit copied: named in the server's log within a minute, disabled, back once enabled
    copied = found.copied
    assert copied["reported_s"] is not None and copied["disabled"] and copied["back"], copied
    # (4) the server killed once round 0 of 3 is published, then started again: the job ends at once
    # (NVFlare 2.9 left it RUNNING for ever), downloadable with the round-0 model its weights.json names
    assert found.restarted == {"status": "FINISHED:ABANDONED", "rounds": [0], "model": True, "deleted": True}

    assert not found.left, f"POC processes still running after close: {found.left}"  # job processes outlived it
    site_files = [str(p.parent) for p in found.sites.values()] + ["corrupt.png"]
    site_files += [Path(d["label"]).name for s in found.sites.values() for d in json.loads(_datalist(s))["training"]]
    server_side = [found.kits / "server", found.work / "ws" / "jobs-storage"]
    assert _files_naming([found.work / "site-d"], site_files)  # the scan finds them where they are
    assert not _files_naming(server_side, site_files)


def _datalist(site_config: Path) -> str:
    return (site_config.parent / json.loads(site_config.read_text())["datalist"]).read_text()


def _files_naming(roots: list[Path], names: list[str]) -> list[tuple[str, str]]:
    """(file, name) for every file under ``roots`` whose bytes contain one of ``names``."""
    return [
        (str(path), name)
        for root in roots
        for path in root.rglob("*")
        if path.is_file()
        for name in names
        if name.encode() in path.read_bytes()
    ]


def test_poisoned_updates_are_refused_naming_the_site_and_never_published(federated_poc):
    """The POC ``crash`` job (:func:`poc_deployment`), whose site-p and site-q run the fault table's attacker:
    in round 0 site-p sends NaN and site-q its weights times 1e6, in round 1 site-p a (1,) tensor that
    averaging would broadcast over a layer and site-q an extra key: each refused, named with the reason, while
    the honest sites make the rounds, site-b among them in round 1 with honest weights but claiming 10^9 training
    images, so capped at 4x the median. The published model is finite and loads into the network."""
    from tools.poc_faults import finite_model  # the fault table's check of a published model

    assert federated_poc.crash_status == "FINISHED:COMPLETED"
    first, second = _report(federated_poc.crash)["rounds"]
    assert "NaN or infinite" in first["failed"]["site-p"], first["failed"]
    assert "times the round's median size" in first["failed"]["site-q"]
    assert "has shape [1]" in second["failed"]["site-p"], second["failed"]
    assert "unexpected ['evil.weight']" in second["failed"]["site-q"]
    assert set(first["sites"]) == {"site-a"} and set(second["sites"]) == {"site-a", "site-b", "site-g"}
    assert second["sites"]["site-a"]["weight"] == 4 and second["sites"]["site-b"]["weight"] == 16
    assert finite_model(federated_poc.crash)
    network = methods.get("srcnn", 4).network()
    network.load_state_dict(torch.load(federated_poc.crash / "models" / "srcnn_cxr_x4.pt", weights_only=True))


def test_batchnorm_statistics_stay_at_the_site(tmp_path):
    """runet has BatchNorm: its running statistics (the site's image statistics) are never in what the site
    sends, and after round 0 the site keeps its own instead of the global model's."""
    site = load_site("s", make_site(tmp_path, "s", nih_items("train", 0, 2), nih_items("val", 0, 1)))
    trainer = SiteTrainer(site, "runet", 4, "cxr", "minmax", total_epochs=2, work_dir=tmp_path / "runs", batch_size=2)
    global_state = methods.get("runet", 4).network().state_dict()
    stats = [k for k in global_state if k.endswith(".running_mean")]
    assert stats
    trainer.load_global(global_state)
    assert all(torch.equal(trainer.network.state_dict()[k], global_state[k]) for k in stats)  # round 0: the global's
    trainer.train(1)
    sent = trainer.update()
    assert not [k for k in sent if k.endswith((".running_mean", ".running_var", ".num_batches_tracked"))]
    own = {k: trainer.network.state_dict()[k].clone() for k in stats}
    assert any(not torch.equal(own[k], global_state[k]) for k in stats)
    trainer.load_global(global_state)
    assert all(torch.equal(trainer.network.state_dict()[k], own[k]) for k in stats)  # kept, not the global's
    trainer.network.state_dict()[stats[0].replace("running_mean", "weight")].fill_(float("nan"))
    with pytest.raises(InputError, match="holds NaN or infinite values .*; not sent"):
        trainer.update()


def test_a_site_name_is_disabled_once_per_takeover_streak_and_again_after_it_is_enabled():
    """The watcher reads NVFlare's own connection log: two takeovers are not enough, the third disables the
    name once however many follow while it is disabled, and once the admin enables it the count starts
    afresh. The engine is a stand-in (the POC test runs the real server)."""
    import logging
    from contextlib import nullcontext
    from types import SimpleNamespace

    from nvflare.apis.event_type import EventType
    from nvflare.fuel.f3.sfm import sfm_endpoint

    from monai_sr_bundle.federated.watch import DuplicateSiteNames

    disabled, calls = set(), []

    def disable_clients(names):
        calls.extend(names)
        disabled.update(names)

    engine = SimpleNamespace(
        new_context=nullcontext,
        disable_clients=disable_clients,
        server=SimpleNamespace(client_manager=SimpleNamespace(is_client_disabled=lambda n: n in disabled)),
    )
    watcher = DuplicateSiteNames()
    watcher.handle_event(EventType.SYSTEM_START, SimpleNamespace(get_engine=lambda: engine))
    log = logging.getLogger(sfm_endpoint.__name__)

    def takeovers(site, n):
        for k in range(n):
            log.info(f"Connection CN{k} is evicted for CN{k + 1} from endpoint {site} for exceeding limit 1")
        deadline = time.monotonic() + 5
        while watcher._disabling and time.monotonic() < deadline:  # the disabling thread
            time.sleep(0.01)

    try:
        takeovers("site-a", 2)
        takeovers("site-b", 2)
        assert calls == []
        takeovers("site-a", 6)
        assert calls == ["site-a"]
        disabled.discard("site-a")  # the admin enables it
        takeovers("site-a", 2)
        assert calls == ["site-a"]
        takeovers("site-a", 1)
        assert calls == ["site-a", "site-a"]
    finally:
        watcher.handle_event(EventType.SYSTEM_END, None)
