"""Speed and memory benchmark on this machine's CPU: PyTorch vs ONNX Runtime, and peak memory of bundle
inference on a full-size radiograph. Writes docs/results/speed.json and docs/benchmarks.md.

Run: .venv/bin/python -m benchmarks.speed
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import DOCS, REPO, median_seconds, publish
from monai_sr_bundle import methods
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.onnx_runtime import OnnxNetwork

#: the whole-radiograph case: a 512x512 LR image to a 2048x2048 output (what a Slicer user waits for), fewer
#: repeats as VDSR takes over a minute for it
LARGE, LARGE_REPEATS = 512, 4


def bundle(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE_ROOT, check=True, capture_output=True)


def export_onnx(method: str, path: Path) -> None:
    """The README's onnx_export command for the shipped x4 weights."""
    bundle(
        "onnx_export",
        "network_def",
        "--filepath",
        str(path),
        "--ckpt_file",
        str(methods.get(method).weights_path),
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--method",
        method,
        "--input_shape",
        "[1,1,32,32]",
        "--converter_kwargs",
        "{'input_names': ['image'], 'output_names': ['pred'], "
        "'dynamic_axes': {'image': {0: 'batch', 2: 'x', 3: 'y'}, 'pred': {0: 'batch', 2: 'X', 3: 'Y'}}}",
    )


def peak_rss_of_bundle_inference(work: Path) -> tuple[float, str]:
    """Peak RSS (GB) of `monai.bundle run inference.json` on one 1024x1024 NIH radiograph at x2 with the
    default method's network (untrained x2 weights: memory does not depend on weight values)."""
    image = sorted((shared_data_dir() / "nih_cxr14" / "images_1024").glob("*.png"))[0]
    ckpt = work / "default_x2.pt"
    torch.save(methods.get(methods.default_name(), 2).network().state_dict(), ckpt)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # 0: this must be the first child
    bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--method",
        methods.default_name(),
        "--scale",
        "2",
        "--ckpt_path",
        str(ckpt),
        "--input",
        str(image),
        "--output_dir",
        str(work / "sr"),
    )
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        raise RuntimeError("could not measure the child's peak RSS")
    return peak_kb / 1024**2, image.name


def timed_in_fresh_process(method: str, onnx: Path | None = None, large: bool = False) -> float:
    """Median seconds of one 512x512 output (``large``: 2048x2048), measured by this script in a new process
    (``--time``), so that no timing inherits another's thread pools, allocator state or ONNX Runtime's
    spinning threads: the situation of a user who runs one CLI command."""
    cmd = (
        [sys.executable, "-m", "benchmarks.speed", "--time", method]
        + (["--onnx", str(onnx)] if onnx else [])
        + (["--large"] if large else [])
    )
    return float(subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout.split()[-1])


def time_one(method: str, onnx: str | None, large: bool) -> float:
    torch.manual_seed(0)
    sr = methods.get(method, 4)
    network, inferer = OnnxNetwork(onnx) if onnx else sr.load(), sr.inferer()
    size, repeats = (LARGE, LARGE_REPEATS) if large else (128, harness.REPEATS)
    return median_seconds(lambda x: inferer(x, network), torch.rand(1, 1, size, size), repeats)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, work=False)
    # the child of timed_in_fresh_process
    parser.add_argument("--time", metavar="METHOD", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    parser.add_argument("--large", action="store_true", help=argparse.SUPPRESS)
    return harness.main(parser, run, argv)


def run(args: argparse.Namespace) -> int:
    if args.time:
        print(time_one(args.time, args.onnx, args.large))
        return 0
    start = time.perf_counter()
    torch.manual_seed(0)
    lr = torch.rand(1, 1, 128, 128)
    rows = []
    default = methods.default_name()
    trained = [
        m for m in methods.trainable_names() if methods.get(m, 4).weights_available and methods.get(m, 4).exportable
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # first, while no other child process has run: RUSAGE_CHILDREN keeps the largest peak of any child
        rss_gb, image = peak_rss_of_bundle_inference(work)
        networks = {m: methods.get(m, 4).load() for m in trained}
        onnx_paths = {m: work / f"{m}.onnx" for m in networks}
        for method, path in onnx_paths.items():
            export_onnx(method, path)
        times = {m: (timed_in_fresh_process(m), timed_in_fresh_process(m, onnx=p)) for m, p in onnx_paths.items()}
        large = {m: timed_in_fresh_process(m, large=True) for m in networks}
        # only now an ONNX Runtime session in this process: its idle threads spin and would slow the children
        for method, network in networks.items():
            with torch.inference_mode():
                own = methods.get(method, 4).inferer()
                diff = (own(lr, network) - own(lr, OnnxNetwork(onnx_paths[method]))).abs().max().item()
            rows.append((method, *times[method], diff))
    cpu = platform.processor() or platform.machine()
    lines = [
        "| method | PyTorch eager (s) | ONNX Runtime (s) | PyTorch / ONNX | max abs diff |",
        "|---|---|---|---|---|",
    ] + [f"| {m} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {d:.1e} |" for m, a, b, d in rows]
    slowest = max(large, key=large.get)
    large_lines = [f"| method | PyTorch eager (s) | speed-up over {slowest} |", "|---|---|---|"] + [
        f"| {m} | {t:.1f} | {large[slowest] / t:.1f}x |" for m, t in large.items()
    ]
    top = next(r for r in rows if r[0] == default)
    bars = [
        f"- {default} (the default method), one 512x512 output in PyTorch: {top[1]:.2f} s eager "
        f"(bar: <= 2 s) -> {'met' if top[1] <= 2 else 'NOT met'}",
        f"- ONNX Runtime vs PyTorch eager for {default}: {top[1] / top[2]:.2f}x (bar: ONNX faster) -> "
        f"{'met' if top[2] < top[1] else 'NOT met'}",
        f"- peak RSS of bundle inference, one 1024x1024 image at x2 (2048x2048 output, {default}): {rss_gb:.2f} GB "
        f"(bar: < 3 GB) -> {'met' if rss_gb < 3 else 'NOT met'}",
    ]
    doc = f"""# Speed and memory

Machine: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads.
Produced by (from the repository root):

    .venv/bin/{args.command}

One 128x128 LR image to a 512x512 output at x4 through each method's tiling inferer, median of
{harness.REPEATS} runs after a warm-up, each configuration timed in its own fresh process; ONNX models exported
with the bundle's `onnx_export` command (see docs/deployment.md) and run by ONNX Runtime's CPU provider.

{chr(10).join(lines)}

A whole radiograph: one 512x512 LR image to a 2048x2048 output at x4, PyTorch eager through the same
inferer (tiles of 256 LR px), median of {LARGE_REPEATS} runs after a warm-up, each method in its own fresh process:

{chr(10).join(large_lines)}

Memory: `python -m monai.bundle run --config_file configs/inference.json --method {default} --scale 2` on
`{image}` (1024x1024) with untrained x2 {default} weights (memory does not depend on the weight
values), peak resident set size of that process: {rss_gb:.2f} GB.

"""
    tables = {
        "small": {m: {"pytorch_s": a, "onnx_s": b, "max_abs_diff": d} for m, a, b, d in rows},
        "large": {m: {"pytorch_s": t} for m, t in large.items()},
    }
    data = f"random 128 px and {LARGE} px LR tensors; peak memory on {image} at x2"
    harness.record(args, data, [methods.get(m, 4) for m in trained], tables, (time.perf_counter() - start) / 60,
                   peak_rss_gb=rss_gb, cpu_cores=os.cpu_count(), torch=torch.__version__)  # fmt: skip
    publish(DOCS / "benchmarks.md", doc, lines + [""] + large_lines, bars, issue=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
