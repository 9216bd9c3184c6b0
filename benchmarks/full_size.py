"""Full-size DICOM through the CLI: x4 of the 1955x1841 JPEG 2000 radiograph (VDSR) and of the 20-slice
512x512 chest CT series (SRCNN), each a fresh `monai-sr sr` process writing a derived DICOM series; its wall
time, its peak resident memory (the process's own, from wait4), the output's size and dciodvfy's error
count. Writes the full-size block of docs/benchmarks.md.

Run: .venv/bin/python -m benchmarks.full_size
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from benchmarks import harness
from benchmarks.harness import REPO, write_block
from monai_sr_bundle import methods
from monai_sr_bundle.data.paths import shared_data_dir

DOC = REPO / "docs" / "benchmarks.md"
MARKERS = ("<!-- full-size: start -->", "<!-- full-size: end -->")
RSS_BAR_GB = 3.0
CASES = [  # (input, method, what it is)
    ("cxr_dicom/pydicom-data_RG1_J2KI_CR_chest.dcm", "vdsr", "CR 1955x1841, 15-bit MONOCHROME1, JPEG 2000"),
    ("chest_ct/totalsegmentator_example_ct_dicom", "srcnn", "CT series, 512x512 x 20 slices, JPEG 2000"),
]


def run_cli(src: Path, method: str, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one CLI run in a fresh process."""
    cmd = [sys.executable, "-m", "monai_sr_bundle.cli", "sr", str(src), "-o", str(out), "-m", method]
    cmd += ["--scale", "4"] + (["--slice-by-slice"] if src.is_dir() else [])
    cmd += ["--max-output-mp", "100"]  # the CT series' SR is 84 megapixels, over the default limit
    return harness.timed_process(cmd)


def dciodvfy_errors(files: list[Path]) -> int:
    tool = shutil.which("dciodvfy")
    if tool is None:
        raise SystemExit("dciodvfy not found: install dicom3tools (make system-tools)")
    run = [subprocess.run([tool, str(f)], capture_output=True, text=True) for f in files]
    return sum(line.startswith("Error") for r in run for line in (r.stdout + r.stderr).splitlines())


def main(argv: list[str] | None = None) -> int:
    args = harness.parse(harness.parser(__file__, __doc__, work=False), argv)
    data = shared_data_dir()
    rows, begun = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, method, what) in enumerate(CASES):
            src, out = data / name, Path(tmp) / str(i)
            wall, rss = run_cli(src, method, out)
            (written,) = list(out.iterdir())
            files = [written] if written.is_file() else sorted(written.iterdir())
            first = pydicom.dcmread(files[0], stop_before_pixels=True)
            source = pydicom.dcmread(next(src.iterdir()) if src.is_dir() else src, stop_before_pixels=True)
            size = f"{first.Rows}x{first.Columns}" + (f"x{len(files)}" if len(files) > 1 else "")
            exact = (first.Columns, first.Rows) == (source.Columns * 4, source.Rows * 4)
            rows.append((method, what, size, exact, wall, rss, dciodvfy_errors(files)))
            print(rows[-1], flush=True)
    command = f".venv/bin/{args.command}"
    keys = ("method", "output", "exactly_4x", "wall_s", "peak_rss_gb", "dciodvfy_errors")
    measured = {what: dict(zip(keys, (m, *rest))) for m, what, *rest in rows}
    used = [methods.get(method, 4) for _, method, _ in CASES]
    harness.record(args, ", ".join(name for name, _, _ in CASES), used, {"main": measured},
                   (time.perf_counter() - begun) / 60)  # fmt: skip
    header = (
        "| method | input (rows x columns) | output (DICOM) | exactly 4x | wall (s) | peak RSS (GB) | dciodvfy errors |"
    )
    table = "\n".join(
        [header, "|" + "---|" * 7]
        + [f"| {m} | {w} | {s} | {'yes' if e else 'no'} | {t:.0f} | {r:.2f} | {n} |" for m, w, s, e, t, r, n in rows]
    )
    vdsr = rows[0]
    bar = f"peak RSS of x4 VDSR of the 1955x1841 CR: {vdsr[5]:.2f} GB (bar: <= {RSS_BAR_GB:g} GB) -> " + (
        "met" if vdsr[5] <= RSS_BAR_GB else "NOT met"
    )
    block = (
        f"{MARKERS[0]}\n## Full-size DICOM (issue 17)\n\nProduced by `{command}` ({time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPU cores): one `monai-sr sr` process per input, default tiles (256 LR px), PyTorch "
        f"eager, writing a derived DICOM series; peak RSS is that process's own.\n\n{table}\n\n- {bar}\n{MARKERS[1]}"
    )
    write_block(DOC, MARKERS, block)
    print(table + "\n\n" + bar)
    return 0 if vdsr[5] <= RSS_BAR_GB and all(r[3] and r[6] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
