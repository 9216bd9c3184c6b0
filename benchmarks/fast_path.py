"""The fast path of `monai-sr sr`: fp32 vs `--precision bf16` (and fp16 on a GPU) vs `--compile`, each one
command of the project's CLI over the same NIH test images made 128 -> 512 (antialiased bicubic LR, saved as
8-bit PNG). Per row: the whole command's wall time (start-up and compilation included), the steady time per
image (from the outputs' write times: (last - first) / (images - 1), so compilation is left out), and the PSNR
of the SR images against the HR ones with its difference from fp32. Writes the CPU or the GPU block of
docs/benchmarks.md.

Run: .venv/bin/python -m benchmarks.fast_path [--device cuda] [--methods runet_real,sr3,ldm] [--images 8]
     [--settings fp32,bf16,fp16,fp32+compile,bf16+compile]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks import harness
from benchmarks.harness import REPO, write_block
from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.transforms.degradation import downsample

DOC = REPO / "docs" / "benchmarks.md"


def markers(device: str) -> tuple[str, str]:
    kind = torch.device(device).type
    return f"<!-- fast-path-{kind}: start -->", f"<!-- fast-path-{kind}: end -->"


def settings(device: str, chosen: str | None) -> list[tuple[str, bool]]:
    """(precision, compile) per row: ``chosen`` (e.g. ``fp32,fp32+compile``), else every one the device has."""
    if chosen:
        return [(s.split("+")[0], s.endswith("+compile")) for s in chosen.split(",")]
    half = ["bf16", "fp16"] if torch.device(device).type == "cuda" else ["bf16"]
    return [("fp32", False), *((p, False) for p in half), ("fp32", True), ("bf16", True)]


def psnr(sr: Path, hr: Path) -> float:
    a = np.asarray(Image.open(sr), np.float64) / 255.0
    b = read_image(hr)[0].numpy().T.astype(np.float64)  # the reader's (X, Y) -> rows, columns
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def run(method: str, inputs: Path, out: Path, device: str, precision: str, compile: bool) -> tuple[float, float]:
    """Wall seconds of the command and steady seconds per image."""
    command = [sys.executable, "-m", "monai_sr_bundle.cli", "sr", str(inputs), "-o", str(out), "-m", method]
    command += ["--device", device, "--precision", precision, *(["--compile"] if compile else [])]
    if methods.get(method).stochastic:
        command += ["--seed", "0"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    times = sorted(p.stat().st_mtime for p in out.glob("*_sr.png"))
    return wall, (times[-1] - times[0]) / (len(times) - 1)


def main(argv=None) -> int:
    parser = harness.parser(__file__, __doc__, work=False)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default=f"{methods.default_name()},sr3,ldm")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--settings", help="rows per method, e.g. fp32,bf16,fp32+compile (default: all the device has)")
    args = harness.parse(parser, argv)
    names, rows, begun = args.methods.split(","), [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        inputs, hr = Path(tmp) / "in", {}
        inputs.mkdir()
        for item in nih_datalist("test", limit=args.images):
            image = read_image(item["label"])
            lr = downsample(image, 4)[0].clamp(0, 1).numpy().T
            name = Path(item["label"]).stem
            Image.fromarray(np.round(lr * 255).astype(np.uint8)).save(inputs / f"{name}.png")
            hr[name] = Path(item["label"])
        for method in names:
            reference = None
            for precision, compile in settings(args.device, args.settings):
                out = Path(tmp) / f"{method}_{precision}_{compile}"
                wall, per_image = run(method, inputs, out, args.device, precision, compile)
                quality = statistics.mean(psnr(out / f"{n}_sr.png", path) for n, path in hr.items())
                reference = quality if reference is None else reference
                compiled = "yes" if compile else "no"
                rows.append((method, precision, compiled, wall, per_image, quality, quality - reference))
                print(rows[-1], flush=True)
    gpu = torch.device(args.device).type == "cuda"
    device = torch.cuda.get_device_name() if gpu else f"CPU, {os.cpu_count()} cores"
    keys = ("wall_s", "s_per_image", "psnr", "psnr_vs_fp32")
    measured = {f"{m}, {p}, compile {c}": dict(zip(keys, rest)) for m, p, c, *rest in rows}
    data = f"the first {args.images} NIH test images made 128 px (LR) -> 512 px, on {device}"
    used = [methods.get(m, 4) for m in names]
    harness.record(args, data, used, {"main": measured}, (time.perf_counter() - begun) / 60, device=device)
    table = "\n".join(
        [
            "| method | precision | compile | command wall (s) | s per image, steady | PSNR (dB) | vs fp32 (dB) |",
            "|---|---|---|---|---|---|---|",
        ]
        + [f"| {m} | {p} | {c} | {w:.1f} | {s:.2f} | {q:.3f} | {d:+.3f} |" for m, p, c, w, s, q, d in rows]
    )
    start, end = markers(args.device)
    block = (
        f"{start}\n### {device}\n\nProduced by `.venv/bin/{args.command}` "
        f"({time.strftime('%Y-%m-%d')}, torch {torch.__version__}): `monai-sr sr` of {args.images} NIH test images "
        f"made 128 -> 512, one command per row; stochastic methods with `--seed 0` and their default sampler and "
        f"steps.\n\n{table}\n{end}"
    )
    write_block(DOC, (start, end), block)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
