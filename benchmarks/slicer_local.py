"""Slicer local mode: the module's path (volume -> NIfTI -> SR worker -> volume, through SuperResolutionLib) vs
the same SR from the command line on the same 512x512 radiograph, a session's first request (the worker
starts: process start-up included, as in the CLI) and its later ones (the worker kept the method loaded:
how long until the network runs); and how long listing the methods and ``--help`` take. Writes
docs/slicer_benchmark.md.

Run: .venv/bin/python -m benchmarks.slicer_local [--method NAME]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import harness
from benchmarks.harness import REPO, publish
from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import nih_datalist

sys.path.insert(0, str(REPO / "slicer_extension" / "SuperResolution"))  # the module's GUI-free library
from SuperResolutionLib import SRRun, Worker, read_volume, write_volume  # noqa: E402

RUNS = 3


def median_wall(command: list[str], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def module_request(folder: str, pixels: np.ndarray, method: str, worker: Worker | None) -> tuple[float, float]:
    """(seconds of the whole request, seconds until the network's first call), as the Logic does it:
    volume -> NIfTI -> SR -> volume."""
    start = time.time()
    os.makedirs(f"{folder}/out")
    write_volume(pixels, np.diag([-1.0, -1.0, 1.0, 1.0]), f"{folder}/in.nii.gz")
    job = SRRun(f"{folder}/in.nii.gz", f"{folder}/out", method=method, worker=worker).start()
    read_volume(job.wait()["sr"])
    return time.time() - start, job.network_started - start


def main() -> int:
    parser = harness.parser(__file__, __doc__, work=False)
    parser.add_argument("--method", default=methods.default_name())
    args = harness.parse(parser)
    image = Path(nih_datalist("test", limit=1)[0]["label"])
    begun = time.perf_counter()
    pixels = np.asarray(Image.open(image))[None]  # (K=1, J=rows, I=cols), as Slicer holds a PNG
    cli_prefix = [sys.executable, "-m", "monai_sr_bundle.cli"]
    listing, help_ = median_wall([*cli_prefix, "methods", "--json"], 5), median_wall([*cli_prefix, "--help"], 5)
    cli, first, later = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(RUNS):
            start = time.perf_counter()
            subprocess.run([*cli_prefix, "sr", str(image), "-o", f"{tmp}/cli{i}", "-m", args.method], check=True,
                           capture_output=True)  # fmt: skip
            cli.append(time.perf_counter() - start)
            first.append(module_request(f"{tmp}/first{i}", pixels, args.method, None))  # a worker of its own
        worker = Worker()  # a session: its first request starts it, the later ones find the method loaded
        module_request(f"{tmp}/session", pixels, args.method, worker)
        later = [module_request(f"{tmp}/later{i}", pixels, args.method, worker) for i in range(RUNS)]
        worker.stop()
    c, (f, f_net), (w, w_net) = float(np.median(cli)), np.median(first, axis=0), np.median(later, axis=0)
    measured = {"cli_s": c, "first_s": f, "first_network_s": f_net, "later_s": w, "later_network_s": w_net}
    measured |= {"methods_listing_s": listing, "help_s": help_}
    minutes = (time.perf_counter() - begun) / 60
    harness.record(args, f"{image.name} (512 px NIH test radiograph), x4", [methods.get(args.method, 4)],
                   {"main": {args.method: {k: float(v) for k, v in measured.items()}}}, minutes)  # fmt: skip
    lines = [
        "| path | seconds, whole request | seconds until the network runs |",
        "|---|---|---|",
        f"| command line: `monai-sr sr {image.name} -m {args.method}` | {c:.2f} | - |",
        f"| Slicer local mode, first request of a session (the worker starts) | {f:.2f} | {f_net:.2f} |",
        f"| Slicer local mode, later requests (the worker kept the method loaded) | {w:.2f} | {w_net:.2f} |",
        f"| `monai-sr methods --json` (what the module lists at start) | {listing:.2f} | - |",
        f"| `monai-sr --help` | {help_:.2f} | - |",
    ]
    bars = [
        f"- local mode at most 2 s more than the command line (issue 4): first request {f - c:+.2f} s -> "
        f"{'met' if f - c <= 2 else 'NOT met'}",
        f"- the second and later requests reach the network in under 1 s (issue 41): {w_net:.2f} s -> "
        f"{'met' if w_net < 1 else 'NOT met'}",
        f"- `monai-sr methods` under 1.5 s wall (issue 41): {listing:.2f} s -> {'met' if listing < 1.5 else 'NOT met'}",
    ]
    doc = f"""# Slicer local mode: the first and later requests, and listing the methods

Machine: {os.cpu_count()} CPU cores. Produced by (from the repository root), on an otherwise idle machine:

    .venv/bin/{args.command}

Input: `{image.name}` (512x512 NIH test radiograph), x4 with `{args.method}`; medians of {RUNS} (listing and
help: of 5). The module sends each local request to one `monai-sr worker` process kept for the Slicer session: the first
request starts it (Python, torch and MONAI imported, the weights loaded: as the command line does every time),
the later ones find the method loaded. "Until the network runs" is from the request (the volume not yet
written) to the network's first call, as the worker stamps it. Slicer itself is not in the loop (it cannot run
here): its extra work is copying the array in and out of the scene.

{chr(10).join(lines)}
"""
    publish(REPO / "docs" / "slicer_benchmark.md", doc, lines, bars, issue=41)
    return 0


if __name__ == "__main__":
    sys.exit(main())
