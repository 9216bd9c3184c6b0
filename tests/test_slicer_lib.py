"""The Slicer module's GUI-free library, outside Slicer and for real: volume geometry through SimpleITK and
the project's reader, the local SR process (the real CLI: result, a stochastic method's SR and uncertainty
maps, cancel, failure, bad sampling options, missing dependency), and the MONAI Label client against the real
server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import USER_PYTHON, ct_slice_volume
from test_diffusion import NAME, OVERLAY

from monai_sr_bundle import card, methods
from monai_sr_bundle.data.markups import boxes_to_markups, markups_to_boxes
from monai_sr_bundle.data.readers import read_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "SuperResolution"))
from SuperResolutionLib import (  # noqa: E402
    ClientError,
    MonaiLabelClient,
    RunError,
    SRRun,
    VolumeError,
    Worker,
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


def run(folder: Path, array: np.ndarray, m: np.ndarray, method: str = "srcnn", **kw) -> SRRun:
    (folder / "out").mkdir(parents=True)
    write_volume(array, m, str(folder / "in.nii.gz"))
    kw.setdefault("python", USER_PYTHON)  # the Python the module's settings name: a user's monai-sr install
    return SRRun(str(folder / "in.nii.gz"), str(folder / "out"), method=method, **kw)


def tiny_diffusion(folder: Path) -> tuple[str, str]:
    """test_diffusion's tiny SR3 as an overlay in ``folder`` with random weights saved there (every parameter
    non-zero, so that its draws differ); returns (the folder for $MONAI_SR_METHODS, the weights file)."""
    folder.mkdir()
    (folder / f"{NAME}.json").write_text(json.dumps(OVERLAY))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONAI_SR_METHODS", str(folder))
        network = methods.get(NAME).network()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(network.state_dict(), folder / "w.pt")
    return str(folder), str(folder / "w.pt")


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> str:
    """The tiny SR3 registered for this test and the SR processes it starts (20 training steps); returns
    its weights file."""
    overlays, weights = tiny_diffusion(tmp_path / "tiny")
    monkeypatch.setenv("MONAI_SR_METHODS", overlays)
    return weights


def crop() -> tuple[np.ndarray, np.ndarray]:
    """40 x 40 px of the CT slice: every step of a sampler's every draw runs over each SR pixel."""
    array, m = ct_slice_volume()
    return array[:, :40, :40], m


@pytest.mark.slow
def test_local_run_matches_the_cli_and_divides_spacing(tmp_path, capsys):
    """The worker's output equals the CLI's (run in this process: its process boundary is tested elsewhere), and
    its reply names what ran the network (the module's status line)."""
    from monai_sr_bundle.cli import main

    array, m = ct_slice_volume()
    job = run(tmp_path, array, m, runtime="torch")
    result = job.start().wait(300)
    assert list(result) == ["sr"] and (job.runtime, job.precision) == ("torch", "fp32")
    sr, m_sr = read_volume(result["sr"])
    assert sr.shape == (1, 512, 512)
    assert np.allclose(np.linalg.norm(m_sr[:3, :3], axis=0), np.linalg.norm(m[:3, :3], axis=0) / [4, 4, 1])
    assert np.allclose(m_sr[:3, :3] / np.linalg.norm(m_sr[:3, :3], axis=0), np.sign(m[:3, :3]))  # direction kept
    # same physical extent: the first SR voxel centre sits (1 - 1/4) / 2 of an LR voxel before the LR one
    assert np.allclose(m_sr[:3, 3], m[:3, 3] + m[:3, :2] @ [-3 / 8, -3 / 8], atol=1e-4)
    assert (
        main(["sr", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "cli"), "-m", "srcnn", "--slice-by-slice"]) == 0
    )
    assert "wrote 1 image" in capsys.readouterr().out
    assert np.array_equal(read_volume(str(next((tmp_path / "cli").iterdir())))[0], sr)


@pytest.mark.slow
def test_stochastic_run_returns_the_sr_and_its_maps_and_a_seed_repeats_it(tiny, tmp_path):
    options = {"weights": tiny, "sampler": "ddim", "steps": 2, "seed": 7, "samples": 2}
    jobs = [run(tmp_path / name, *crop(), method=NAME, **options).start() for name in ("a", "b")]  # side by side
    first, second = (job.wait(300) for job in jobs)
    assert {k: Path(v).name for k, v in first.items()} == {
        "sr": "in_sr.nii.gz", "std": "in_sr_std.nii.gz", "lr_consistency": "in_sr_lr_consistency.nii.gz"
    }  # fmt: skip
    assert all(Path(first[k]).read_bytes() == Path(second[k]).read_bytes() for k in first)
    sr, m_sr = read_volume(first["sr"])
    assert sr.shape == (1, 160, 160)
    for key in ("std", "lr_consistency"):
        values, m_map = read_volume(first[key])
        assert values.shape == sr.shape and np.array_equal(m_map, m_sr) and values.min() >= 0
    assert read_volume(first["std"])[0].max() > 0  # the two draws differ


@pytest.mark.slow
def test_bad_sampling_options_are_the_cli_sentence_and_write_nothing(tiny, tmp_path):
    cases = [
        (NAME, {"steps": 0}, "steps must be a whole number >= 1, got 0."),
        (NAME, {"steps": 21}, "from 1 to 20 (the training steps), got 21."),
        (NAME, {"sampler": "euler"}, "unknown sampler 'euler'; use one of ddpm, ddim, dpmpp, dpmpp_sde."),
        (NAME, {"samples": 0}, "samples must be a whole number >= 1, got 0."),
        (NAME, {"samples": 65}, "samples must be at most 64"),
        ("bicubic", {"sampler": "ddim", "steps": 2, "seed": 1, "samples": 2}, "is deterministic and has no sampler"),
    ]
    worker = Worker(USER_PYTHON)  # one for all: a refused request leaves it running
    for i, (method, options, message) in enumerate(cases):
        job = run(tmp_path / str(i), *crop(), method=method, weights=tiny if method == NAME else None, **options)
        with pytest.raises(RunError, match=re.escape(message)) as refused:
            SRRun(**job_args(job), worker=worker).start().wait(300)
        assert "\n" not in str(refused.value) and str(refused.value).endswith("."), options  # one sentence
        assert list(job.output_dir.iterdir()) == []
    assert worker.alive()
    worker.stop()


def job_args(job: SRRun) -> dict:
    """The arguments of ``job`` for another SRRun of the same request."""
    request = dict(job.request)
    return {"input_path": request.pop("input"), "output_dir": request.pop("output"), **request}


@pytest.mark.slow
def test_the_worker_keeps_the_method_loaded_and_outlives_bad_input(tmp_path):
    """The Slicer session's warm path: the second request of a method does not load it again, a bad input
    is its sentence and the worker stays, another method is loaded in its place, stop() ends the process."""
    worker = Worker(USER_PYTHON)
    first = run(tmp_path / "a", *crop())
    worker.submit(first.request)
    assert worker.reply(300)["loaded"] is True
    pid = worker.process.pid
    worker.submit(first.request)
    reply = worker.reply(300)
    assert reply["loaded"] is False and reply["network_started"] and len(reply["written"]) == 1
    array, m = ct_slice_volume()
    small = run(tmp_path / "b", array[:, :20, :20], m)
    with pytest.raises(RunError, match="smaller than 32 px"):
        SRRun(**job_args(small), worker=worker).start().wait(120)
    third = run(tmp_path / "c", *crop(), method="bicubic")
    assert list(SRRun(**job_args(third), worker=worker).start().wait(120)) == ["sr"]
    assert worker.process.pid == pid
    process = worker.process
    worker.stop()
    assert process.returncode == 0 and not worker.alive()


@pytest.mark.slow
def test_a_worker_killed_mid_run_fails_that_run_and_the_next_starts_another(tmp_path):
    worker = Worker(USER_PYTHON)
    array, m = ct_slice_volume()
    job = SRRun(**job_args(run(tmp_path / "a", np.repeat(array, 6, axis=0), m, method="vdsr")), worker=worker)
    job.start()
    pid = worker.process.pid
    time.sleep(1.0)
    os.killpg(pid, signal.SIGKILL)  # as the system's out-of-memory killer would
    with pytest.raises(RunError, match=r"the SR process ended \(exit code -9\)"):
        job.wait(60)
    assert list(job.output_dir.iterdir()) == []
    again = SRRun(**job_args(run(tmp_path / "b", *crop())), worker=worker).start()
    assert list(again.wait(300)) == ["sr"] and worker.process.pid != pid
    worker.stop()


@pytest.mark.slow
def test_the_worker_answers_every_hostile_request_line_and_ends_with_its_input(tmp_path):
    lines = [
        "not json",
        "[1, 2]",
        json.dumps({"input": "x.png", "output": str(tmp_path), "shell": "rm -rf /"}),
        json.dumps({"output": str(tmp_path)}),
        json.dumps({"input": str(tmp_path / "missing.png"), "output": str(tmp_path), "method": "no_such"}),
        json.dumps({"input": str(tmp_path / "missing.png"), "output": str(tmp_path), "method": "bicubic", "steps": 2}),
        json.dumps({"input": str(tmp_path / "missing.png"), "output": str(tmp_path), "scale": "4; rm -rf /"}),
        json.dumps({"input": str(tmp_path / "missing.png"), "output": str(tmp_path), "modality": ["cxr"]}),
        json.dumps({"input": str(tmp_path / "missing.png"), "output": str(tmp_path), "weights": 5}),
        json.dumps({"input": "in\u0000.png", "output": str(tmp_path), "method": "bicubic"}),
        # issue 56, finding 7: each of these ended the worker
        '{"input": "x.png", "output": "%s", "scale": NaN}' % tmp_path,
        '{"input": "x.png", "output": "%s", "scale": 1e999}' % tmp_path,
        "[" * 50_000,
        json.dumps({"input": str(tmp_path / "missing.png"), "output": str(tmp_path), "weights": "/etc/passwd"}),
        json.dumps({"input": "a" * 2_000_000, "output": str(tmp_path)}),
        # issue 71, findings 6 and 13: an integer too large for a float ended the worker; "" named the folder "."
        '{"input": "x.png", "output": "%s", "method": "lrunet", "noise_level": %s}' % (tmp_path, "9" * 401),
        '{"input": "x.png", "output": "%s", "scale": %s}' % (tmp_path, "9" * 401),
        json.dumps({"input": str(tmp_path / "missing.png"), "output": str(tmp_path), "weights": ""}),
    ]
    done = subprocess.run(
        [USER_PYTHON, "-m", "monai_sr_bundle.cli", "worker"],
        input="\n".join(lines) + "\n\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and [sorted(r) for r in replies] == [["error"]] * len(lines)
    messages = [r["error"] for r in replies]
    assert "one JSON object per line" in messages[0] and "must be a JSON object, not a JSON array" in messages[1]
    assert "has unknown key(s) shell" in messages[2] and 'needs "input"' in messages[3]
    assert "unknown method 'no_such'" in messages[4] and "is deterministic and has no sampler" in messages[5]
    assert "scale must be a positive whole number, got '4; rm -rf /'" in messages[6]
    assert '"modality" must be a single value' in messages[7] and '"weights" must be a path' in messages[8]
    assert "a path cannot contain a NUL character" in messages[9]
    assert "NaN is not a finite number" in messages[10] and "1e999 is not a finite number" in messages[11]
    assert "one JSON object per line" in messages[12] and "weights do not fit this network" in messages[13]
    assert "a request line is at most" in messages[14] and max(len(m) for m in messages) < 1000
    assert "noise level must be 'auto' or a number" in messages[15] and "scale must be at most 8" in messages[16]
    assert messages[17] == "a request: \"weights\" must be a path or null, got ''."
    assert list(tmp_path.iterdir()) == []


def test_local_run_can_be_cancelled(tmp_path):
    array, m = ct_slice_volume()
    job = run(tmp_path, np.repeat(array, 6, axis=0), m, method="vdsr").start()
    time.sleep(1.0)
    assert job.running()
    job.cancel()
    with pytest.raises(RunError, match="cancelled"):
        job.wait()
    assert not job.running() and list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_failing_run_reports_the_cli_sentence(tmp_path):
    array, m = ct_slice_volume()
    job = run(tmp_path, array[:, :20, :20], m)  # 20 px < 8 x scale
    with pytest.raises(RunError, match="smaller than 32 px"):
        job.start().wait(120)


def test_a_process_that_ended_before_its_request_was_written_is_reported_not_a_broken_pipe(tmp_path):
    """The race behind an intermittent CI failure: a worker that dies at start (a missing module) may end before
    its request reaches it; the request then sits in the pipe's buffer, and closing the pipe raised
    BrokenPipeError instead of the worker's own sentence. Made certain here: the request is buffered after the
    process has ended."""
    worker = Worker(USER_PYTHON)
    worker.cmd = [sys.executable, "-c", "import sys; sys.exit('No module named torch')"]
    worker.log = open(tmp_path / "log", "w+b")
    worker.process = subprocess.Popen(worker.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=worker.log)
    worker.process.wait(30)
    worker.process.stdin.write(b"{}\n" * 10)  # buffered: not yet sent
    assert re.search("exit code 1.*No module named torch", worker.failure())
    assert worker.process is None
    worker.log.close()


def test_missing_dependency_is_reported(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run(
        [str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", "--without-pip", str(bare)], check=True
    )
    python = str(bare / "bin" / "python")
    assert missing_dependencies(python) == ["torch", "monai", "monai_sr_bundle"]
    assert missing_dependencies(USER_PYTHON) == []
    array, m = ct_slice_volume()
    with pytest.raises(RunError, match="No module named"):
        run(tmp_path, array, m, python=python).start().wait(60)
    with pytest.raises(RunError, match="cannot start"):
        SRRun("x.nii.gz", str(tmp_path), "srcnn", python=str(tmp_path / "no_python")).start()
    with pytest.raises(RunError, match="No module named"):
        list_methods(python)


@pytest.mark.slow
def test_list_methods_asks_the_installed_cli():
    found = list_methods(USER_PYTHON)
    assert [m["name"] for m in found] == methods.names()
    assert found == card.describe_all()
    assert [m["name"] for m in found if m["default"]] == [methods.default_name()]


@pytest.fixture(scope="module")
def server(ct_label_server):
    return ct_label_server[0]


@pytest.mark.slow
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
