"""Slicer local-mode overhead: the module's path (volume -> NIfTI -> SR process -> volume, through
SuperResolutionLib) vs the same SR from the command line on the same 512x512 radiograph, process start-up
included in both. Writes docs/slicer_benchmark.md.

Run: .venv/bin/python benchmarks/slicer_local.py [--method NAME]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_extension" / "SuperResolution"))

from speed import publish  # noqa: E402

from monai_sr_bundle import methods  # noqa: E402
from monai_sr_bundle.data.datalist import nih_datalist  # noqa: E402
from SuperResolutionLib import SRRun, read_volume, write_volume  # noqa: E402

RUNS = 3


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default=methods.default_name())
    args = parser.parse_args()
    image = Path(nih_datalist("test", limit=1)[0]["label"])
    pixels = np.asarray(Image.open(image))[None]  # (K=1, J=rows, I=cols), as Slicer holds a PNG
    cli, module = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(RUNS):
            start = time.perf_counter()
            command = [sys.executable, "-m", "monai_sr_bundle.cli", "sr", str(image), "-o", f"{tmp}/cli{i}"]
            subprocess.run([*command, "-m", args.method], check=True, capture_output=True)
            cli.append(time.perf_counter() - start)
            start = time.perf_counter()
            os.makedirs(f"{tmp}/mod{i}/out")
            write_volume(pixels, np.diag([-1.0, -1.0, 1.0, 1.0]), f"{tmp}/mod{i}/in.nii.gz")
            result = SRRun(f"{tmp}/mod{i}/in.nii.gz", f"{tmp}/mod{i}/out", method=args.method).start().wait()
            read_volume(result)
            module.append(time.perf_counter() - start)
    c, m = float(np.median(cli)), float(np.median(module))
    lines = [
        "| path | seconds (median of %d) |" % RUNS,
        "|---|---|",
        f"| command line: `monai-sr sr {image.name} -m {args.method}` | {c:.2f} |",
        f"| Slicer local mode (SuperResolutionLib: volume -> NIfTI -> SR process -> volume) | {m:.2f} |",
        f"| overhead | {m - c:+.2f} |",
    ]
    bars = [
        f"- local mode at most 2 s more than the command line: {m - c:+.2f} s -> {'met' if m - c <= 2 else 'NOT met'}"
    ]
    doc = f"""# Slicer local mode: overhead over the command line

Machine: {os.cpu_count()} CPU cores. Produced by (from the repository root):

    .venv/bin/python benchmarks/slicer_local.py --method {args.method}

Input: `{image.name}` (512x512 NIH test radiograph), x4 with `{args.method}`; both paths start a new Python
process (the module runs the CLI in a subprocess), so start-up is included in both. Slicer itself is not
in the loop (it cannot run here): its extra work is copying the array in and out of the scene.

{chr(10).join(lines)}
"""
    publish(REPO / "docs" / "slicer_benchmark.md", doc, lines, bars, issue=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
