"""Inference engines (monai_sr_bundle/engine.py) against PyTorch eager on this CPU: per deterministic method,
the network's seconds for one 512 px radiograph to 2048 px (the whole image, no tiles) in PyTorch fp32 and
bf16 autocast, ONNX Runtime fp32 and OpenVINO fp32 and bf16 (median of 3 after a warm-up); its GFLOP per
radiograph (torch's FLOP counter) and the effective GFLOP/s beside a 4096 GEMM's (measured in the same run);
the first use's export; the PSNR change of each engine precision against PyTorch fp32 on NIH test images and
the external site (x4, clean LR), which decides where ``auto`` may use bf16. Then the default's whole request:
``monai-sr sr`` of one 512 px PNG in a fresh process (median of 3), a Slicer worker's later request, and the
1955x1841 CR at x4 (wall time and peak RSS). Per sampling method: its denoiser's seconds per step on each
runtime, one whole 128 -> 512 px sample in PyTorch fp32 and with its parts on OpenVINO bf16, and the PSNR change
of that at the same seed. Writes the engines block of docs/benchmarks.md.

Run: .venv/bin/python -m benchmarks.engines [--methods a,b] [--images 20] [--sampled-images 8]
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import REPO, write_block
from benchmarks.robustness import external_images
from monai_sr_bundle import engine, methods
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.data.paths import shared_data_dir

DOC = REPO / "docs" / "benchmarks.md"
MARKERS = ("<!-- engines: start -->", "<!-- engines: end -->")
#: (runtime, precision) columns, PyTorch fp32 first: the reference
COLUMNS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]
#: bf16 may serve by default where the PSNR moves by at most this (dB), on NIH and on the external site
BF16_TOLERANCE = 0.05
#: a sampling method's whole sample: PyTorch fp32 against its parts on the engine where ``auto`` puts them
SAMPLE_COLUMNS = [("torch", "fp32"), ("openvino", "bf16")]
CR = "cxr_dicom/pydicom-data_RG1_J2KI_CR_chest.dcm"


def gemm_gflops(dtype) -> float:
    """GFLOP/s of a 4096 x 4096 matrix product in ``dtype`` (median of 5 after a warm-up)."""
    import torch

    a, b = torch.rand(4096, 4096, dtype=dtype), torch.rand(4096, 4096, dtype=dtype)
    return 2 * 4096**3 / harness.median_seconds(lambda _: a @ b, None) / 1e9


def gflop(network, noise_aware: bool) -> float:
    """GFLOP of one 512 -> 2048 radiograph: counted at 128 px and scaled by the pixels (convolutions' cost is
    per pixel)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 1, 128, 128)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(x, 2.0) if noise_aware else network(x)
    return counter.get_total_flops() * 16 / 1e9


def served(method, runtime: str, precision: str):
    """The method's network as the predictor runs it on ``runtime`` in ``precision``, and the autocast it
    needs (PyTorch bf16)."""
    predictor = method.predictor(runtime=runtime, precision=precision)
    return predictor.network, predictor.autocast


def network_seconds(network, context, noise_aware: bool, size: int = 512) -> float:
    import torch

    x = torch.rand(1, 1, size, size)
    kwargs = {"noise_level": 2.0} if noise_aware else {}

    def once(_):
        with context():
            network(x, **kwargs)

    return harness.median_seconds(once, None, repeats=3)


def denoiser_step_seconds(method) -> dict:
    """A sampler's denoiser, one step at the shape its default tile gives (a 128 px LR image, seen by a hook),
    in PyTorch fp32, ONNX Runtime and OpenVINO fp32 and bf16: whether the engine pays per step."""
    import torch
    from monai.data import MetaTensor

    from monai_sr_bundle.onnx_runtime import export_denoiser

    predictor, seen = method.predictor(runtime="torch", steps=2), []
    network = predictor.network
    hook = network.denoiser.register_forward_pre_hook(lambda m, args, kw: seen.append(args[0].shape), with_kwargs=True)
    with torch.inference_mode():
        predictor(MetaTensor(torch.rand(1, 128, 128)))
    hook.remove()
    x, t = torch.randn(seen[0]), torch.full((seen[0][0],), network.train_steps // 2)
    with torch.inference_mode():
        row = {"shape": list(seen[0]), "torch_fp32_s": harness.median_seconds(lambda _: network.denoiser(x, t), None)}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_denoiser(network, Path(tmp) / "denoiser.onnx")
        feed = {"sample": x.numpy(), "timesteps": t.numpy()}
        for runtime, precision in COLUMNS[2:]:  # the engines
            graph = engine.EngineNetwork(path, runtime, precision)
            row[f"{runtime}_{precision}_s"] = harness.median_seconds(lambda _: graph._run(feed), None)
    return row


def psnr_change(method, runtime: str, precision: str, items: list[dict]) -> float:
    """Mean PSNR (against HR) of ``runtime`` / ``precision`` less PyTorch fp32's, on ``items`` at x4, clean LR
    (a sampling method at the same seed)."""
    from monai_sr_bundle.evaluation import evaluate

    seed = {"seed": 0} if method.stochastic else {}
    with tempfile.TemporaryDirectory() as tmp:
        predictors = {"ref": method.predictor(runtime="torch", precision="fp32", **seed)}
        predictors["test"] = method.predictor(runtime=runtime, precision=precision, **seed)
        evaluate(items, predictors, tmp, "bicubic", lpips=False, figures=0, progress=False)
        with open(Path(tmp) / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    psnr = {name: np.mean([float(r["psnr"]) for r in rows if r["method"] == name]) for name in predictors}
    return float(psnr["test"] - psnr["ref"])


def sample_seconds(method, runtime: str, precision: str) -> float:
    """One sample of a 128 px LR image (512 px out) with the method's own sampler and steps, median of 3."""
    import torch
    from monai.data import MetaTensor

    predictor, x = method.predictor(runtime=runtime, precision=precision, seed=0), MetaTensor(torch.rand(1, 128, 128))
    return harness.median_seconds(lambda _: predictor(x), None, repeats=3)


#: a user's install (make's, without the test and MONAI Label packages that MONAI imports when it finds them,
#: seconds of a request's start): what the whole request is timed in, where it exists
USER_PYTHON = REPO / ".venv-user" / "bin" / "python"


def cli_request(python: str, args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GB) of one ``monai-sr sr`` process of ``python``."""
    return harness.timed_process([python, "-m", "monai_sr_bundle.cli", "sr", *args])


def worker_request(src: Path, out: Path) -> dict:
    """A Slicer worker's second request of the default method: seconds until its network starts, and in all."""
    from monai_sr_bundle.worker import Worker

    worker = Worker()
    worker.handle(json.dumps({"input": str(src), "output": str(out / "first")}))
    start = time.time()
    reply = worker.handle(json.dumps({"input": str(src), "output": str(out / "second")}))
    return {
        "to_network_s": reply["network_started"] - start,
        "total_s": time.time() - start,
        "runtime": reply["runtime"],
        "precision": reply["precision"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, methods=True)
    parser.add_argument("--images", type=int, default=20, help="NIH test and external images for the PSNR check")
    parser.add_argument("--sampled-images", type=int, default=8, help="of those, for a sampling method's PSNR check")
    parser.add_argument("--external", help="the external site's images (default: <data>/external_cxr_mhh/images)")
    parser.add_argument(
        "--python",
        default=str(USER_PYTHON) if USER_PYTHON.is_file() else sys.executable,
        help="the Python whose monai-sr the whole request runs (default: make's user install .venv-user, else this)",
    )
    return harness.main(parser, run, argv)


def run(args) -> int:
    import torch

    begun = time.perf_counter()
    names = args.methods.split(",") if args.methods else methods.names()
    chosen = [methods.get(n) for n in names]
    chosen = [m for m in chosen if m.trainable and m.exportable and m.weights_available]
    nih = nih_datalist("test")[: args.images]
    external = external_images(args.external)[: args.images]
    peak = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    print(f"4096 GEMM: {peak['fp32']:.0f} GFLOP/s fp32, {peak['bf16']:.0f} bf16", flush=True)
    table = {}
    cache = Path(tempfile.mkdtemp(prefix="engines-cache-"))
    os.environ[engine.CACHE_ENV] = str(cache)
    try:
        for method in chosen:
            row = {"gflop": gflop(method.load(), method.noise_aware)}
            for runtime in ("onnxruntime", "openvino"):
                shutil.rmtree(cache, ignore_errors=True)
                start = time.perf_counter()
                method.predictor(runtime=runtime, precision="fp32")
                row[f"export_{runtime}_s"] = time.perf_counter() - start
            for runtime, precision in COLUMNS:
                network, context = served(method, runtime, precision)
                row[f"{runtime}_{precision}_s"] = network_seconds(network, context, method.noise_aware)
            for where, items in (("nih", nih), ("external", external)):  # the others are fp32, or not served
                row[f"openvino_bf16_dpsnr_{where}"] = psnr_change(method, "openvino", "bf16", items)
            table[method.name] = row
            print(method.name, {k: round(v, 3) for k, v in row.items()}, flush=True)
        samplers = [m for m in map(methods.get, names) if m.stochastic and m.weights_available]
        steps = {}
        for m in samplers:
            row = steps[m.name] = denoiser_step_seconds(m)
            for runtime, precision in SAMPLE_COLUMNS:
                row[f"sample_{runtime}_{precision}_s"] = sample_seconds(m, runtime, precision)
            for where, items in (("nih", nih), ("external", external)):
                row[f"openvino_bf16_dpsnr_{where}"] = psnr_change(m, "openvino", "bf16", items[: args.sampled_images])
            print(m.name, "denoiser step", row, flush=True)
        default = methods.get(methods.default_name())
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(nih_datalist("test")[0]["label"])
            shutil.rmtree(cache, ignore_errors=True)  # the first request exports the default's graph
            requests = [cli_request(args.python, [str(src), "-o", f"{tmp}/cli{i}"])[0] for i in range(4)]
            worker = worker_request(src, Path(tmp))
            cr_wall, cr_rss = cli_request(args.python, [str(shared_data_dir() / CR), "-o", f"{tmp}/cr"])
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    request = {
        "default": default.name,
        "threads": torch.get_num_threads(),
        "python": args.python,
        "cli_512_first_s": requests[0],
        "cli_512_median_s": float(np.median(requests[1:])),
        "worker": worker,
        "cr_1955x1841_wall_s": cr_wall,
        "cr_1955x1841_peak_rss_gb": cr_rss,
    }
    print(request, flush=True)
    minutes = (time.perf_counter() - begun) / 60
    data = (
        f"NIH test images 1-{args.images} and {args.images} external-site images (x4, clean LR; sampling methods: "
        f"the first {args.sampled_images} of each); {CR}"
    )
    results = {"engines": table, "denoiser_step": steps}
    harness.record(args, data, chosen, results, minutes, gemm_gflops=peak, request=request)
    write_block(DOC, MARKERS, render(table, steps, peak, request, args.command, args.images, args.sampled_images))
    return 0


def render(table: dict, steps: dict, peak: dict, request: dict, command: str, images: int, sampled: int) -> str:
    cols = [f"{r} {p} (s)" for r, p in COLUMNS]
    head = ["method", "GFLOP", *cols, "best GFLOP/s", "export ORT / OV (s)"]
    head.append("ΔPSNR OV bf16 NIH / ext")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        times = [row[f"{r}_{p}_s"] for r, p in COLUMNS]
        cells = [name, f"{row['gflop']:.0f}", *(f"{t:.2f}" for t in times)]
        cells.append(f"{row['gflop'] / min(times):.0f}")
        cells.append(f"{row['export_onnxruntime_s']:.1f} / {row['export_openvino_s']:.1f}")
        cells.append(f"{row['openvino_bf16_dpsnr_nih']:+.3f} / {row['openvino_bf16_dpsnr_external']:+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    stepped = [c for c in COLUMNS if c != ("torch", "bf16")]
    step_head = ["method", "denoiser input", *(f"step {r} {p} (s)" for r, p in stepped)]
    step_head += [*(f"sample {r} {p} (s)" for r, p in SAMPLE_COLUMNS), "ΔPSNR OV bf16 NIH / ext"]
    step_lines = ["| " + " | ".join(step_head) + " |", "|" + "---|" * len(step_head)]
    for name, row in steps.items():
        cells = [name, "x".join(map(str, row["shape"])), *(f"{row[f'{r}_{p}_s']:.3f}" for r, p in stepped)]
        cells += [f"{row[f'sample_{r}_{p}_s']:.2f}" for r, p in SAMPLE_COLUMNS]
        cells.append(f"{row['openvino_bf16_dpsnr_nih']:+.3f} / {row['openvino_bf16_dpsnr_external']:+.3f}")
        step_lines.append("| " + " | ".join(cells) + " |")
    worker, threads = request["worker"], request["threads"]
    python = Path(request["python"])
    where = "a user's install" if python == USER_PYTHON else "the environment"  # an honest label off make's install
    python = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    return f"""{MARKERS[0]}
## Inference engines (issue 69)

Produced by `.venv/bin/{command}` ({time.strftime("%Y-%m-%d")}, {os.cpu_count()} CPU cores, torch
{threads} threads). One 512 px radiograph to 2048 px, the whole image in one call,
median of 3 after a warm-up; a 4096 GEMM reaches {peak["fp32"]:.0f} GFLOP/s fp32 and {peak["bf16"]:.0f} bf16
here. GFLOP: torch's FLOP counter at 128 px x 16. Export: the first use of a weights file (dynamo exporter,
then the known-answer check). ΔPSNR: OpenVINO bf16 against PyTorch fp32, mean over the first {images} NIH test
images and {images} external-site images (x4, clean LR); `auto` runs bf16 where it stays within
{BF16_TOLERANCE} dB.

{chr(10).join(lines)}

The sampling methods: their denoiser, one step at the shape a 128 px LR tile gives, on each runtime (the
sampler loop itself stays in PyTorch: it does not export; the denoiser and a latent method's decoder do); one
whole sample of a 128 px LR image (512 px out, the method's own sampler and steps, median of 3) in PyTorch fp32
and with those parts on OpenVINO bf16; and that sample's PSNR change at the same seed (first {sampled} NIH test
and {sampled} external images, x4, clean LR). `auto` puts a sampler's parts on the engine in bf16 only, where its
overlay says `"engine_bf16": true`: in fp32 an engine's step gains little or nothing on PyTorch's.

{chr(10).join(step_lines)}

The default request (`{request["default"]}`, `--runtime auto`): `monai-sr sr` of one 512 px PNG in a fresh
process of {where} (`{python}`), median of 3 with the graph cached: **{request["cli_512_median_s"]:.1f} s**
(the first use, exporting it: {request["cli_512_first_s"]:.1f} s); a Slicer worker's later request reaches the
network after {worker["to_network_s"]:.2f} s and returns the 2048 px result in {worker["total_s"]:.2f} s
({worker["runtime"]}, {worker["precision"]}); the 1955x1841 CR (JPEG 2000 DICOM) at x4:
{request["cr_1955x1841_wall_s"]:.0f} s, peak RSS {request["cr_1955x1841_peak_rss_gb"]:.2f} GB.
{MARKERS[1]}"""


if __name__ == "__main__":
    sys.exit(main())
