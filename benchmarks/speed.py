"""Speed and memory benchmark on this machine's CPU: PyTorch vs ONNX Runtime, and peak memory of bundle
inference on a full-size radiograph. Writes docs/benchmarks.md.

Run: .venv/bin/python benchmarks/speed.py
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.inference import BUNDLE_ROOT, OnnxNetwork, SRInferer, load_network, method_config

REPO = Path(__file__).resolve().parents[1]
REPEATS = 5


def median_seconds(fn, x: torch.Tensor) -> float:
    """Median wall time of ``fn(x)`` over REPEATS runs after one warm-up run."""
    with torch.inference_mode():
        fn(x)
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bundle(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE_ROOT, check=True, capture_output=True)


def export_onnx(method: str, path: Path) -> None:
    """The README's onnx_export command for the shipped x4 weights."""
    bundle(
        "onnx_export", "network_def", "--filepath", str(path),
        "--ckpt_file", f"models/{method}_cxr_x4.pt", "--meta_file", "configs/metadata.json",
        "--config_file", f"['configs/inference.json','configs/methods/{method}.json']", "--input_shape", "[1,1,32,32]",
        "--converter_kwargs",
        "{'input_names': ['image'], 'output_names': ['pred'], "
        "'dynamic_axes': {'image': {0: 'batch', 2: 'x', 3: 'y'}, 'pred': {0: 'batch', 2: 'X', 3: 'Y'}}}",
    )


def peak_rss_of_bundle_inference(work: Path) -> tuple[float, str]:
    """Peak RSS (GB) of `monai.bundle run inference.json` on one 1024x1024 NIH radiograph at x2 with the
    VDSR architecture (untrained x2 weights: memory does not depend on weight values)."""
    image = sorted((shared_data_dir() / "nih_cxr14" / "images_1024").glob("*.png"))[0]
    ckpt = work / "vdsr_x2.pt"
    torch.save(method_config("vdsr", 2).get_parsed_content("network_def").state_dict(), ckpt)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # 0: this must be the first child
    bundle(
        "run", "--config_file", "configs/inference.json", "--method", "vdsr", "--scale", "2",
        "--ckpt_path", str(ckpt), "--input", str(image), "--output_dir", str(work / "sr"),
    )
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        raise RuntimeError("could not measure the child's peak RSS")
    return peak_kb / 1024**2, image.name


def main() -> int:
    torch.manual_seed(0)
    lr = torch.rand(1, 1, 128, 128)
    rows = []
    inferer = SRInferer(scale=4)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # first, while no other child process has run: RUSAGE_CHILDREN keeps the largest peak of any child
        rss_gb, image = peak_rss_of_bundle_inference(work)
        # all PyTorch timings first: ONNX Runtime's idle threads spin for a while after each run and would
        # slow PyTorch down if a session were alive
        networks = {m: load_network(m, 4) for m in ("srcnn", "vdsr")}
        t_torch = {m: median_seconds(lambda x: inferer(x, net), lr) for m, net in networks.items()}
        winograd = load_network("vdsr", 4, winograd=True)
        t_winograd = median_seconds(lambda x: inferer(x, winograd), lr)
        with torch.inference_mode():
            diff_winograd = (inferer(lr, winograd) - inferer(lr, networks["vdsr"])).abs().max().item()
        for method, network in networks.items():
            onnx_path = work / f"{method}.onnx"
            export_onnx(method, onnx_path)
            onnx = OnnxNetwork(onnx_path)
            t_onnx = median_seconds(lambda x: inferer(x, onnx), lr)
            with torch.inference_mode():
                diff = (inferer(lr, network) - inferer(lr, onnx)).abs().max().item()
            rows.append((method, t_torch[method], t_onnx, diff))
    cpu = platform.processor() or platform.machine()
    lines = [
        "| method | PyTorch eager (s) | ONNX Runtime (s) | PyTorch / ONNX | max abs diff |",
        "|---|---|---|---|---|",
    ] + [f"| {m} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {d:.1e} |" for m, a, b, d in rows]
    lines.append(
        f"| vdsr, `--winograd` (PyTorch, Winograd F(4x4,3x3)) | {t_winograd:.3f} | | {t_torch['vdsr'] / t_winograd:.2f}x "
        f"faster than eager | {diff_winograd:.1e} vs eager |"
    )
    vdsr = next(r for r in rows if r[0] == "vdsr")
    best = min(vdsr[1], t_winograd)
    bars = [
        f"- VDSR, one 512x512 output in PyTorch: {best:.2f} s with `--winograd` ({vdsr[1]:.2f} s eager) "
        f"(bar: <= 2 s) -> {'met' if best <= 2 else 'NOT met'}",
        f"- ONNX Runtime vs PyTorch eager for VDSR: {vdsr[1] / vdsr[2]:.2f}x (bar: ONNX faster) -> "
        f"{'met' if vdsr[2] < vdsr[1] else 'NOT met'}",
        f"- peak RSS of bundle inference, one 1024x1024 image at x2 (2048x2048 output, VDSR): {rss_gb:.2f} GB "
        f"(bar: < 3 GB) -> {'met' if rss_gb < 3 else 'NOT met'}",
    ]
    doc = f"""# Speed and memory

Machine: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads.
Produced by (from the repository root):

    .venv/bin/python benchmarks/speed.py

One 128x128 LR image to a 512x512 output at x4 through the project's inferer (`SRInferer`), median of
{REPEATS} runs after a warm-up; ONNX models exported with the bundle's `onnx_export` command (see
docs/deployment.md) and run by ONNX Runtime's CPU provider.

{chr(10).join(lines)}

Memory: `python -m monai.bundle run --config_file configs/inference.json --method vdsr --scale 2` on
`{image}` (1024x1024) with untrained x2 VDSR weights (only x4 is shipped; memory does not depend on the
weight values), peak resident set size of that process: {rss_gb:.2f} GB.

Bars of issue 2:
{chr(10).join(bars)}
"""
    (REPO / "docs" / "benchmarks.md").write_text(doc)
    print("\n".join(lines + [""] + bars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
