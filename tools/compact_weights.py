"""Store a method's shipped weights in half precision where that changes no result: the tracked tree must stay
small enough for a GPU call to carry it (64 MiB with the training data), and most of it is weights.

The fp32 and fp16 weights (loaded back into the fp32 network) super-resolve the first ``--images`` NIH
validation images, clean and degraded; the fp16 file replaces the fp32 one only when the mean PSNR moves by
at most ``--tolerance`` dB (0.01) under every degradation. Its ``weights.json`` record keeps the command and
data of the training and gains the new sha256 and ``stored``: the check's figures.

    .venv/bin/python tools/half_weights.py lrunet --scale 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--modality", default="cxr")
    parser.add_argument("--images", type=int, default=8, help="NIH validation images to compare on")
    parser.add_argument("--degradations", nargs="+", help="default: bicubic and real_eval_x<scale>")
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest PSNR change allowed (dB)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))

    import torch

    from monai_sr_bundle import methods, training
    from monai_sr_bundle.data.datalist import nih_datalist
    from monai_sr_bundle.evaluation import evaluate

    method = methods.get(args.method, args.scale, args.modality)
    path = method.weights_path
    record = methods.weights_record(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if all(v.dtype != torch.float32 for v in state.values()):
        print(f"{path.name}: already stored without fp32 tensors")
        return 0
    half = {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}
    degradations = args.degradations or ["bicubic", f"real_eval_x{args.scale}"]
    items = nih_datalist("val", limit=args.images)
    with tempfile.TemporaryDirectory() as work:
        candidate = Path(work) / path.name
        torch.save(half, candidate)
        predictors = {"fp32": method.predictor(path), "fp16": method.predictor(candidate)}
        changes = {}
        for degradation in degradations:
            summary = evaluate(items, predictors, Path(work) / degradation, degradation, lpips=False, progress=False)
            changes[degradation] = summary["fp16"]["psnr"][0] - summary["fp32"]["psnr"][0]
        worst = max(abs(c) for c in changes.values())
        figures = ", ".join(f"{d} {c:+.4f} dB" for d, c in changes.items())
        print(f"{path.name}: fp16 - fp32 mean PSNR on {len(items)} validation images: {figures}")
        if worst > args.tolerance:
            print(f"kept in fp32: the change exceeds {args.tolerance} dB")
            return 1
        stored = f"fp16; mean PSNR change against fp32 on the first {len(items)} NIH validation images: {figures}"
        provenance = {k: v for k, v in record.items() if k != "sha256"}
        training.write_weights(half, path, {**provenance, "stored": stored})
    print(f"{path.name}: stored in fp16 ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
