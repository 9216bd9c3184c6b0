"""Issue 56, finding 1: no process the project starts imports from its working folder or from the temporary
folder, where others may write. Packages named like what those processes import first (the project,
``multiprocessing``, which a spawned child imports before anything else, torch, MONAI, NumPy, MONAI Label)
are planted in the working folder and in ``$TMPDIR``, each writing a marker when imported; then each launcher
runs from that working folder: the Slicer module's dependency check, method listing and worker, the archive
mode's ``--workers`` processes, a federated site's worker and torchrun processes, the zoo export's checks and
MONAI Label's train subprocess."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "SuperResolution"))

#: what the project's processes import first: a package by one of these names in a folder on their
#: ``sys.path`` would run before anything of theirs
PLANTED = ("monai_sr_bundle", "multiprocessing", "torch", "monai", "numpy", "monailabel")


@pytest.fixture
def planted(tmp_path, monkeypatch) -> Path:
    """The working folder and ``$TMPDIR`` (``tmp_path/cwd``, ``tmp_path/tmp``) full of planted packages; returns
    the marker file they write."""
    marker = tmp_path / "planted_code_ran"
    for folder in (tmp_path / "tmp", tmp_path / "cwd"):
        for name in PLANTED:
            (folder / name).mkdir(parents=True)
            (folder / name / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('{name} ran\\n')\n")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "cwd")
    return marker


def cwd_on_sys_path(monkeypatch) -> None:
    """The working folder on this process's ``sys.path`` as a notebook has it (``''``) and as ``monai.bundle
    run`` leaves it after a relative ``configs/...`` path (``.``): what spawned children inherit. The packages
    this process itself imports later are imported first (its own imports are its user's business)."""
    import monai.data  # noqa: F401
    import torch  # noqa: F401

    monkeypatch.setattr(sys, "path", ["", ".", *sys.path])


def slicer(tmp_path: Path, monkeypatch) -> None:
    """The Slicer module's processes: dependency check, method listing, worker."""
    from SuperResolutionLib import Worker, list_methods, missing_dependencies

    monkeypatch.setattr("SuperResolutionLib.runner._PRIVATE", None)
    assert missing_dependencies() == []
    assert [m["name"] for m in list_methods()] == methods.names()
    worker = Worker()
    worker.submit({"output": str(tmp_path)})
    assert 'needs "input"' in worker.reply(120)["error"]
    worker.stop()


def archive(tmp_path: Path, monkeypatch) -> None:
    """``monai-sr sr --workers 2``: its pool's spawned processes."""
    from monai_sr_bundle.cli import main

    inputs = [tmp_path / f"in{i}.png" for i in range(2)]
    for i, path in enumerate(inputs):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 36), np.uint8)).save(path)
    out = tmp_path / "out"
    cwd_on_sys_path(monkeypatch)
    assert main(["sr", *map(str, inputs), "-o", str(out), "-m", "bicubic", "--workers", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["in0_sr.png", "in1_sr.png"]


def _site_worker(tmp_path: Path, monkeypatch, processes: int) -> None:
    """A federated site's relay starting its worker(s) for a site whose datalist is missing: the round fails
    with the site's sentence, from the worker process or from one of the torchrun processes."""
    from monai_sr_bundle.federated.client import SiteWorker, parse_args

    cwd_on_sys_path(monkeypatch)
    site = tmp_path / "site" / "s.json"
    site.parent.mkdir()
    site.write_text(json.dumps({"datalist": "missing.json", "processes": processes}))
    argv = ["--method", "srcnn", "--site_config", str(site), "--threads", "1"]
    worker = SiteWorker("s", parse_args(argv), 1, tmp_path / "runs", argv)
    try:
        with pytest.raises(InputError, match="^site s: "):
            worker.run_round({}, 1)
    finally:
        worker.stop()


def site_worker(tmp_path: Path, monkeypatch) -> None:
    _site_worker(tmp_path, monkeypatch, 1)


def site_torchrun(tmp_path: Path, monkeypatch) -> None:
    _site_worker(tmp_path, monkeypatch, 2)


def zoo_check(tmp_path: Path, monkeypatch) -> None:
    """The zoo export's TorchScript check (MONAI's ``ckpt_export`` of the bundle), which must not import from
    the folder it runs from."""
    from monai_sr_bundle import zoo

    assert not zoo.scriptable(tmp_path / "no_bundle")


def monailabel_train(tmp_path: Path, monkeypatch) -> None:
    """MONAI Label's train subprocess (``python -m monailabel.interfaces.utils.app``), started by a server
    whose working folder is the planted one, for a request that only the subprocess can refuse: the datastore
    holds one image."""
    import requests

    from monai_sr_bundle.batch import default_input
    from tools.label_server import label_server

    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(default_input(), studies / "ct_small.dcm")
    conf = {"method": "srcnn", "model_dir": tmp_path / "model"}
    with label_server(tmp_path / "server", studies, conf, cwd=tmp_path / "cwd") as url:
        r = requests.post(f"{url}/train/super_resolution", json={}, timeout=60)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 300
        while (status := requests.get(f"{url}/train/", timeout=60).json()).get("status") not in ("DONE", "ERROR"):
            assert time.monotonic() < deadline, "the train task did not finish in 5 minutes"
            time.sleep(0.5)
    assert status["status"] == "ERROR" and "it needs at least 2" in "\n".join(status["details"])


@pytest.mark.parametrize(
    "launch",
    [
        pytest.param(slicer, marks=pytest.mark.slow, id="slicer"),
        pytest.param(archive, marks=pytest.mark.slow, id="archive-workers"),
        pytest.param(site_worker, marks=pytest.mark.slow, id="federated-site-worker"),
        pytest.param(site_torchrun, marks=pytest.mark.slow, id="federated-torchrun"),
        pytest.param(zoo_check, marks=pytest.mark.slow, id="zoo-check"),
        pytest.param(monailabel_train, marks=[pytest.mark.slow, pytest.mark.server], id="monailabel-train"),
    ],
)
def test_no_launcher_imports_a_package_planted_in_the_temporary_or_working_folder(
    launch, planted, tmp_path, monkeypatch
):
    """Issue 56, finding 1: a package that anyone wrote into the system temporary folder or the working
    folder is never what a process the project starts imports."""
    launch(tmp_path, monkeypatch)
    assert not planted.exists(), planted.read_text()


def test_a_safe_environment_has_no_working_folder_on_the_path(monkeypatch):
    """``PYTHONSAFEPATH`` set; an empty or relative ``PYTHONPATH`` entry (the working folder) dropped, here and
    for the processes ``multiprocessing`` starts meanwhile, and so are those of ``sys.path``, which they take;
    both restored after."""
    from monai_sr_bundle.launch import safe_children, safe_env

    sep = os.pathsep
    env = safe_env({"PYTHONPATH": f"{sep}/opt/app{sep}src{sep}.", "HOME": "/home/u"})
    assert env == {"PYTHONPATH": "/opt/app", "HOME": "/home/u", "PYTHONSAFEPATH": "1"}
    assert "PYTHONPATH" not in safe_env({"PYTHONPATH": f"{sep}lib"})
    monkeypatch.setenv("PYTHONPATH", f"{sep}/opt/app")
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    monkeypatch.setattr(sys, "path", ["", "/opt/lib", "src"])
    with safe_children():
        assert os.environ["PYTHONPATH"] == "/opt/app" and os.environ["PYTHONSAFEPATH"] == "1"
        assert sys.path == ["/opt/lib"]
    assert os.environ["PYTHONPATH"] == f"{sep}/opt/app" and "PYTHONSAFEPATH" not in os.environ
    assert sys.path == ["", "/opt/lib", "src"]
