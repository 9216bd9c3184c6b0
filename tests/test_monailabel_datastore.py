"""The MONAI Label app's datastore state on disk, against real servers on 127.0.0.1: box saves made through
the API while ``import_boxes.py --overwrite`` writes the same index from another process are all kept,
and they, the imported boxes and uploaded images survive a restart and a rebuild of ``datastore_v2.json``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATA, needs_data
from PIL import Image

from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.data.markups import boxes_to_markups
from monai_sr_bundle.data.readers import read_image
from tools.label_server import APP, label_server

requests = pytest.importorskip("requests", reason="requests comes with monailabel (pip install -e '.[test]')")
pytest.importorskip("monailabel", reason="monailabel is a test dependency (pip install -e '.[test]')")

NIH = DATA / "nih_cxr14"
pytestmark = [needs_data(NIH / "images_512"), pytest.mark.server]
SAVES, IMPORTED = 50, 90


def _doc(path: Path, k: int) -> bytes:
    """A one-box markups document for the image at ``path``, different for each ``k``."""
    box = [[10.0 + k, 20.0, 60.0 + k, 90.0]]
    return json.dumps(boxes_to_markups(box, ["Mass"], read_image(path).affine)).encode()


def _boxes(url: str, image_id: str) -> requests.Response:
    return requests.get(f"{url}/datastore/label", params={"label": image_id, "tag": "boxes"}, timeout=30)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Path, list[Path], list[Path], Path]:
    """NIH radiographs: SAVES that annotators save boxes for, IMPORTED that the import command covers (its own
    CSV, in NIH's 1024-px coordinates)."""
    root = tmp_path_factory.mktemp("datastore")
    folder = root / "studies"
    folder.mkdir()
    images = [Path(d["label"]) for d in nih_datalist("train")[: SAVES + IMPORTED]]
    for p in images:
        shutil.copy(p, folder)
    table = root / "boxes.csv"
    with open(table, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["image", "label", "x", "y", "w", "h"])
        for p in images[SAVES:]:
            rows.writerow([p.name, "Nodule", 100, 120, 80, 60])
    return folder, [folder / p.name for p in images[:SAVES]], [folder / p.name for p in images[SAVES:]], table


def test_saves_during_an_import_survive_restart_and_rebuild(studies, tmp_path, preloaded):
    folder, saved, imported, table = studies
    expected = {p.stem: _doc(p, k) for k, p in enumerate(saved)}
    with label_server(tmp_path / "first", folder, {"method": "bicubic"}, preloaded=preloaded) as url:
        upper = (folder / "stored_as.PNG").name  # uploads named in upper case, and an id that looks like a file
        shutil.copy(saved[0], tmp_path / upper)
        put = requests.put(f"{url}/datastore/", files={"file": (upper, (tmp_path / upper).read_bytes())}, timeout=60)
        assert put.status_code == 200 and put.json()["image"] == "stored_as"
        put = requests.put(
            f"{url}/datastore/", params={"image": "id.png"}, files={"file": ("x.png", saved[1].read_bytes())}
        )
        assert put.status_code == 200, put.text
        tiff = requests.put(f"{url}/datastore/", files={"file": ("x.tiff", saved[1].read_bytes())}, timeout=60)
        assert tiff.status_code == 415 and "png" in tiff.text  # a suffix the datastore would not list again

        importer = subprocess.Popen(
            [
                sys.executable,
                str(APP / "import_boxes.py"),
                "--studies",
                str(folder),
                "--csv",
                str(table),
                "--overwrite",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)  # the import is under way (it reads its datastore, then saves image after image)

        def save(item):
            image_id, body = item
            return requests.put(
                f"{url}/datastore/label",
                params={"image": image_id, "tag": "boxes"},
                files={"label": ("roi.json", body)},
                timeout=120,
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(save, expected.items()))
        import_running = importer.poll() is None
        out, err = importer.communicate(timeout=300)
        assert importer.returncode == 0, err
        assert f"images: {IMPORTED}" in out
        assert statuses == [200] * SAVES
        assert import_running, "the import ended before the saves: raise IMPORTED so that they overlap"
        for image_id, body in expected.items():
            got = _boxes(url, image_id)
            assert got.status_code == 200 and got.content == body, image_id

    def all_there(url: str) -> None:
        listed = set(requests.get(f"{url}/datastore/?output=all", timeout=60).json()["objects"])
        assert {"stored_as", "id.png"} <= listed
        for image_id, body in expected.items():
            got = _boxes(url, image_id)
            assert got.status_code == 200 and got.content == body, image_id
        for p in imported:
            assert _boxes(url, p.stem).status_code == 200, p.stem

    with label_server(tmp_path / "restarted", folder, {"method": "bicubic"}, preloaded=preloaded) as url:
        all_there(url)
    (folder / "datastore_v2.json").unlink()  # lost, or deleted by hand: the index is rebuilt from the files
    with label_server(tmp_path / "rebuilt", folder, {"method": "bicubic"}, preloaded=preloaded) as url:
        all_there(url)


CR_DICOM = DATA / "cxr_dicom" / "pydicom-data_RG1_J2KI_CR_chest.dcm"  # 1955x1841: not a multiple of 4


@needs_data(CR_DICOM.parent)
def test_images_training_cannot_use_are_left_out_not_failing_every_train(tmp_path, preloaded):
    """A CT volume and a real CR whose size is not a multiple of the scale are accepted as uploads (infer
    serves them); a 7x7 radiograph is refused as infer refuses it, and when put in the studies folder by
    hand, training leaves it out by name, as it leaves out the volume and a truncated file; it crops the CR,
    and the train request succeeds."""
    folder = tmp_path / "studies"
    folder.mkdir()
    for d in nih_datalist("train")[:2]:
        shutil.copy(d["label"], folder)
    volume = tmp_path / "volume.nii.gz"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).random((6, 64, 64)).astype(np.float32)), str(volume)
    )
    tiny = tmp_path / "tiny.png"
    shutil.copy(DATA / "nih_cxr14" / "images_512" / Path(nih_datalist("train")[2]["label"]).name, tiny)
    Image.open(tiny).resize((7, 7)).save(tiny)
    with label_server(
        tmp_path / "server", folder, {"method": "srcnn", "model_dir": tmp_path / "model"}, preloaded=preloaded
    ) as url:
        for path, image_id, status in ((volume, "volume", 200), (tiny, "tiny", 422), (CR_DICOM, "cr", 200)):
            put = requests.put(
                f"{url}/datastore/", params={"image": image_id}, files={"file": (path.name, path.read_bytes())}
            )
            assert put.status_code == status, put.text
        shutil.copy(tiny, folder)
        (folder / "broken.png").write_bytes(tiny.read_bytes()[:60])  # by hand too, and cut short
        r = requests.post(f"{url}/train/super_resolution", json={"max_epochs": 1}, timeout=60)
        assert r.status_code == 200, r.text
        for _ in range(480):
            status = requests.get(f"{url}/train/", timeout=30).json()
            if status.get("status") in ("DONE", "ERROR"):
                break
            time.sleep(0.5)
        details = "\n".join(status.get("details", []))
        assert status.get("status") == "DONE", details
    log = (tmp_path / "server" / "server.log").read_text()
    for left_out in ("volume", "tiny", "broken"):
        assert f"training leaves out image {left_out}" in log
    assert "training leaves out image cr" not in log
    datalist = json.loads(next((tmp_path / "model" / "runs").glob("*/datalist.json")).read_text())
    used = {d["id"] for d in datalist["training"] + datalist["validation"]}
    assert "cr" in used and not {"volume", "tiny", "broken"} & used
    assert (tmp_path / "model" / "srcnn_cxr_x4_v1.pt").is_file()
