"""The MONAI Label app against a real server on 127.0.0.1 (started from a copy of the app in a temporary
folder, stopped by its process id): SR equal to in-process inference, box labels saved and read back
losslessly, a real one-epoch train task, the next-sample strategy, the boxes.csv import command, and hostile
requests answered with a 4xx while the server keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data

from monai_sr_bundle import card, methods
from monai_sr_bundle.batch import default_input, run_inference
from monai_sr_bundle.cli import main
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.data.markups import boxes_to_markups, markups_to_boxes
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.worker import Worker
from tools.label_server import APP, label_server

requests = pytest.importorskip("requests", reason="requests comes with monailabel (pip install -e '.[test]')")
pytest.importorskip("monailabel", reason="monailabel is a test dependency (pip install -e '.[test]')")

NIH = DATA / "nih_cxr14"
pytestmark = [needs_data(NIH / "images_512"), pytest.mark.server]
MAX_UPLOAD_MB = 2


def with_boxes(n: int) -> list[dict]:
    """The first ``n`` NIH test images that have official boxes."""
    return [d for d in nih_datalist("test") if d["boxes"]][:n]


@pytest.fixture(scope="module")
def server(tmp_path_factory, preloaded):
    root = tmp_path_factory.mktemp("monailabel")
    studies = root / "studies"
    studies.mkdir()
    items = with_boxes(3)
    for d in items:
        shutil.copy(d["label"], studies)
    shutil.copy(default_input(), studies / "ct_small.dcm")
    conf = {"method": "srcnn", "max_upload_mb": MAX_UPLOAD_MB, "model_dir": root / "model"}
    with label_server(root, studies, conf, preloaded=preloaded) as url:
        yield SimpleNamespace(url=url, studies=studies, model=root / "model", items=items, root=root)


def infer(server, image: str, params: dict | None = None, **files) -> requests.Response:
    data = {"params": json.dumps(params or {})}
    return requests.post(
        f"{server.url}/infer/super_resolution",
        params={"image": image, "output": "image"},
        data=data,
        files=files or None,
        timeout=300,
    )


def in_process(path: str | Path, tmp_path: Path, method: str = "srcnn") -> np.ndarray:
    sr_method = methods.get(method, 4)  # the server's tiles: the method's own inferer at 256 px
    fmt = "nifti" if str(path).endswith(".dcm") else None  # the server answers a DICOM input with NIfTI
    out_dir = tmp_path / "local"
    (out,) = run_inference(path, sr_method.predictor(tile_size=256), out_dir, progress=False, output_format=fmt)
    return read_image(out).numpy()


def response_image(response, tmp_path: Path, suffix: str) -> np.ndarray:
    path = tmp_path / f"server{suffix}"
    path.write_bytes(response.content)
    return read_image(path).numpy()


def test_info_lists_the_task_and_strategy(server):
    info = requests.get(f"{server.url}/info/").json()
    assert info["models"]["super_resolution"]["type"] == "others"
    assert info["models"]["super_resolution"]["config"]["method"] == "srcnn"
    assert "super_resolution" in info["trainers"] and "boxes_first" in info["strategies"]
    assert [m["name"] for m in info["methods"]] == methods.names()
    assert info["methods"] == card.describe_all(4, "cxr")


@pytest.mark.parametrize("option", [{"seed": 1}, {"steps": 10}])
def test_sampling_options_for_a_deterministic_method_are_refused(server, option):
    r = infer(server, "ct_small", {"method": "vdsr", **option})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "'vdsr'" in detail and next(iter(option)) in detail


@pytest.mark.parametrize(
    "params, message",
    [
        ({"method": "vdsr", "noise_level": 3}, "method 'vdsr' is not told how noisy its input is"),
        ({"method": "lrunet", "noise_level": "1e999"}, "noise level must be 'auto' or a number"),
    ],
)
def test_a_noise_level_the_method_cannot_take_is_refused(server, params, message):
    """A request's ``noise_level`` is for degradation-aware methods only, and a number of grey levels."""
    r = infer(server, "ct_small", params)
    assert r.status_code == 422 and message in r.json()["detail"]


@pytest.mark.parametrize(
    "method, option",
    [("lrunet", {"noise_level": "loud"}), ("vdsr", {"noise_level": 3}), ("vdsr", {"steps": 2}),
     ("sr3", {"sampler": "euler"}), ("sr3", {"samples": 65})],
)  # fmt: skip
def test_a_bad_option_is_one_sentence_on_every_surface(server, tmp_path, capsys, method, option):
    """One validation path (:meth:`~monai_sr_bundle.inference.Predictor.check`): the same bad noise level or
    sampling option sent through MONAI Label, the Slicer worker (in this process; its process boundary is
    test_slicer_lib's) and the CLI is refused with the same sentence, before any weights load."""
    r = infer(server, "ct_small", {"method": method, **option})
    assert r.status_code == 422
    sentence = r.json()["detail"]
    line = json.dumps({"input": str(default_input()), "output": str(tmp_path / "worker"), "method": method, **option})
    with pytest.raises(InputError) as refused:
        Worker().handle(line)
    assert str(refused.value) == sentence
    (key, value), out = next(iter(option.items())), tmp_path / "cli"
    flag = f"--{key.replace('_', '-')}"
    assert main(["sr", str(default_input()), "-o", str(out), "-m", method, flag, str(value)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {sentence}" and not out.exists()


def test_sr_of_a_radiograph_equals_in_process_inference(server, tmp_path):
    name = Path(server.items[0]["label"]).stem
    r = infer(server, name)
    assert r.status_code == 200, r.text
    served = response_image(r, tmp_path, ".png")
    assert served.shape == (1, 2048, 2048)
    np.testing.assert_array_equal(served, in_process(server.studies / f"{name}.png", tmp_path))


def test_sr_of_a_ct_dicom_equals_in_process_and_divides_spacing(server, tmp_path):
    r = infer(server, "ct_small")
    assert r.status_code == 200, r.text
    path = tmp_path / "server.nii.gz"
    path.write_bytes(r.content)
    served, source = read_image(path), read_image(default_input())
    np.testing.assert_array_equal(served.numpy(), in_process(default_input(), tmp_path))
    spacing = lambda img: img.affine[:2, :2].norm(dim=0)  # noqa: E731
    assert torch.allclose(spacing(served), spacing(source) / 4, atol=1e-6)


def test_uploaded_file_is_super_resolved_like_the_stored_one(server, tmp_path):
    path = server.studies / "ct_small.dcm"
    r = infer(server, "", file=("upload.dcm", path.read_bytes()))
    assert r.status_code == 200, r.text
    assert np.array_equal(
        response_image(r, tmp_path, ".nii.gz"), response_image(infer(server, "ct_small"), tmp_path, "2.nii.gz")
    )


def test_request_params_override_method_and_scale(server, tmp_path):
    r = infer(server, "ct_small", {"method": "bicubic", "scale": 2})
    assert r.status_code == 200, r.text
    assert response_image(r, tmp_path, ".nii.gz").shape[1:3] == (256, 256)
    assert infer(server, "ct_small", {"scale": "x"}).status_code == 422
    assert infer(server, "ct_small", {"method": "nope"}).status_code == 422
    assert infer(server, "ct_small", {"steps": 20}).status_code == 422  # CNN methods have no sampler
    r = infer(server, "ct_small", {"scale": 3})  # no srcnn x3 weights: said plainly, no server path in it
    assert r.status_code == 404 and "srcnn_cxr_x3.pt" in r.text and "/" not in r.json()["detail"].split(":")[0]


def test_eight_concurrent_requests_all_succeed_and_match(server):
    expected = infer(server, "ct_small").content
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: infer(server, "ct_small"), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert all(r.content == expected for r in responses)


def box_doc(item: dict) -> bytes:
    image = read_image(item["label"])
    return json.dumps(boxes_to_markups(item["boxes"], item["findings"], image.affine), indent=1).encode()


def save_boxes(server, item: dict) -> tuple[str, bytes]:
    """Store ``item``'s official boxes as its ``boxes`` label (so a test does not rely on an earlier one)."""
    name, raw = Path(item["label"]).stem, box_doc(item)
    r = requests.put(
        f"{server.url}/datastore/label", params={"image": name, "tag": "boxes"}, files={"label": ("roi.json", raw)}
    )
    assert r.status_code == 200, r.text
    return name, raw


def test_boxes_are_saved_and_read_back_losslessly(server):
    item = server.items[0]
    name, raw = save_boxes(server, item)
    back = requests.get(f"{server.url}/datastore/label", params={"label": name, "tag": "boxes"})
    assert back.status_code == 200 and back.content == raw
    image = read_image(item["label"])
    boxes, findings = markups_to_boxes(json.loads(back.content), image.affine, image.shape[1:3])
    assert findings == item["findings"] and torch.allclose(boxes, torch.tensor(item["boxes"]), atol=1e-4)


def test_next_sample_is_an_image_without_boxes(server):
    annotated, _ = save_boxes(server, server.items[0])
    picks = {requests.post(f"{server.url}/activelearning/boxes_first").json()["id"] for _ in range(12)}
    assert picks and annotated not in picks


def train(server, params: dict) -> dict:
    """Run the train task and wait for it; its final status (with the last log lines in ``details``)."""
    r = requests.post(f"{server.url}/train/super_resolution", json=params)
    assert r.status_code == 200, r.text
    for _ in range(480):
        status = requests.get(f"{server.url}/train/").json()
        if status.get("status") in ("DONE", "ERROR"):
            return status
        time.sleep(0.5)
    pytest.fail("the train task did not finish in 4 minutes")


def test_train_task_publishes_a_new_version_that_infer_can_use(server, tmp_path):
    status = train(server, {"max_epochs": 1, "box_weight": 2.0})
    assert status["status"] == "DONE", "\n".join(status.get("details", []))
    weights = server.model / "srcnn_cxr_x4_v1.pt"
    entry = json.loads((server.model / "weights.json").read_text())[weights.name]
    assert weights.is_file() and entry["box_weight"] == 2.0 and entry["init_weights"].endswith("srcnn_cxr_x4.pt")
    assert "1 boxes" not in entry["data"] and "boxes)" in entry["data"]
    assert torch.load(weights, weights_only=True).keys() == methods.get("srcnn", 4).load().state_dict().keys()
    r = infer(server, "ct_small", {"weights": "v1"})
    assert r.status_code == 200 and r.content != infer(server, "ct_small").content
    assert infer(server, "ct_small", {"weights": "latest"}).content == r.content
    assert infer(server, "ct_small", {"weights": "v9"}).status_code == 404
    for other in ("v\u00b2", "v\u0661", "v" + "9" * 40):  # superscript two, Arabic-Indic one, too many digits
        refused = infer(server, "ct_small", {"weights": other})
        assert refused.status_code == 404 and "'shipped', 'latest' or a trained version (v1)" in refused.text


BAD_TRAIN = [('{"max_epochs": "many"}', 422, "must be numbers"), ('{"max_epochs": 1e400}', 422, "must be numbers"),
             ('{"box_weight": -1}', 422, "0 <= box_weight"), ('{"method": "bicubic"}', 422, "cannot be trained"),
             ('{"init": "v7"}', 404, "'v7' of srcnn")]  # fmt: skip


@pytest.mark.parametrize("body, status, message", BAD_TRAIN)
def test_bad_train_requests_are_refused_at_once_and_start_nothing(server, body, status, message):
    before = sorted(server.model.glob("*.pt")), requests.get(f"{server.url}/train/").json()
    r = requests.post(f"{server.url}/train/super_resolution", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and message in r.json()["detail"], r.text
    assert (sorted(server.model.glob("*.pt")), requests.get(f"{server.url}/train/").json()) == before


@pytest.mark.parametrize(
    "image, status", [("../../etc/passwd", 422), ("/etc/passwd", 422), ("no_such_image", 404), (".hidden", 422)]
)
def test_hostile_image_ids_are_refused(server, image, status):
    r = infer(server, image)
    assert r.status_code == status and image in r.json()["detail"]


def upload(server, image_id: str, name: str, body: bytes) -> requests.Response:
    return requests.put(f"{server.url}/datastore/", params={"image": image_id}, files={"file": (name, body)})


def test_bad_uploads_are_refused_and_nothing_is_stored(server):
    before = sorted(p.name for p in server.studies.iterdir())
    assert upload(server, "notes", "notes.png", b"these are not pixels").status_code == 415
    big = upload(server, "big", "big.png", os.urandom(int((MAX_UPLOAD_MB + 1) * 2**20)))
    assert big.status_code == 413 and "at most 2.062 MB" in big.text
    assert upload(server, "../escape", "x.png", Path(server.items[1]["label"]).read_bytes()).status_code == 422
    stored = Path(server.items[1]["label"]).stem  # an existing id is never overwritten
    assert upload(server, stored, "x.png", Path(server.items[2]["label"]).read_bytes()).status_code == 409
    assert sorted(p.name for p in server.studies.iterdir()) == before
    assert not (server.root.parent / "escape.png").exists()


@pytest.mark.parametrize(
    "body, tag, status, message",
    [
        (b"{not json", "boxes", 422, "not JSON"),
        (
            b'{"markups": [{"type": "ROI", "name": "Mass", "center": [10, 10, 0], "size": [-4, 4, 1]}]}',
            "boxes",
            422,
            "negative",
        ),
        (
            b'{"markups": [{"type": "ROI", "name": "Mass", "center": [5000, 10, 0], "size": [4, 4, 1]}]}',
            "boxes",
            422,
            "outside",
        ),
        (
            b'{"markups": [{"type": "ROI", "name": "Mass", "center": [10, 10, 5000], "size": [4, 4, 1]}]}',
            "boxes",
            422,
            "off the image's plane",
        ),
        (b'{"markups": []}', "../../boxes", 422, "not a plain name"),
        (b'{"markups": []}', "final", 422, "only abnormality boxes"),
        (b" " * (2 << 20), "boxes", 413, "at most"),
    ],
)
def test_bad_box_labels_are_refused_and_nothing_is_stored(server, body, tag, status, message):
    name = Path(server.items[2]["label"]).stem
    r = requests.put(
        f"{server.url}/datastore/label", params={"image": name, "tag": tag}, files={"label": ("roi.json", body)}
    )
    assert r.status_code == status and message in r.text
    assert requests.get(f"{server.url}/datastore/label", params={"label": name, "tag": "boxes"}).status_code == 404


def test_boxes_for_an_unknown_image_are_refused(server):
    r = requests.put(
        f"{server.url}/datastore/label",
        params={"image": "ghost", "tag": "boxes"},
        files={"label": ("r.json", b'{"markups": []}')},
    )
    assert r.status_code == 404


def test_label_info_cannot_rewrite_what_the_label_says(server):
    """``PUT /datastore/label/info`` (MONAI Label's) takes notes, not findings: those come from the boxes."""
    name, _ = save_boxes(server, server.items[0])

    def put_info(image_id: str, info) -> requests.Response:
        url = f"{server.url}/datastore/label/info"
        return requests.put(url, params={"label": image_id, "tag": "boxes"}, data={"info": json.dumps(info)})

    def findings() -> list:
        got = requests.get(f"{server.url}/datastore/label/info", params={"label": name, "tag": "boxes"})
        return got.json()["findings"]

    before = findings()
    for info, status in (({"findings": ["Fake"]}, 422), ({"name": "x.json"}, 422)):
        r = put_info(name, info)
        assert r.status_code == status and "detail" in r.json(), r.text
    assert put_info("ghost", {"note": "x"}).status_code == 404
    assert put_info(name, {"note": "checked twice"}).status_code == 200
    assert findings() == before == server.items[0]["findings"]


def test_a_server_with_bf16_and_compile_serves_what_fp32_serves_to_a_grey_level(tmp_path, preloaded):
    """``--conf precision bf16 --conf compile true``: the SR of a radiograph (the network compiled in the
    server's worker thread; a 128 px image, one tile, one compilation) within 2 grey levels of fp32 in
    process, nearly all pixels equal."""
    from PIL import Image

    studies = tmp_path / "studies"
    studies.mkdir()
    Image.open(with_boxes(1)[0]["label"]).resize((128, 128)).save(studies / "a.png")  # one tile
    conf = {"method": "srcnn", "precision": "bf16", "compile": "true", "model_dir": tmp_path / "model"}
    with label_server(tmp_path, studies, conf, preloaded=preloaded) as url:
        r = requests.post(f"{url}/infer/super_resolution", params={"image": "a", "output": "image"}, timeout=600)
    assert r.status_code == 200, r.text
    served, local = response_image(r, tmp_path, ".png"), in_process(studies / "a.png", tmp_path)
    difference = np.abs(served.astype(int) - local.astype(int))
    assert difference.max() <= 2 and (difference == 0).mean() > 0.9, (difference.max(), (difference == 0).mean())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("precision", "fp16", "--conf precision fp16 runs on a GPU only, and the device is cpu"),
        ("precision", "int8", "--conf unknown precision 'int8'"),
        ("device", "cuda:3", "--conf device 'cuda:3': this machine has 0 GPU(s)."),
        ("device", "tpu", "--conf device 'tpu' must be auto, cpu, cuda or cuda:N."),
        ("compile", "maybe", "--conf compile must be true or false, not 'maybe'."),
        ("noise_level", "loud", "--conf noise_level must be 'auto' or a number of grey levels"),
        ("noise_level", "-1", "--conf noise_level must be 'auto' or a number of grey levels"),
        ("tile_size", "big", "--conf scale and max_output_mp must be whole numbers, tile_size one or auto."),
    ],
)
def test_bad_device_precision_and_compile_settings_stop_the_app_in_one_sentence(monkeypatch, key, value, message):
    monkeypatch.syspath_prepend(str(APP))
    from lib.configs.super_resolution import SuperResolution

    config = SuperResolution()
    if key == "device" and torch.cuda.is_available():
        pytest.skip("the GPU count differs on a GPU machine")
    with pytest.raises(ValueError) as e:
        config.init("super_resolution", "model", {"method": "srcnn", key: value}, None)
    assert str(e.value).startswith(message)
    config.init("super_resolution", "model", {"method": "srcnn", "device": "auto"}, None)
    assert config.settings["device"] == "cpu" and config.settings["compile"] is False


def test_a_failed_train_says_its_root_cause(monkeypatch):
    """The bundle wraps a failure in 'Failed to evaluate ConfigExpression ...'; the train task's error ends
    in the innermost cause."""
    monkeypatch.syspath_prepend(str(APP))
    from lib.trainers.super_resolution import root_cause

    try:
        try:
            raise FileNotFoundError("x.png: no such file\nthe second line says it")
        except FileNotFoundError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@trainer.run()") from inner
    except RuntimeError as e:
        assert root_cause(e) == "FileNotFoundError: the second line says it"


def test_replies_are_scrubbed_of_private_folders_but_not_of_the_root(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    from lib.gateway import Gateway

    gateway = Gateway(None, None, (), 1, {"/srv/studies": "<studies>", "/srv/studies/x/tmp": "<tmp>", "/": "<root>"})
    body = b'{"path": "/srv/studies/a.png", "tmp": "/srv/studies/x/tmp/tmpab.png", "type": "image/png"}'
    assert gateway.scrub(body) == b'{"path": "<studies>/a.png", "tmp": "<tmp>/tmpab.png", "type": "image/png"}'


def test_server_still_serves_after_hostile_requests(server):
    assert requests.get(f"{server.url}/info/").status_code == 200
    assert infer(server, "ct_small").status_code == 200


@pytest.fixture
def run_import(monkeypatch, capsys):
    """``import_boxes.py`` run in this process with the app folder first on ``sys.path``, as Python puts it for
    the script: its ``main`` is the whole command, and a process per run added only seconds of imports."""
    monkeypatch.syspath_prepend(str(APP))
    import import_boxes

    def run(*args: str) -> SimpleNamespace:
        code = import_boxes.main(list(args))
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run


def test_import_boxes_csv_matches_the_datalist(tmp_path, run_import):
    studies = tmp_path / "studies"
    studies.mkdir()
    items = with_boxes(3)
    for d in items:
        shutil.copy(d["label"], studies)
    done = run_import("--studies", str(studies), "--csv", str(NIH / "boxes.csv"))
    assert done.returncode == 0, done.stderr
    assert f"images: {len(items)}" in done.stdout
    for d in items:
        image = read_image(d["label"])
        doc = json.loads((studies / "labels" / "boxes" / f"{Path(d['label']).stem}.json").read_text())
        boxes, findings = markups_to_boxes(doc, image.affine, image.shape[1:3])
        assert findings == d["findings"] and torch.allclose(boxes, torch.tensor(d["boxes"]), atol=1e-4)
    again = run_import("--studies", str(studies), "--csv", str(NIH / "boxes.csv"))
    assert f"skipped_existing: {len(items)}" in again.stdout  # saved boxes are not replaced unless asked


def test_import_boxes_refuses_bad_csv(tmp_path, run_import):
    (tmp_path / "studies").mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label,x,y\n00000001_000.png,Mass,1,2\n")
    done = run_import("--studies", str(tmp_path / "studies"), "--csv", str(bad))
    assert done.returncode == 2 and "missing column(s) w, h" in done.stderr
    bad.write_text("image,label,x,y,w,h\n00000001_000.png,Mass,1,two,3,4\n")
    done = run_import("--studies", str(tmp_path / "studies"), "--csv", str(bad))
    assert done.returncode == 2 and "line 2" in done.stderr
    assert run_import("--studies", str(tmp_path / "none"), "--csv", str(bad)).returncode == 2
