"""The Slicer module's GUI-free library, outside Slicer and for real: volume geometry through SimpleITK and
the project's reader, the local SR process (the real CLI: result, cancel, failure, missing dependency), and
the MONAI Label client against the real server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ct_slice_volume

from monai_sr_bundle import methods
from monai_sr_bundle.data.markups import boxes_to_markups, markups_to_boxes
from monai_sr_bundle.data.readers import read_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "SuperResolution"))
from SuperResolutionLib import (  # noqa: E402
    ClientError,
    MonaiLabelClient,
    RunError,
    SRRun,
    VolumeError,
    check_volume,
    list_methods,
    missing_dependencies,
    read_volume,
    write_volume,
)


def oblique_ijk_to_ras() -> np.ndarray:
    angle = 0.4
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([-1.0, 1.0, 1.0]) @ np.diag([0.6, 0.35, 2.0])
    m[:3, 3] = [15.0, -120.0, 44.5]
    return m


def test_geometry_round_trip_through_simpleitk_and_the_reader(tmp_path):
    array, m = np.random.default_rng(0).integers(0, 4000, (1, 60, 80)).astype(np.int16), oblique_ijk_to_ras()
    write_volume(array, m, str(tmp_path / "v.nii.gz"))
    image = sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    lps = np.diag([-1.0, -1.0, 1.0]) @ m[:3, :3]
    assert np.allclose(image.GetSpacing(), [0.6, 0.35, 2.0])
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), lps / np.linalg.norm(lps, axis=0), atol=1e-6)
    assert np.allclose(image.GetOrigin(), [-15.0, 120.0, 44.5])
    back, m2 = read_volume(str(tmp_path / "v.nii.gz"))
    assert np.array_equal(back, array) and np.allclose(m2, m, atol=1e-6)
    # the project's reader sees the same voxel-to-LPS map, axes (I, J, K)
    assert np.allclose(
        read_image(tmp_path / "v.nii.gz").affine.numpy()[:3],
        np.vstack([lps.T @ np.eye(3), [-15.0, 120.0, 44.5]]).T,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "array, message",
    [(None, "no image data"), (np.zeros((2, 3, 4, 5)), "4D"), (np.zeros((1, 0, 5)), "no pixels"),
     (np.full((1, 8, 8), np.nan), "NaN"), (np.ones((1, 8, 8)), "constant")],
)  # fmt: skip
def test_bad_volumes_are_refused(array, message):
    with pytest.raises(VolumeError, match=message):
        check_volume(array)


def run(tmp_path: Path, array: np.ndarray, m: np.ndarray, method: str = "srcnn", **kw) -> SRRun:
    write_volume(array, m, str(tmp_path / "in.nii.gz"))
    (tmp_path / "out").mkdir()
    return SRRun(str(tmp_path / "in.nii.gz"), str(tmp_path / "out"), method=method, **kw)


def test_local_run_matches_the_cli_and_divides_spacing(tmp_path):
    array, m = ct_slice_volume()
    result = run(tmp_path, array, m).start().wait(300)
    sr, m_sr = read_volume(result)
    assert sr.shape == (1, 512, 512)
    assert np.allclose(np.linalg.norm(m_sr[:3, :3], axis=0), np.linalg.norm(m[:3, :3], axis=0) / [4, 4, 1])
    assert np.allclose(m_sr[:3, :3] / np.linalg.norm(m_sr[:3, :3], axis=0), np.sign(m[:3, :3]))  # direction kept
    # same physical extent: the first SR voxel centre sits (1 - 1/4) / 2 of an LR voxel before the LR one
    assert np.allclose(m_sr[:3, 3], m[:3, 3] + m[:3, :2] @ [-3 / 8, -3 / 8], atol=1e-4)
    command = [
        sys.executable,
        "-m",
        "monai_sr_bundle.cli",
        "sr",
        str(tmp_path / "in.nii.gz"),
        "-o",
        str(tmp_path / "cli"),
    ]
    cli = subprocess.run([*command, "-m", "srcnn", "--slice-by-slice"], capture_output=True, text=True, check=True)
    assert "wrote 1 image" in cli.stdout
    assert np.array_equal(read_volume(str(next((tmp_path / "cli").iterdir())))[0], sr)


def test_local_run_can_be_cancelled(tmp_path):
    array, m = ct_slice_volume()
    job = run(tmp_path, np.repeat(array, 6, axis=0), m, method="vdsr").start()
    time.sleep(1.0)
    assert job.running()
    job.cancel()
    with pytest.raises(RunError, match="cancelled"):
        job.wait()
    assert not job.running() and list((tmp_path / "out").iterdir()) == []


def test_failing_run_reports_the_cli_sentence(tmp_path):
    array, m = ct_slice_volume()
    job = run(tmp_path, array[:, :20, :20], m)  # 20 px < 8 x scale
    with pytest.raises(RunError, match="smaller than 32 px"):
        job.start().wait(120)


def test_missing_dependency_is_reported(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run(
        [str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", "--without-pip", str(bare)], check=True
    )
    python = str(bare / "bin" / "python")
    assert missing_dependencies(python) == ["torch", "monai", "monai_sr_bundle"]
    assert missing_dependencies() == []
    array, m = ct_slice_volume()
    with pytest.raises(RunError, match="No module named"):
        run(tmp_path, array, m, python=python).start().wait(60)
    with pytest.raises(RunError, match="cannot start"):
        SRRun("x.nii.gz", str(tmp_path), "srcnn", python=str(tmp_path / "no_python")).start()
    with pytest.raises(RunError, match="No module named"):
        list_methods(python)


def test_list_methods_asks_the_installed_cli():
    found = list_methods()
    assert [m["name"] for m in found] == methods.names()
    assert found == methods.describe_all()
    assert [m["name"] for m in found if m["default"]] == [methods.default_name()]


@pytest.fixture(scope="module")
def server(ct_label_server):
    return ct_label_server[0]


def test_client_infers_uploads_and_keeps_boxes(server, tmp_path):
    client = MonaiLabelClient(server)
    assert "super_resolution" in client.info()["models"]
    assert [m["name"] for m in client.methods()] == methods.names()
    (tmp_path / "sr.nii.gz").write_bytes(client.infer("ct_small"))
    assert read_image(tmp_path / "sr.nii.gz").shape[1:3] == (512, 512)
    array, m = ct_slice_volume()
    write_volume(array, m, str(tmp_path / "mine.nii.gz"))
    assert client.upload(str(tmp_path / "mine.nii.gz"), "mine") == "mine"
    image = read_image(tmp_path / "mine.nii.gz")
    doc = boxes_to_markups([[10, 12, 40, 50]], ["Nodule"], image.affine)
    client.save_boxes("mine", doc)
    boxes, findings = markups_to_boxes(client.boxes("mine"), image.affine, image.shape[1:3])
    assert findings == ["Nodule"] and torch.allclose(boxes, torch.tensor([[10.0, 12.0, 40.0, 50.0]]), atol=1e-4)


def test_client_errors_are_messages(server, tmp_path):
    with pytest.raises(ClientError, match=r"refused \(404\): image 'ghost' is not in the datastore"):
        MonaiLabelClient(server).infer("ghost")
    with pytest.raises(ClientError, match=r"refused \(422\).*negative or zero size"):
        MonaiLabelClient(server).save_boxes(
            "ct_small", {"markups": [{"type": "ROI", "name": "x", "center": [0, 0, 0], "size": [-1, 1, 1]}]}
        )
    with pytest.raises(ClientError, match="cannot reach the MONAI Label server"):
        MonaiLabelClient("http://127.0.0.1:9", timeout=5).info()
    with pytest.raises(ClientError, match="not a server address"):
        MonaiLabelClient("ftp:/nowhere")
    assert json.dumps(MonaiLabelClient(server).info())  # still serving
