"""Security review issue 56: no file the project did not write is deleted or overwritten by any command.

For each command (``monai-sr sr`` on files, on a folder with ``--recursive``, from a ``--datalist``, with
``--skip-existing`` (and ``--workers 2``), on a DICOM series; ``monai-sr demo --input``; :func:`evaluate` with its
report) a dry run into a scratch folder learns every name the command writes: its outputs and the folders they
are in, and the hidden temporaries it moves into place (watched through ``os.replace``). Then fresh output folders
get a user's files (random bytes, not written by the project):

* ``taken``: at every such name, at every name the project cleans (a killed write's ``.<name>.<8 hex>.tmp<ext>``,
  a derived series' ``.<name>.old``, report pages past the last, ``failed.csv``) and at near-miss names
  (``.<name>.notes``, ``report_final.html``, a folder named like a temporary, ...);
* ``each``: at one written name at a time, and also an empty folder there, and a file where it makes a folder;
* ``beside``: only at the cleaned and near-miss names, for a fresh run, and ``rerun``: the same beside the
  dry run's own outputs, which a rerun replaces.

Every user file must keep its bytes and mtime; the command either refuses in one sentence naming a user's file
and changes nothing, or writes only at names where no user file was (``beside``, ``rerun``: it must run).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from conftest import make_dicom
from PIL import Image

from monai_sr_bundle import methods, report
from monai_sr_bundle.batch import FAILED
from monai_sr_bundle.cli import main
from monai_sr_bundle.errors import InputError, printable
from monai_sr_bundle.evaluation import evaluate

SCALE = 4
#: tokens of the temporaries a user's files are put at (the project draws its own at random)
TOKENS = ("0123abcd", "ffffffff")
#: the name of a derived DICOM series' instance: the series folder is one output
INSTANCE = re.compile(r"IM\d{4,}\.dcm")


# ------------------------------------------------------------------------------------------- the commands


def _png(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random(size[::-1]) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


def _inputs(root: Path) -> None:
    """Small inputs of every command: 40x36 PNGs (one in a subfolder), a broken one, a datalist, a 3-slice DICOM
    series, and 128 px PNGs for the demo and evaluation (32 px LR at x4)."""
    _png(root / "in" / "a.png", (40, 36), 0)
    _png(root / "in" / "sub" / "b.png", (40, 36), 1)
    (root / "bad.png").write_bytes(b"not an image")
    (root / "list.json").write_text(json.dumps({"test": [{"label": "in/a.png"}, {"image": "in/sub/b.png"}]}))
    _png(root / "hr" / "a.png", (128, 128), 2)
    _png(root / "hr" / "b.png", (128, 128), 3)
    (root / "ct").mkdir()
    rng = np.random.default_rng(4)
    for i in range(3):
        pixels = (rng.random((32, 32)) * 1000).astype(np.uint16)
        at = [0.0, 0.0, 2.0 * i]
        make_dicom(root / "ct" / f"s{i}.dcm", pixels, position=at, instance=i + 1, pixel_spacing=[1, 1])


def _sr(*args: str):
    """``monai-sr sr`` with ``args`` (``{root}`` stands for the inputs' folder) into the output folder."""
    return lambda root, out, again: main(["sr", *(a.format(root=root) for a in args), "-o", str(out), "-m", "bicubic"])


def _demo(root: Path, out: Path, again: bool) -> int:
    images = [str(root / "hr" / "a.png"), str(root / "hr" / "b.png")]
    return main(["demo", "--input", *images, "--methods", "bicubic", "--no-lpips", "--figures", "2", "-o", str(out)])


_PREDICTORS: dict = {}


def _evaluate(root: Path, out: Path, again: bool) -> int:
    """The bundle's evaluation with two methods, its SR images, figures and a two-page report; a rerun writes a
    one-page report, removing its own second page."""
    if not _PREDICTORS:
        _PREDICTORS.update({name: methods.get(name, SCALE).predictor() for name in ("bicubic", "srcnn")})
    datalist = [{"label": str(root / "hr" / "a.png")}, {"label": str(root / "hr" / "b.png")}]
    figures = 1 if again else 2
    try:
        evaluate(datalist, _PREDICTORS, out, lpips=False, save_images=True, figures=figures, progress=False)
    except InputError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2
    return 0


#: command -> (run(inputs folder, output folder, again) -> exit status, names it refuses though not writing them)
COMMANDS = {
    "sr_files": (_sr("{root}/in/a.png", "{root}/bad.png"), ()),  # a partial failure: failed.csv
    "sr_recursive": (_sr("{root}/in", "--recursive"), (FAILED,)),
    "sr_datalist": (_sr("--datalist", "{root}/list.json"), (FAILED,)),
    "sr_skip_existing": (_sr("{root}/in", "--recursive", "--skip-existing"), (FAILED,)),
    "sr_skip_existing_workers": (_sr("{root}/in", "--recursive", "--skip-existing", "--workers", "2"), (FAILED,)),
    "sr_dicom_series": (_sr("{root}/ct", "--slice-by-slice"), (FAILED,)),
    "demo": (_demo, ()),
    "evaluate_report": (_evaluate, ()),
}
#: each spawns two worker processes that load PyTorch (tens of seconds each here)
SLOW = {"sr_skip_existing_workers", "demo", "evaluate_report"}


# ------------------------------------------------------------------------------------------- helpers


def _tree(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` (relative, POSIX): a folder, a link, or a file's sha256 and mtime."""
    found = {}
    for here, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(here, name)
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir",)
            else:
                found[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return found


def _extension(name: str) -> str:
    return name[-7:] if name.lower().endswith(".nii.gz") else os.path.splitext(name)[1]


def _temporaries(name: str) -> list[str]:
    """The names a killed write of ``name`` may leave: ``.<name>.<8 hex digits>.tmp<ext>``."""
    return [f".{name}.{token}.tmp{_extension(name)}" for token in TOKENS]


def _plan(written: dict[str, tuple], guarded) -> tuple[dict[str, str], dict[str, str]]:
    """(names the project cleans, near-miss names) around the ``written`` paths: path -> ``file`` (random bytes),
    or ``dir`` (a folder with a file of the user's in it)."""
    files = [PurePosixPath(p) for p, kind in written.items() if kind[0] == "file"]
    dirs = [PurePosixPath(p) for p, kind in written.items() if kind[0] == "dir"]
    inside = {d: [p.name for p in files + dirs if p.parent == d] for d in dirs}
    series = {d for d, names in inside.items() if names and all(INSTANCE.fullmatch(n) for n in names)}
    cleaned, near = {}, {}
    for path in files + dirs:
        if path.parent in series:  # inside a derived series: the series is the output, named below
            continue
        name, beside = path.name, path.parent
        if path in dirs and path not in series:
            near[str(beside / f".{name}.user0001")] = "dir"
            continue
        for temporary in _temporaries(name):
            cleaned[str(beside / temporary)] = "file"
        cleaned[str(beside / f".{name}.old")] = "dir" if path in series else "file"
        near[str(beside / f".{name}.notes")] = "file"
        near[str(beside / f".{name}.{TOKENS[0]}{_extension(name)}")] = "file"  # no .tmp
        near[str(beside / f".{name}.89abcdef.tmp{_extension(name)}")] = "dir"  # a folder named like a temporary
        near[str(beside / f".{name}.user0001")] = "dir"  # like a derived series' hidden work folder
        near[str(beside / f".{name}.user0001.old")] = "dir"  # like the folder an earlier series is moved aside to
        near[str(beside / f"{name}.bak")] = "file"
        if name.upper() != name:
            near[str(beside / name.upper())] = "file"
    folders = {f.parent for f in files if f.parent not in series}
    for folder in folders:
        pages = [f for f in files if f.parent == folder and re.fullmatch(r"report(_\d+)?\.html", f.name)]
        if pages:
            for n in range(2, len(pages) + 3):  # an earlier, longer report's pages
                cleaned[str(folder / f"report_{n}.html")] = "file"
        near[str(folder / "report_final.html")] = "file"
        near[str(folder / "report_02.html")] = "file"
        near[str(folder / FAILED)] = "file"
    taken = set(written) | {str(PurePosixPath(".") / g) for g in guarded}
    cleaned = {p: k for p, k in cleaned.items() if p not in taken}
    near = {p: k for p, k in near.items() if p not in taken and p not in cleaned}
    return cleaned, near


def _fill(out: Path, layout: dict[str, str], seed: int) -> None:
    """A user's files at ``layout``'s names: random bytes, or a folder with random bytes in it (``dir``), or an
    empty folder (``empty``)."""
    rng = np.random.default_rng(seed)
    for rel, kind in sorted(layout.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "empty":
            path.mkdir()
            continue
        if kind == "dir":
            path.mkdir()
            path = path / "notes.txt"
        path.write_bytes(rng.bytes(int(rng.integers(1, 300))))


def _run(command: str, root: Path, out: Path, capsys, again: bool = False) -> tuple[int, list[str]]:
    capsys.readouterr()
    status = COMMANDS[command][0](root, out, again)
    return status, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------------------------------- the bar


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in COMMANDS])
def test_no_user_file_is_deleted_or_overwritten(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(report, "FIGURES_PER_PAGE", 1)  # a report of several pages (report_2.html, ...)
    root = tmp_path / "inputs"
    _inputs(root)
    guarded = COMMANDS[command][1]

    # the dry run: every name the command writes, and the temporaries it moves into place
    dry = tmp_path / "dry"
    moves = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: moves.append((Path(src), Path(dst))) or replace(src, dst))
    ran, err = _run(command, root, dry, capsys)
    monkeypatch.setattr(os, "replace", replace)
    assert ran in (0, 3), err  # ran (3: some inputs failed, the others written)
    written = _tree(dry)
    assert written, f"{command} wrote nothing"
    for src, dst in moves:  # a file moves into place from a hidden temporary beside it, a series from a folder
        if src.parent == dst.parent and src.is_relative_to(dry):
            expected = re.escape(f".{dst.name}.") + "[0-9a-f]{8}" + re.escape(f".tmp{_extension(dst.name)}")
            assert re.fullmatch(expected, src.name) or (src.name.startswith(f".{dst.name}.") and dst.is_dir()), src
    cleaned, near = _plan(written, guarded)
    files = [p for p, kind in written.items() if kind[0] == "file"]
    dirs = [p for p, kind in written.items() if kind[0] == "dir"]

    counter = iter(range(1, 10_000))

    def attempt(label: str, layout: dict[str, str], expect: str, names=(), ours: bool = False) -> None:
        """Fill a fresh output folder with ``layout`` (and the dry run's outputs, ``ours``), run the command, and
        hold it to the bar: ``expect`` ``refused`` (naming one of ``names`` or a folder above it) or ``ran``."""
        out = tmp_path / f"out{next(counter)}"
        if ours:
            shutil.copytree(dry, out, symlinks=True)
        out.mkdir(exist_ok=True)
        seeded = _tree(out)
        _fill(out, layout, seed=len(seeded) + len(layout))
        before = _tree(out)
        users = {p: v for p, v in before.items() if p not in seeded}
        status, err = _run(command, root, out, capsys, again=ours)
        after = _tree(out)
        where = f"{command}, {label}"
        lost = {p: (v, after.get(p)) for p, v in users.items() if after.get(p) != v}
        assert not lost, f"{where}: user files deleted or changed: {lost}"
        if expect == "refused":
            assert status == 2, f"{where}: not refused ({status}): {err}"
            assert len(err) == 1 and err[0].startswith("error: "), f"{where}: {err}"
            named = {str(out / n) for n in names} | {str(out / p) for n in names for p in PurePosixPath(n).parents}
            assert any(f"error: {n}: " in err[0] for n in named - {str(out / ".")}), f"{where}: {err[0]}"
            assert after == before, f"{where}: refused, but changed {set(after) ^ set(before)}"
        else:
            assert status == ran, f"{where}: exit status {status}, the dry run's {ran}: {err}"
            new = {p for p in after if after[p] != before.get(p)}
            assert new <= set(written), f"{where}: wrote where the dry run did not: {new - set(written)}"
            assert not [p for p in new if p in users], f"{where}: wrote over a user's file"

    # a user's file at every name at once: refused, nothing written
    attempt("taken", {**{p: "file" for p in files}, **cleaned, **near}, "refused", names=files)
    # one written name at a time: a user's file there, an empty folder there, a file where a folder goes
    for name in [*files, *guarded]:
        attempt(f"a file at {name}", {name: "file"}, "refused", names=[name])
    for name in files:
        attempt(f"an empty folder at {name}", {name: "empty"}, "refused", names=[name])
    for name in dirs:
        attempt(f"a file at the folder {name}", {name: "file"}, "refused", names=[name])
    # only the names the project cleans and the near misses: it runs, and leaves them
    attempt("beside", {**cleaned, **near}, "ran")
    attempt("rerun", {**cleaned, **near}, "ran", ours=True)


def test_the_quality_benchmark_replaces_only_the_figure_pages_it_wrote(tmp_path, monkeypatch):
    """Issue 71, finding 9: the figure of ``benchmarks.quality`` removed every ``docs/figures/comparison_*.png``,
    a user's too. Now it replaces its pages, removes those of its last figure that this one has not (the ones
    docs/results.md links), keeps every other file, and links only pages that are there."""
    from benchmarks import quality

    figures = tmp_path / "docs" / "figures"
    figures.mkdir(parents=True)
    linked = ["comparison.png", "comparison_2.png", "comparison_3.png"]  # the last run's three pages
    for name in linked:
        (figures / name).write_bytes(b"last run")
    users = {"comparison_mine.png": b"a user's", "comparison_9.png": b"a user's too"}
    for name, data in users.items():
        (figures / name).write_bytes(data)
    links = "".join(f"![LR | methods | HR](figures/{name})\n" for name in linked)
    (tmp_path / "docs" / "results.md").write_text(f"# Results\n\n{quality.FIGURE_MARK}made by x -->\n{links}")
    work = tmp_path / "work"
    work.mkdir()
    stem = Path(quality.FIGURE_IMAGE).stem
    for i, page in enumerate((f"figure_{stem}.png", f"figure_{stem}_2.png")):  # this run's two pages
        Image.new("L", (8, 4), 10 * i).save(work / page)
    monkeypatch.setattr(quality, "DOCS", tmp_path / "docs")
    block = quality.figure_block(work, {"bicubic": None}, "python -m benchmarks.quality")
    assert {name: (figures / name).read_bytes() for name in users} == users
    assert sorted(p.name for p in figures.iterdir()) == sorted(["comparison.png", "comparison_2.png", *users])
    assert np.asarray(Image.open(figures / "comparison_2.png").convert("L")).max() == 10  # this run's second page
    assert re.findall(r"\]\(figures/([^)]*)\)", block) == ["comparison.png", "comparison_2.png"]
