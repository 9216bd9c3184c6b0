"""A diffusion method served by the real MONAI Label server: the sampler options of a request, the mean of
several samples equal to in-process inference, its uncertainty maps fetched by a second infer with the same
seed, and every bad sampling option answered 422 while the server keeps serving. The method is a tiny SR3
registered for the server through ``$MONAI_SR_METHODS`` with a trained version in its model folder."""

from __future__ import annotations

import json

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from test_diffusion import NAME, OVERLAY
from test_monailabel_app import NIH, infer, response_image, with_boxes

from monai_sr_bundle import methods
from monai_sr_bundle.batch import run_inference
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.request import SRRequest
from tools.label_server import label_server, listening_pid

pytest.importorskip("monailabel", reason="monailabel is a test dependency (pip install -e '.[test]')")
pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not (NIH / "images_512").is_dir(), reason=f"{NIH / 'images_512'} not found (set MONAI_SR_DATA)"),
]
SAMPLING = {"method": NAME, "weights": "v1", "sampler": "ddim", "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def diffusion_server(tmp_path_factory, preloaded):
    root = tmp_path_factory.mktemp("monailabel_diffusion")
    overlays, studies, model = root / "overlays", root / "studies", root / "model"
    for folder in (overlays, studies, model):
        folder.mkdir()
    (overlays / f"{NAME}.json").write_text(json.dumps(OVERLAY))
    item = with_boxes(1)[0]  # a 96-pixel crop: each LR pixel is a sampling run's work for every step
    Image.open(item["label"]).crop((200, 200, 296, 296)).save(studies / "cxr.png")
    Image.open(item["label"]).crop((200, 200, 232, 232)).save(studies / "cxr_small.png")  # for the shipped sr3
    env = {"MONAI_SR_METHODS": str(overlays)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONAI_SR_METHODS", str(overlays))
        torch.manual_seed(0)
        network = methods.get(NAME).network()
        with torch.no_grad():
            for p in network.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        torch.save(network.state_dict(), model / f"{NAME}_cxr_x4_v1.pt")
    with label_server(root, studies, {"method": "srcnn", "model_dir": model}, env=env, preloaded=preloaded) as url:
        yield type("Server", (), {"url": url, "studies": studies, "model": model, "overlays": overlays})


def test_several_samples_and_their_maps(diffusion_server, tmp_path, monkeypatch):
    r = infer(diffusion_server, "cxr", {**SAMPLING, "samples": 2})
    assert r.status_code == 200, r.text
    served = response_image(r, tmp_path, ".png")
    monkeypatch.setenv("MONAI_SR_METHODS", str(diffusion_server.overlays))
    method = methods.get(NAME)
    predictor = method.predictor(diffusion_server.model / f"{NAME}_cxr_x4_v1.pt", sampler="ddim", steps=2, seed=3)
    local = run_inference(
        diffusion_server.studies / "cxr.png",
        predictor,
        tmp_path / "local",
        progress=False,
        request=SRRequest(samples=2),
    )
    assert np.array_equal(served, read_image(local[0]).numpy())
    for k, key in enumerate(("std", "lr_consistency"), start=1):
        r = infer(diffusion_server, "cxr", {**SAMPLING, "samples": 2, "map": key})
        assert r.status_code == 200, r.text
        path = tmp_path / f"served_{key}.nii.gz"
        path.write_bytes(r.content)
        assert np.array_equal(
            sitk.GetArrayFromImage(sitk.ReadImage(path)), sitk.GetArrayFromImage(sitk.ReadImage(local[k]))
        )


@pytest.mark.parametrize(
    "params, message",
    [({"steps": 0}, "steps must be"), ({"steps": -1}, "steps must be"), ({"steps": 21}, "from 1 to 20"),
     ({"steps": "5"}, "steps must be"), ({"steps": 2.5}, "steps must be"), ({"sampler": "euler"}, "unknown sampler"),
     ({"sampler": ["ddim"]}, "unknown sampler"),
     ({"map": ["std"], "samples": 2}, "\"map\" must be one of std, lr_consistency or null, got ['std']"),
     ({"seed": "a"}, "seed must be"), ({"seed": 1.5}, "seed must be"), ({"samples": 0}, "samples must be"),
     ({"samples": 65}, "at most 64"), ({"samples": 2, "map": "foo"}, "got 'foo'"), ({"map": "std"}, "samples of 2"),
     ({"method": "vdsr", "sampler": "ddim", "weights": "shipped"}, "deterministic")],
)  # fmt: skip
def test_bad_sampling_options_are_refused_and_the_server_keeps_serving(diffusion_server, params, message):
    r = infer(diffusion_server, "cxr", {**SAMPLING, **params})
    assert r.status_code in (404, 422) and message in r.json()["detail"], r.text
    assert infer(diffusion_server, "cxr", SAMPLING).status_code == 200


def test_new_sampling_values_do_not_grow_the_server(diffusion_server):
    """Each request may choose its sampler and steps; the shipped sr3 (a 10 MB network) is loaded once, so 16
    values never asked before leave the server's memory where a warm-up left it (a network kept per value would
    add 160 MB; the allocator's own swings here are under 60 MB, hence the highest warm-up reading against the
    lowest of the last four). On a 32-pixel image: what a kept network adds does not depend on the image, and
    96 sampler steps of the shipped sr3 at 128 pixels take seconds, not a minute."""
    port = int(diffusion_server.url.rsplit(":", 1)[1])
    server = psutil.Process(listening_pid(port))
    samplers = ("ddpm", "ddim", "dpmpp", "dpmpp_sde")

    def rss_after(sampler: str, steps: int) -> float:
        r = infer(diffusion_server, "cxr_small", {"method": "sr3", "weights": "shipped", "seed": 0,
                                                  "sampler": sampler, "steps": steps})  # fmt: skip
        assert r.status_code == 200, r.text
        return server.memory_info().rss / 2**20

    warm = max(rss_after(sampler, steps) for steps in (1, 2) for sampler in samplers)
    after = [rss_after(sampler, steps) for steps in range(3, 7) for sampler in samplers]
    assert min(after[-4:]) - warm < 100, f"the server grew from {warm:.0f} MiB to {after} over 16 new values"
