"""Archive-scale inference with ``monai-sr sr``: a folder tree or a datalist, worker processes, torchrun shards,
``--skip-existing`` resume after a kill, ``failed.csv`` and the partial-failure exit status."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import USER_PYTHON, make_dicom
from PIL import Image
from test_bundle import REPO

from monai_sr_bundle import methods
from monai_sr_bundle.batch import FAILED, input_jobs, run_inference
from monai_sr_bundle.cli import PARTIAL, main

CORRUPT = ("a/broken.png", "b/c/truncated.dcm", "b/empty.nii.gz")


def archive(root: Path, count: int) -> list[str]:
    """``count`` small radiographs in a tree of folders, PNG, JPEG, DICOM and NIfTI mixed, three of them corrupt;
    returns every input's path relative to ``root``."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(count - len(CORRUPT)):
        folder = root / ["a", "b", "b/c", "d/e/f"][i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 36), dtype=np.uint8)
        kind = i % 4
        if kind == 0:
            path = folder / f"img{i:03d}.png"
            Image.fromarray(pixels).save(path)
        elif kind == 1:
            path = folder / f"img{i:03d}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
        elif kind == 2:
            path = make_dicom(folder / f"img{i:03d}.dcm", pixels.astype(np.uint16), modality="CR")
        else:
            path = folder / f"img{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(pixels.astype(np.float32)[..., None], np.eye(4)), path)
        names.append(str(path.relative_to(root)))
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    good = (root / "b" / "c").glob("*.dcm")
    (root / "b" / "c" / "truncated.dcm").write_bytes(next(good).read_bytes()[:300])
    (root / "b" / "empty.nii.gz").write_bytes(b"")
    return sorted(names + list(CORRUPT))


def sr_name(name: str) -> str:
    """Where the output of input ``name`` goes: its folder, its stem with ``_sr``, its format family's suffix."""
    stem, suffix = name.split(".", 1)
    return f"{stem}_sr.{'png' if suffix == 'jpg' else suffix}"


def outputs(out: Path) -> dict[str, int]:
    """Every output file under ``out`` (relative path -> its modification time, to tell a file written again
    from one left alone); not the hidden temporaries of writes in progress, nor what is in a hidden work folder,
    which may vanish while it is listed (os.walk passes over a folder gone by then)."""
    found = {}
    for folder, subfolders, files in os.walk(out):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in files:
            if name != FAILED and not name.startswith("."):
                path = Path(folder, name)
                found[path.relative_to(out).as_posix()] = path.stat().st_mtime_ns
    return found


def sr(*args) -> list[str]:
    return [USER_PYTHON, "-m", "monai_sr_bundle.cli", "sr", "-m", "bicubic", *map(str, args)]


@pytest.mark.slow
def test_an_archive_killed_halfway_resumes_without_computing_anything_twice(tmp_path):
    """80 mixed inputs, 3 corrupt, 2 workers: killed part-way, then the same command with --skip-existing: 77
    outputs in the tree's own folders, failed.csv with the 3 and their reasons, the partial-failure status;
    the outputs of the first run are left as they were."""
    names = archive(tmp_path / "in", count=80)
    out = tmp_path / "out"
    command = sr(tmp_path / "in", "-o", out, "--recursive", "--workers", 2, "--skip-existing")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while (not out.exists() or len(outputs(out)) < 30) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the CLI and its workers, mid-run
    first.wait()
    before = outputs(out)
    assert 30 <= len(before) < 77, len(before)

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    after = outputs(out)
    assert done.returncode == PARTIAL, done.stderr[-2000:]
    assert f"{len(before)} of 80 inputs skipped: their outputs are complete" in done.stderr
    assert len(after) == 77 and all(after[k] == v for k, v in before.items())  # none written twice
    # the kill's half-written temporary files are gone (a derived DICOM's hidden work folder may stay: no folder
    # is removed)
    assert not [p for p in out.rglob(".*") if not p.is_dir()]
    assert set(after) == {sr_name(n) for n in names if n not in CORRUPT}  # in the tree's own folders
    with open(out / FAILED, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["input"]).relative_to(tmp_path / "in").as_posix() for r in rows) == sorted(CORRUPT)
    assert all(r["reason"].startswith(r["input"] + ": ") for r in rows)
    assert "error: 3 of 80 inputs failed: " in done.stderr and f"(all listed in {out / FAILED})" in done.stderr
    print(
        f"first run: {len(before)} outputs before the kill; second: {77 - len(before)} computed, {len(before)} skipped"
    )


def test_a_datalist_keeps_the_images_folders(tmp_path, capsys):
    names = archive(tmp_path / "in", count=12)
    good = [n for n in names if n not in CORRUPT][:6]
    datalist = tmp_path / "in" / "list.json"
    datalist.write_text(
        json.dumps({"training": [{"label": n} for n in good[:4]], "test": [{"image": n} for n in good[4:]]})
    )
    assert main(["sr", "-m", "bicubic", "--datalist", str(datalist), "-o", str(tmp_path / "out")]) == 0
    written = sorted(outputs(tmp_path / "out"))
    assert len(written) == 6 and {Path(w).parent.as_posix() for w in written} == {
        Path(n).parent.as_posix() for n in good
    }


def test_a_series_folder_in_a_tree_is_one_input_and_a_folder_of_folders_none(tmp_path):
    series = tmp_path / "in" / "patient" / "ct"
    series.mkdir(parents=True)
    for k in range(2):
        make_dicom(series / f"{k}.dcm", np.zeros((8, 8), np.uint16), position=[0, 0, k], instance=k + 1)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "patient" / "scout.png")
    jobs = input_jobs(tmp_path / "in", tmp_path / "out", recursive=True)
    assert jobs == [
        (str(tmp_path / "in" / "patient" / "scout.png"), tmp_path / "out" / "patient"),
        (str(series), tmp_path / "out" / "patient"),
    ]


@pytest.mark.slow
def test_two_torchrun_processes_share_an_archive(tmp_path):
    """Each process takes every second input; the first writes failed.csv with both processes' failures."""
    archive(tmp_path / "in", count=12)
    out = tmp_path / "out"
    launch = [USER_PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launch, "-m", "monai_sr_bundle.cli", "sr", str(tmp_path / "in"), "-o", str(out), "-m", "bicubic"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "--recursive"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "ChildFailedError" in done.stderr  # torchrun reports the partial status
    assert len(outputs(out)) == 9
    with open(out / FAILED, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3


@pytest.mark.parametrize("workers", ["0", "-2", "two"])
def test_a_bad_worker_count_is_one_sentence_and_writes_nothing(tmp_path, capsys, workers):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    args = ["sr", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "-m", "bicubic", "--workers", workers]
    if workers == "two":
        with pytest.raises(SystemExit):
            main(args)
    else:
        assert main(args) == 2 and "workers must be a whole number of processes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_inputs_or_an_empty_datalist_is_one_sentence(tmp_path, capsys):
    assert main(["sr", "-o", str(tmp_path / "out"), "-m", "bicubic"]) == 2
    assert "give input images, folders or --datalist FILE" in capsys.readouterr().err
    (tmp_path / "list.json").write_text('{"training": [{"boxes": []}]}')
    assert main(["sr", "--datalist", str(tmp_path / "list.json"), "-o", str(tmp_path / "out"), "-m", "bicubic"]) == 2
    assert "no item with a 'label' or 'image' path" in capsys.readouterr().err
    (tmp_path / "list.json").write_text('{"training": [{"image": "a\\u0000.png"}]}')
    assert main(["sr", "--datalist", str(tmp_path / "list.json"), "-o", str(tmp_path / "out"), "-m", "bicubic"]) == 2
    assert "a path in it contains a NUL character" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------- hardening round 4 (issue 56)


@pytest.mark.parametrize("fmt", ["png", "nifti", "nrrd", "mha", "dicom"])
def test_skip_existing_redoes_an_output_cut_short(tmp_path, fmt):
    """An output of ours cut to a third (a crash mid-write) still carries its note in its header; a resumed run
    must write it again, and then keep the whole one."""
    bicubic = methods.get("bicubic", 4).predictor()
    src = make_dicom(tmp_path / "a.dcm", np.random.default_rng(0).integers(0, 1000, (40, 36), dtype=np.uint16))
    out = tmp_path / "out"
    [written] = run_inference(src, bicubic, out, progress=False, output_format=fmt)
    whole = Path(written).read_bytes()
    Path(written).write_bytes(whole[: len(whole) // 3])
    again = run_inference(src, bicubic, out, progress=False, output_format=fmt, skip_existing=True)
    assert again == [written] and abs(Path(written).stat().st_size - len(whole)) < 64  # DICOM: new UIDs
    assert run_inference(src, bicubic, out, progress=False, output_format=fmt, skip_existing=True) == []


def test_every_write_reaches_the_disk_before_it_is_moved_into_place(tmp_path, monkeypatch):
    """The temporary file is fsynced before ``os.replace`` (a crash can then leave no output cut short under its
    final name), and the folder after it."""
    from monai_sr_bundle.data.writers import write_json

    events = []
    fsync, replace = os.fsync, os.replace

    def fsynced(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        fsync(fd)

    def replaced(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsynced)
    monkeypatch.setattr(os, "replace", replaced)
    write_json(tmp_path / "out" / "summary.json", {"a": 1})
    temporary, folder = (tmp_path / "out" / "summary.json").stat().st_ino, (tmp_path / "out").stat().st_ino
    assert events[:2] == [("fsync", temporary), ("replace", temporary)]
    assert events[2:] == ([] if os.name == "nt" else [("fsync", folder)])  # Windows cannot open a folder


def test_a_recursive_rerun_into_the_input_tree_reads_no_outputs(tmp_path):
    """``sr in -o in/out --recursive`` twice, thrice: the outputs of a run are not inputs of the next (no
    ``out/out/a_sr_sr.png``)."""
    tree = tmp_path / "in"
    (tree / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "sub/b.png"]):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 36), dtype=np.uint8)).save(tree / name)
    command = ["sr", str(tree), "-o", str(tree / "out"), "-m", "bicubic", "--recursive"]
    for _ in range(3):
        assert main(command) == 0
        assert sorted(outputs(tree / "out")) == ["a_sr.png", "sub/b_sr.png"]
    assert input_jobs(tree, tree / "out", recursive=True) == [
        (str(tree / "a.png"), tree / "out"),
        (str(tree / "sub" / "b.png"), tree / "out" / "sub"),
    ]


def _session(leader: int) -> list[str]:
    """The command lines of the live processes (zombies aside) of the session that ``leader`` started."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, _, session = stat.read_text().rpartition(")")[2].split()[:4]
            if int(session) == leader and state not in "ZX":
                alive.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return alive


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_killing_the_run_stops_its_workers(tmp_path):
    """``kill -9`` of ``monai-sr sr --workers 2`` once its first output is there: its workers die with it, so no
    output appears after and nothing is left to race a resumed run."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (160, 160), dtype=np.uint8)).save(inputs / f"img{i:02d}.png")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        sr(inputs, "-o", out, "--workers", 2), env=env, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and outputs(out)) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.poll() is None, "the run ended before it could be killed"
        os.kill(run.pid, signal.SIGKILL)  # the main process only
        run.wait()
        time.sleep(0.5)  # a rename the kernel had begun lands
        before = outputs(out)
        deadline = time.monotonic() + 5
        while _session(run.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = _session(run.pid)
        time.sleep(max(0.0, deadline - time.monotonic()))
        assert not survivors
        assert outputs(out) == before and len(before) < 40
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
