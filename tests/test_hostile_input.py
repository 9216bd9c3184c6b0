"""Hostile input through the public entry points (``run_inference`` and the ``monai-sr sr`` CLI).

Each bad input must give an InputError (exit code 2 on the CLI) with one sentence naming it, write nothing
for it, let the other inputs go on, leave every input untouched, and neither crash, hang nor allocate what a
lying header claims. Names with spaces, unicode or a leading dash must work (on the CLI a name starting with
'-' goes after '--' or as ./-name).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK  # noqa: F401  (imported up front, not under memory_cap)
import torch
from conftest import deflated_dicom, make_dicom, png_declaring, save_dicom
from PIL import Image

from monai_sr_bundle import methods
from monai_sr_bundle.batch import run_inference
from monai_sr_bundle.cli import main
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.request import SRRequest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

SCALE = 4
#: bicubic interpolation through the one entry point (no weights: quick)
BICUBIC = methods.get("bicubic", SCALE).predictor()


# ------------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def no_hang():
    """Fail, rather than hang, if an entry point blocks (e.g. reading a FIFO)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def boom(signum, frame):
        raise TimeoutError("the entry point hung on hostile input")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def memory_cap(headroom: int = 2 << 30):
    """Cap the address space at its current size + ``headroom`` so that a reader trusting a lying header
    fails (and the test with it) instead of allocating gigabytes on a shared machine."""
    try:
        import resource

        vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, StopIteration):
        yield
        return
    cap = vm + headroom if hard == resource.RLIM_INFINITY else min(vm + headroom, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _png(path, size=(40, 36), seed=0) -> Path:
    """A random 8-bit PNG of ``size`` = (width, height)."""
    Image.fromarray((np.random.default_rng(seed).random(size[::-1]) * 255).astype(np.uint8)).save(path, format="PNG")
    return Path(path)


def _dicom(path, shape=(40, 36), **override) -> Path:
    """An uncompressed 16-bit slice; ``override`` sets header elements after the pixel data (lies included)."""
    pixels = (np.random.default_rng(1).random(shape) * 1000).astype(np.uint16)
    return make_dicom(path, pixels, **override)


def _nifti(path, shape) -> Path:
    nib.save(nib.Nifti1Image(np.random.default_rng(2).random(shape).astype(np.float32), np.eye(4)), str(path))
    return Path(path)


def _lying_nifti(path, shape=(30000, 30000, 2)) -> Path:
    """A 352-byte float32 NIfTI header claiming ``shape`` (7 GB) followed by 256 bytes of data."""
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    img.header.set_data_shape(shape)
    Path(path).write_bytes(img.header.binaryblock + b"\0" * 4 + bytes(256))
    return Path(path)


def _snapshot(folder: Path) -> dict:
    """Bytes and mtime of every regular file (symlinks and FIFOs are not followed)."""
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


#: an output limit that lets every hostile header of HOSTILE through to the readers' own defences (the limit
#: itself is tested with an image it refuses, below)
UNLIMITED = 1e6


def _run(inputs, out) -> list[str]:
    return run_inference(inputs, BICUBIC, out, progress=False, request=SRRequest(max_output_mp=UNLIMITED))


# --------------------------------------------------------------------- hostile inputs, one at a time

# kind -> (builder(folder) -> path, text the message must hold)
HOSTILE = {
    "bomb_png_60000x60000": (
        lambda d: png_declaring(d / "bomb.png", 60000, 60000),
        "more pixels than can be decoded safely",
    ),
    "bomb_png_10000x10000": (
        lambda d: png_declaring(d / "bomb10k.png", 10000, 10000),
        "more pixels than can be decoded safely",
    ),
    "bomb_png_1x200M": (
        lambda d: png_declaring(d / "bomb_line.png", 1, 200_000_000),
        "more pixels than can be decoded safely",
    ),
    "dicom_rows_lie": (lambda d: _dicom(d / "rows.dcm", Rows=60000, Columns=60000), "does not match its pixel data"),
    "dicom_rows_slightly_more": (lambda d: _dicom(d / "rows41.dcm", Rows=41), "does not match its pixel data"),
    "dicom_bits_allocated_64": (lambda d: _dicom(d / "bits64.dcm", BitsAllocated=64), "cannot decode DICOM pixel data"),
    "dicom_bits_allocated_255": (
        lambda d: _dicom(d / "bits255.dcm", BitsAllocated=255),
        "cannot decode DICOM pixel data",
    ),
    "dicom_bits_allocated_0": (lambda d: _dicom(d / "bits0.dcm", BitsAllocated=0), "cannot decode DICOM pixel data"),
    "dicom_samples_per_pixel_0": (
        lambda d: _dicom(d / "spp0.dcm", SamplesPerPixel=0),
        "cannot decode DICOM pixel data",
    ),
    "empty_png": (lambda d: (d / "empty.png").write_bytes(b"") or d / "empty.png", "cannot be read as an image"),
    "empty_dcm": (lambda d: (d / "empty.dcm").write_bytes(b"") or d / "empty.dcm", "not a readable DICOM file"),
    "folder_named_png": (lambda d: (d / "x.png").mkdir() or d / "x.png", "holds no DICOM images"),
    "fifo_png": (lambda d: os.mkfifo(d / "fifo.png") or d / "fifo.png", "not a regular file"),
    "dev_zero_dcm": (lambda d: os.symlink("/dev/zero", d / "zero.dcm") or d / "zero.dcm", "not a regular file"),
    "nifti_4d_time_series": (lambda d: _nifti(d / "t4d.nii.gz", (40, 36, 5, 3)), "4D images are not supported"),
    "nifti_4d_one_slice": (lambda d: _nifti(d / "t4d1.nii.gz", (40, 36, 1, 3)), "4D images are not supported"),
    "nifti_5d": (lambda d: _nifti(d / "v5d.nii.gz", (40, 36, 4, 2, 3)), "5D images are not supported"),
    "nifti_header_lie": (lambda d: _lying_nifti(d / "lie.nii"), "the header claims 30000x30000x2 voxels"),
    "png_1x1": (lambda d: _png(d / "dot.png", (1, 1)), "smaller than 32 px"),
    "png_1xN_line": (lambda d: _png(d / "line.png", (200, 1)), "smaller than 32 px"),
    "png_Nx1_column": (lambda d: _png(d / "column.png", (1, 200)), "smaller than 32 px"),
}
if not hasattr(os, "mkfifo"):
    del HOSTILE["fifo_png"]
if not os.path.exists("/dev/zero"):
    del HOSTILE["dev_zero_dcm"]


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_input_run_inference(kind, tmp_path):
    """One sentence naming the bad input, nothing written for it, the good input done, inputs untouched."""
    d = tmp_path / "in"
    d.mkdir()
    build, expected = HOSTILE[kind]
    bad = build(d)
    good = _png(d / "good.png")
    before = _snapshot(d)
    out = tmp_path / "out"
    with memory_cap(), pytest.raises(InputError) as e:
        _run([bad, good], out)
    msg = str(e.value)
    assert msg.startswith("1 of 2 inputs failed: "), msg
    (sentence,) = msg.split(": ", 1)[1].split(" | ")
    assert sentence.startswith(f"{bad}: ") and expected in sentence, sentence
    assert "MemoryError" not in sentence and "allocate" not in sentence
    assert sorted(p.name for p in out.iterdir()) == ["failed.csv", "good_sr.png"]  # no partial or temporary files
    assert _snapshot(d) == before


def test_symlink_to_etc_passwd_leaks_nothing(tmp_path, caplog):
    target = Path("/etc/passwd")
    if not target.is_file():
        pytest.skip("no /etc/passwd here")
    secret = [line for line in target.read_text(errors="replace").splitlines() if line.strip()][:3]
    d = tmp_path / "in"
    d.mkdir()
    os.symlink(target, d / "evil.png")
    good = _png(d / "good.png")
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        _run([d / "evil.png", good], out)
    msg = str(e.value)
    assert f"{d / 'evil.png'}: cannot be read as an image" in msg
    for text in (msg, caplog.text):
        assert str(target) not in text and not any(line in text for line in secret)
    assert sorted(p.name for p in out.iterdir()) == ["failed.csv", "good_sr.png"]
    assert (d / "evil.png").is_symlink() and os.readlink(d / "evil.png") == str(target)


@pytest.mark.parametrize("photometric", ["YBR_FULL", "RGB", "GARBAGE", ""])
def test_dicom_odd_photometric_one_sample_is_a_sane_image(photometric, tmp_path):
    """A colour (or unknown) PhotometricInterpretation with 1 sample per pixel is read as the gray image it holds."""
    ref = read_image(_dicom(tmp_path / "ref.dcm"))
    odd = _dicom(tmp_path / "odd.dcm", PhotometricInterpretation=photometric)
    img = read_image(odd)
    assert img.shape == ref.shape and np.array_equal(img.numpy(), ref.numpy())
    assert [Path(p).name for p in _run(odd, tmp_path / "out")] == ["odd_sr.dcm"]


def test_folder_without_images_is_reported_not_dropped(tmp_path):
    """A folder holding only unreadable entries is reported by name instead of silently dropped."""
    d = tmp_path / "junk"
    d.mkdir()
    (d / "notes.txt").write_text("no images")
    good = _png(tmp_path / "good.png")
    with pytest.raises(InputError, match=re.escape(f"{d}: the folder holds no DICOM images")):
        _run([d, good], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["failed.csv", "good_sr.png"]


# --------------------------------------------------------------------- the CLI with all of them at once


def test_cli_hostile_batch(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    kinds = list(HOSTILE)
    bad = [HOSTILE[k][0](d) for k in kinds]
    _png(d / "good.png")
    before = _snapshot(d)
    out = tmp_path / "out"
    with memory_cap():
        args = ["-o", str(out), "-m", "bicubic", "--max-output-mp", str(UNLIMITED)]
        assert main(["sr", *args, "--", *map(str, bad), str(d / "good.png")]) == 3
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and line[0].startswith(f"error: {len(bad)} of {len(bad) + 1} inputs failed: "), err
    for path, kind in zip(bad, kinds):
        assert f"{path}: " in line[0] and HOSTILE[kind][1] in line[0], kind
    assert sorted(p.name for p in out.iterdir()) == ["failed.csv", "good_sr.png"]
    assert len((out / "failed.csv").read_text().splitlines()) == 1 + len(bad)
    assert _snapshot(d) == before


# --------------------------------------------------------------------- names: spaces, unicode, leading dash

NAMES = ["a b.png", "ünïcödé 画像.png", "-o.png", "--help.png", "semi;colon $(x).png"]


def test_odd_names_work_through_run_inference(tmp_path):
    d = tmp_path / "in dir ü"
    d.mkdir()
    for i, n in enumerate(NAMES):
        _png(d / n, seed=i)
    before = _snapshot(d)
    written = _run([d / n for n in NAMES], tmp_path / "out")
    assert [Path(p).name for p in written] == [n[: -len(".png")] + "_sr.png" for n in NAMES]
    assert _snapshot(d) == before


def test_odd_names_work_through_the_cli_after_double_dash(tmp_path, monkeypatch, capsys):
    """Names starting with '-' go after '--' (or as ./-o.png); spaces and unicode need only shell quoting."""
    monkeypatch.chdir(tmp_path)
    for i, n in enumerate(NAMES):
        _png(tmp_path / n, seed=i)
    assert main(["sr", "-o", "out", "-m", "bicubic", "--", *NAMES]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(n[: -len(".png")] + "_sr.png" for n in NAMES)
    assert main(["sr", "./-o.png", "-o", "out2", "-m", "bicubic"]) == 0
    assert [p.name for p in (tmp_path / "out2").iterdir()] == ["-o_sr.png"]


def test_cli_dash_name_without_double_dash_is_refused(tmp_path, monkeypatch, capsys):
    """``sr good.png -o.png`` parses as ``-o .png``: refused, not a folder named '.png'."""
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "good.png")
    _png(tmp_path / "-o.png")
    before = _snapshot(tmp_path)
    assert main(["sr", "good.png", "-o.png", "-m", "bicubic"]) == 2
    err = capsys.readouterr().err
    assert "error: .png: -o takes an output folder" in err and "'--'" in err
    assert _snapshot(tmp_path) == before and not (tmp_path / ".png").exists()


# --------------------------------------------------------------------- hostile output folders


def test_output_folder_is_a_file(tmp_path, capsys):
    src = _png(tmp_path / "a.png")
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match=rf"^{re.escape(str(out))}: the output folder is a file"):
        _run(src, out)
    assert main(["sr", str(src), "-o", str(out), "-m", "bicubic"]) == 2
    assert f"error: {out}: the output folder is a file" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_output_folder_under_a_file(tmp_path):
    src = _png(tmp_path / "a.png")
    (tmp_path / "f").write_bytes(b"precious")
    before = _snapshot(tmp_path)
    out = tmp_path / "f" / "deeper" / "out"
    with pytest.raises(
        InputError,
        match=rf"^{re.escape(str(out))}: the output folder lies under the file {re.escape(str(tmp_path / 'f'))}",
    ):
        _run(src, out)
    assert _snapshot(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_output_folder_without_write_permission(tmp_path, capsys):
    src = _png(tmp_path / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        before = _snapshot(tmp_path)
        with pytest.raises(InputError, match=rf"^{re.escape(str(locked / 'out'))}: no permission to write"):
            _run(src, locked / "out")
        assert main(["sr", str(src), "-o", str(locked), "-m", "bicubic"]) == 2
        assert f"error: {locked}: no permission to write" in capsys.readouterr().err
        assert _snapshot(tmp_path) == before and not any(locked.iterdir())
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------- outputs that would replace files


def test_output_in_the_input_folder_replaces_no_input(tmp_path, capsys):
    """``sr d -o d`` with ``b_sr.png`` a different image among the inputs: refused before anything is written."""
    d = tmp_path / "d"
    d.mkdir()
    for i, name in enumerate(["a.png", "b.png", "b_sr.png"]):
        _png(d / name, seed=i)
    before = _snapshot(d)
    assert main(["sr", str(d), "-o", str(d), "-m", "bicubic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (
        f"error: {d / 'b_sr.png'}: the output of {d / 'b.png'} would replace an input image; give an output "
        "folder apart from the inputs (nothing was written)."
    )
    assert _snapshot(d) == before


def test_output_name_collision_is_refused_before_writing(tmp_path, capsys):
    """``scan.png``, ``scan.jpg`` and ``Scan.PNG`` would share names (the last on a case-insensitive share)."""
    d = tmp_path / "in"
    d.mkdir()
    _png(d / "scan.png")
    Image.open(_png(d / "scan.tmp", seed=1)).save(d / "scan.jpg", format="JPEG")
    (d / "scan.tmp").unlink()
    _png(d / "Scan.PNG", seed=2)
    out = tmp_path / "out"
    assert main(["sr", str(d), "-o", str(out), "-m", "bicubic"]) == 2
    err = capsys.readouterr().err
    assert f"would both be written to {out / 'scan_sr.png'}" in err and "nothing was written" in err
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(InputError, match="Scan.PNG and .*scan.png would both be written"):
        _run([d / "scan.png", d / "Scan.PNG"], out)


def test_a_foreign_file_at_the_output_name_is_kept_and_a_rerun_replaces_its_own(tmp_path, capsys):
    src = _png(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    foreign = _png(out / "a_sr.png", seed=5)
    before = _snapshot(out)
    assert main(["sr", str(src), "-o", str(out), "-m", "bicubic"]) == 2
    assert f"error: {foreign}: already exists and was not written by monai-sr" in capsys.readouterr().err
    assert _snapshot(out) == before
    foreign.unlink()
    assert main(["sr", str(src), "-o", str(out), "-m", "bicubic"]) == 0
    assert main(["sr", str(src), "-o", str(out), "-m", "bicubic"]) == 0  # a rerun replaces its own output
    assert [p.name for p in out.iterdir()] == ["a_sr.png"]


def test_skip_existing_removes_only_the_temporaries_of_its_own_writes(tmp_path, capsys):
    """What a killed write leaves (``.<output>.<8 hex digits>.tmp<ext>``, a file: cut short, with the tool's note, or
    empty and private) goes; a user's files and folders named ``.<output>.*``, even a file, a folder or a link named
    exactly like a temporary, stay."""
    src = _png(tmp_path / "a.png")
    whole = Path(_run(src, tmp_path / "earlier")[0]).read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    ours = out / ".a_sr.png.0123abcd.tmp.png"
    ours.write_bytes(whole[: len(whole) // 2])  # killed halfway through its write
    empty = out / ".a_sr.png.00000000.tmp.png"
    os.close(os.open(empty, os.O_WRONLY | os.O_CREAT, 0o600))  # killed before its first byte
    (out / ".a_sr.png.fedcba98.tmp.png").write_bytes(b"\x89PNG a user's file at a temporary's name")
    (out / ".a_sr.png.notes").write_text("my notes")
    (out / ".a_sr.png.d").mkdir()
    (out / ".a_sr.png.d" / "x.txt").write_text("mine")
    (out / ".a_sr.png.89abcdef.tmp.png").mkdir()
    (out / ".a_sr.png.deadbeef.tmp.png").symlink_to(src)
    (out / ".a_sr.png.0123abcd.png").write_text("not the pattern")
    before = _snapshot(out)
    del before[ours], before[empty]
    assert main(["sr", str(src), "-o", str(out), "-m", "bicubic", "--skip-existing"]) == 0
    assert not ours.exists() and not empty.exists() and (out / ".a_sr.png.89abcdef.tmp.png").is_dir()
    assert (out / ".a_sr.png.deadbeef.tmp.png").is_symlink() and (out / "a_sr.png").is_file()
    after = _snapshot(out)
    assert {p: after[p] for p in before} == before


def test_a_users_failed_csv_is_refused_and_only_ours_is_replaced_or_removed(tmp_path, capsys):
    """A ``failed.csv`` of the user's in the output folder: refused before anything is written, after a clean run
    as after a partial one; ours is replaced by the next partial run and removed by a clean one."""
    d = tmp_path / "d"
    d.mkdir()
    _png(d / "a.png", size=(40, 36))
    users = d / "failed.csv"
    users.write_text("patient,why\n123,my notes\n")
    before = _snapshot(d)
    assert main(["sr", str(d), "-o", str(d), "-m", "bicubic"]) == 2
    assert f"error: {users}: already exists and was not written by monai-sr" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["sr", str(d / "a.png"), str(broken), "-o", str(d), "-m", "bicubic"]) == 2
    assert _snapshot(d) == before
    users.unlink()
    assert main(["sr", str(d / "a.png"), str(broken), "-o", str(d), "-m", "bicubic"]) == 3
    assert str(broken) in (d / "failed.csv").read_text()
    broken.write_bytes(b"still not an image")
    assert main(["sr", str(d / "a.png"), str(broken), "-o", str(d), "-m", "bicubic"]) == 3  # ours: replaced
    assert main(["sr", str(d / "a.png"), "-o", str(d), "-m", "bicubic"]) == 0
    assert sorted(p.name for p in d.iterdir()) == ["a.png", "a_sr.png"]  # a clean run removes ours


def test_failed_csv_cells_cannot_run_as_spreadsheet_formulas(tmp_path, monkeypatch):
    """Inputs named like formulas (``=``, ``+``, ``-``, ``@``, a leading tab or carriage return) fail; in
    failed.csv their names start with ``'``, which a spreadsheet reads as text, and no cell starts a formula."""
    import csv

    monkeypatch.chdir(tmp_path)
    names = ['=HYPERLINK("x","y").png', "+1.png", "-2.png", "@SUM(A1).png", "\tcmd.png", "\rcr.png"]
    for name in names:
        Path(name).write_bytes(b"not an image")
    good = _png(tmp_path / "good.png")
    with pytest.raises(InputError):
        _run([*names, good], tmp_path / "out")
    with open(tmp_path / "out" / "failed.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["input"] for r in rows) == sorted("'" + n for n in names)
    assert not [c for r in rows for c in r.values() if c.startswith(("=", "+", "-", "@", "\t", "\r"))]


@pytest.mark.parametrize("fmt", ["nifti", "nrrd", "mha", "dicom"])
def test_every_output_format_is_recognised_as_own_on_rerun(fmt, tmp_path):
    src = _dicom(tmp_path / "a.dcm")
    for _ in range(2):
        written = run_inference(src, BICUBIC, tmp_path / "out", progress=False, output_format=fmt)
    assert len(written) == 1 and len(list((tmp_path / "out").iterdir())) == 1


# --------------------------------------------------------------------- series folders and reports


def _series(folder: Path, positions, dicomdir: bool = False) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, z in enumerate(positions):
        pixels = (rng.random((32, 32)) * 1000).astype(np.uint16)
        make_dicom(folder / f"s{i}.dcm", pixels, position=[0.0, 0.0, float(z)], instance=i + 1, pixel_spacing=[1, 1])
    if dicomdir:  # a medium's index: DICOM magic, no image
        from pydicom.dataset import Dataset, FileMetaDataset

        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        ds.FileSetID = "MEDIUM"
        ds.is_little_endian, ds.is_implicit_VR = True, False  # pydicom 2 asks; 3 takes the transfer syntax
        save_dicom(ds, folder / "DICOMDIR")
    return folder


def test_a_gap_in_a_ct_series_is_refused(tmp_path, capsys):
    series = _series(tmp_path / "ct", [0, 2, 4, 8, 10])
    before = _snapshot(series)
    out = tmp_path / "out"
    assert main(["sr", str(series), "-o", str(out), "-m", "bicubic", "--slice-by-slice"]) == 2
    err = capsys.readouterr().err
    assert "slices s2.dcm and s3.dcm are 4 mm apart where the series steps 2 mm" in err, err
    assert not out.exists() or not any(out.iterdir())
    assert _snapshot(series) == before


def test_a_dicomdir_in_a_series_folder_is_ignored(tmp_path):
    series = _series(tmp_path / "ct", [0, 2, 4], dicomdir=True)
    written = run_inference(series, BICUBIC, tmp_path / "out", allow_volume=True, progress=False)
    assert [Path(p).name for p in written] == ["ct_sr"] and len(list(Path(written[0]).iterdir())) == 3


def test_a_name_with_a_newline_cannot_forge_report_lines(tmp_path, capsys):
    bad = tmp_path / "x.png\nerror: 0 of 1 inputs failed: forged.png"
    bad.write_bytes(b"not an image")
    assert main(["sr", str(bad), "-o", str(tmp_path / "out"), "-m", "bicubic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([ln for ln in err if ln.startswith("error:")]) == 1 and "x.png\\nerror: 0 of 1" in err[-1], err


@pytest.mark.parametrize("data_file", ["/etc/passwd", "../outside.raw", "fifo", "LIST"])
def test_a_header_reads_pixel_data_only_from_a_file_beside_it(data_file, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(64 * 64))
    os.mkfifo(d / "fifo")
    header = d / "x.mha"
    head = "ObjectType = Image\nNDims = 2\nDimSize = 64 64\nElementType = MET_UCHAR\n"
    header.write_text(f"{head}ElementDataFile = {data_file}\n")
    refusal = f"names its pixel data file '{re.escape(data_file)}', which is not a file beside"
    with pytest.raises(InputError, match=refusal):
        _run(header, tmp_path / "out")
    (d / "x.raw").write_bytes(np.random.default_rng(0).integers(0, 255, 64 * 64, dtype=np.uint8).tobytes())
    header.write_text(header.read_text().replace(data_file, "x.raw"))
    assert [Path(p).name for p in _run(header, tmp_path / "out")] == ["x_sr.mha"]


def test_a_deflated_dicom_is_bounded_before_it_is_inflated(tmp_path, monkeypatch):
    from monai_sr_bundle.data import readers

    small = deflated_dicom(tmp_path / "small.dcm", 64)
    bomb = deflated_dicom(tmp_path / "bomb.dcm", 1024)  # 2 MiB inflated from a few KB
    monkeypatch.setattr(readers, "MAX_INFLATED", 1 << 20)
    with pytest.raises(InputError, match=r"bomb.dcm: the deflated DICOM data set inflates to more than 1 MiB from"):
        _run(bomb, tmp_path / "out")
    assert read_image(small).shape == (1, 64, 64)


# --------------------------------------------------------------------- issue 71: devices, names, permissions, size


@pytest.mark.parametrize("command", ["sr", "demo"])
@pytest.mark.parametrize("device", ["cuda", "bogus", "meta"])
def test_a_device_the_cli_cannot_use_is_one_sentence(device, command, tmp_path, capsys):
    """Finding 7: torch's tracebacks for a missing GPU, an unknown device or ``meta`` (no data) come mid-run."""
    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"  # a GPU this machine does not have
    src, out = _png(tmp_path / "a.png"), tmp_path / "out"
    given = [str(src), "-m", "srcnn"] if command == "sr" else ["--input", str(src), "--methods", "srcnn"]
    assert main([command, *given, "-o", str(out), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: device {device!r}") and not out.exists(), err


def test_a_name_too_long_for_the_file_system_is_one_sentence(tmp_path, capsys):
    """Finding 7: a 300-character input name (the file system's limit is 255) or output folder name."""
    good, out = _png(tmp_path / "good.png"), tmp_path / "out"
    long = tmp_path / ("n" * 300 + ".png")
    assert main(["sr", str(long), str(good), "-o", str(out), "-m", "bicubic"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert f"{long}: file name too long." in err[-1]
    assert sorted(p.name for p in out.iterdir()) == ["failed.csv", "good_sr.png"]
    assert main(["sr", str(good), "-o", str(tmp_path / ("o" * 300)), "-m", "bicubic"]) == 2
    assert "file name too long" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.png", "out"]


def _without_root_powers(cmd: list[str]) -> list[str]:
    """``cmd`` run without the power to read any file: as it is for a user; for root, under ``setpriv`` with the
    capabilities that override file permissions dropped (skipped where setpriv cannot drop them)."""
    if os.geteuid() != 0:
        return cmd
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if not shutil.which("setpriv") or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, which reads any file, and setpriv cannot drop that power here")
    return [*drop, *cmd]


@pytest.mark.slow
def test_an_input_the_user_may_not_read_is_one_sentence(tmp_path):
    """Finding 7: a file and a folder without read permission (listing the folder was a traceback)."""
    locked_file, locked_folder, out = _png(tmp_path / "locked.png"), tmp_path / "series", tmp_path / "out"
    locked_folder.mkdir()
    _png(locked_folder / "a.png")
    cmd = _without_root_powers([sys.executable, "-m", "monai_sr_bundle.cli", "sr", str(locked_file),
                                str(locked_folder), "-o", str(out), "-m", "bicubic"])  # fmt: skip
    locked_file.chmod(0)
    locked_folder.chmod(0)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        locked_file.chmod(0o600)
        locked_folder.chmod(0o700)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 2 inputs failed: ") and last.count(": no permission to read it") == 2, last
    assert not out.exists()


@pytest.fixture(scope="session")
def big_png(tmp_path_factory) -> Path:
    """A legal 9400 x 9400 8-bit PNG of about 100 KB, just under PIL's decompression-bomb limit (one bright
    square, so it is no constant image): x4 it is a 1414-megapixel SR, 6 GB to compute."""
    pixels = np.full((9400, 9400), 7, np.uint8)
    pixels[:64, :64] = 200
    path = tmp_path_factory.mktemp("big") / "big.png"
    Image.fromarray(pixels).save(path)
    return path


def _peak_gb(cmd: list[str], stdin: str = "") -> tuple[subprocess.CompletedProcess, float]:
    """``cmd`` run to its end and its peak RSS in GB, measured from a small parent of its own: wait4 would also
    count what this test process holds at the fork."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)"
    )
    argv = [sys.executable, "-c", wrapper, *cmd]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(argv, text=True, start_new_session=True, **pipes)
    try:
        out, err = proc.communicate(stdin, timeout=300)
    finally:  # a test that times out leaves no 6 GB process behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    *rest, peak = err.strip().splitlines()
    return subprocess.CompletedProcess(argv, proc.returncode, out, "\n".join(rest)), int(peak) / 1024**2


@pytest.mark.slow
def test_an_sr_too_large_is_refused_from_the_header_in_bounded_memory(big_png, tmp_path):
    """Finding 8: ``sr`` of a 100 KB 9400 x 9400 PNG at x4 took 6 GB; it is refused before its pixels are
    decoded, naming the option that lifts the limit."""
    out = tmp_path / "out"
    done, peak = _peak_gb([sys.executable, "-m", "monai_sr_bundle.cli", "sr", str(big_png), "-o", str(out),
                           "-m", "bicubic"])  # fmt: skip
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "9400x9400 at x4 would be 1414 megapixels" in last, done.stderr
    assert "--max-output-mp" in last and peak < 1.0 and not out.exists(), (peak, last)


def test_max_output_mp_sets_the_limit_of_sr(tmp_path, capsys):
    src, out = _png(tmp_path / "a.png"), tmp_path / "out"  # 40 x 36 at x4: 0.023 megapixels
    assert main(["sr", str(src), "-o", str(out), "-m", "bicubic", "--max-output-mp", "0.02"]) == 2
    assert "would be 0.023 megapixels" in capsys.readouterr().err and not out.exists()
    assert main(["sr", str(src), "-o", str(out), "-m", "bicubic", "--max-output-mp", "0.03"]) == 0
    with pytest.raises(InputError, match="max_output_mp must be a positive number of megapixels, got 0"):
        run_inference(src, BICUBIC, tmp_path / "out2", request=SRRequest(max_output_mp=0))


@pytest.mark.slow
def test_the_worker_refuses_an_sr_too_large_in_bounded_memory_and_answers_the_next(big_png, tmp_path):
    """Finding 8, the Slicer worker: refused from the header, and the worker stays to answer a valid request."""
    small, out = _png(tmp_path / "a.png"), tmp_path / "out"
    requests = [{"input": str(big_png), "output": str(out), "method": "bicubic"},
                {"input": str(small), "output": str(out), "method": "bicubic"}]  # fmt: skip
    done, peak = _peak_gb([sys.executable, "-m", "monai_sr_bundle.cli", "worker"],
                          "".join(json.dumps(r) + "\n" for r in requests))  # fmt: skip
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and len(replies) == 2, done.stderr
    assert "would be 1414 megapixels" in replies[0]["error"] and "max_output_mp" in replies[0]["error"]
    assert [Path(p).name for p in replies[1]["written"]] == ["a_sr.png"] and peak < 1.0, (peak, replies)
