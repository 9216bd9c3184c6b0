"""Archive throughput of `monai-sr sr`: the first 12 NIH test images (512x512) to 2048x2048 with the default
method, one process with 1 worker and with 2 (`--workers`), each the whole command timed from launch, so the
workers' start-up counts. Writes the archive block of docs/benchmarks.md.

Run: .venv/bin/python -m benchmarks.archive
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import REPO, write_block
from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import nih_datalist

DOC = REPO / "docs" / "benchmarks.md"
MARKERS = ("<!-- archive: start -->", "<!-- archive: end -->")
IMAGES = 12


def main(argv: list[str] | None = None) -> int:
    args = harness.parse(harness.parser(__file__, __doc__, work=False), argv)
    method = methods.default_name()
    rows, begun = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for item in nih_datalist("test", limit=IMAGES):
            shutil.copy(item["label"], inputs)
        for workers in (1, 2):
            out = Path(tmp) / f"out{workers}"
            command = [sys.executable, "-m", "monai_sr_bundle.cli", "sr", str(inputs), "-o", str(out), "-m", method]
            start = time.perf_counter()
            subprocess.run([*command, "--workers", str(workers)], check=True, capture_output=True)
            wall = time.perf_counter() - start
            assert len(list(out.glob("*_sr.png"))) == IMAGES
            rows.append((workers, wall, IMAGES / wall * 3600))
            print(rows[-1], flush=True)
    measured = {f"{method}, {w} workers": {"wall_s": t, "images_per_hour": r} for w, t, r in rows}
    data = f"the first {IMAGES} NIH test images (512 px), x4"
    harness.record(args, data, [methods.get(method, 4)], {"main": measured}, (time.perf_counter() - begun) / 60)
    table = "\n".join(
        ["| method | workers | wall (s) | images per hour |", "|---|---|---|---|"]
        + [f"| {method} | {w} | {t:.0f} | {r:.0f} |" for w, t, r in rows]
    )
    block = (
        f"{MARKERS[0]}\n## Archive throughput (issue 40)\n\nProduced by `.venv/bin/{args.command}` "
        f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores): `monai-sr sr` of {IMAGES} NIH test images, "
        f"512x512 -> 2048x2048 with the default method, one command per row timed from launch (the workers' "
        f"start-up included), PyTorch eager, 256 px LR tiles.\n\n{table}\n{MARKERS[1]}"
    )
    write_block(DOC, MARKERS, block)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
