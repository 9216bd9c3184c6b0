"""Store a method's shipped weights as compactly as no result notices: the tracked tree must stay small enough
for a GPU call to carry it (64 MiB with the training data), and most of it is weights.

The stored weights and each smaller storage (``weights.compact_state``: int8 convolution weights with a scale
per output channel, the thin layers at the ends in fp16; else fp16) super-resolve the first ``--images`` NIH
validation images, clean and degraded (chest CT weights: validation slices of the CT split, clean), in the fp32
network (a sampled method with its default seed, so both draw the same noise). The smallest storage whose
mean PSNR moves by at most ``--tolerance`` dB (0.01) under every degradation replaces the file.
Its ``weights.json`` record keeps the command and data of the training and gains the new sha256 and
``stored``: the check's figures, after those of the file it replaced.

    .venv/bin/python tools/compact_weights.py lrunet --scale 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def storage_of(state: dict) -> str:
    """How a state dict is stored: one of ``weights.STORAGES``, or ``fp32`` (the widest of its float tensors)."""
    import torch

    from monai_sr_bundle.weights import INT8_SCALE

    scales = [v for k, v in state.items() if k.endswith(INT8_SCALE)]
    if scales:
        return "int8_kernel" if any(s.ndim > 1 for s in scales) else "int8"
    return "fp32" if any(v.dtype == torch.float32 for v in state.values()) else "fp16"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from monai_sr_bundle import methods
    from monai_sr_bundle.weights import STORAGES, compact_state, expand_state, weights_record

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--modality", default="cxr")
    parser.add_argument("--images", type=int, default=8, help="NIH validation images to compare on")
    parser.add_argument("--degradations", nargs="+", help="default: bicubic and real_eval_x<scale> (CT: bicubic)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest PSNR change allowed (dB)")
    parser.add_argument("--storage", choices=STORAGES, help="try only this one (default: smallest that passes)")
    args = parser.parse_args(argv)

    import torch

    from monai_sr_bundle.data.ct import write_ct_datalist
    from monai_sr_bundle.data.datalist import load_datalist, nih_datalist
    from monai_sr_bundle.evaluation import evaluate
    from monai_sr_bundle.weights import write_weights

    method = methods.get(args.method, args.scale, args.modality)
    path = method.weights_path
    record = weights_record(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    before = storage_of(state)
    tried = [s for s in STORAGES if s == (args.storage or s)]
    tried = tried[: tried.index(before)] if before in tried else tried
    if not tried:
        print(f"{path.name}: already stored in {before}")
        return 0
    ct = args.modality == "ct"
    degradations = args.degradations or ["bicubic"] + ([] if ct else [f"real_eval_x{args.scale}"])
    with tempfile.TemporaryDirectory() as work:
        if ct:
            items = load_datalist(write_ct_datalist(Path(work) / "ct"), "validation", limit=args.images)
        else:
            items = nih_datalist("val", limit=args.images)
        data = "chest CT validation slices" if ct else "NIH validation images"
        for storage in tried:
            compact = compact_state(expand_state(state), storage)
            candidate = Path(work) / f"{storage}_{path.name}"
            torch.save(compact, candidate)
            predictors = {before: method.predictor(path), storage: method.predictor(candidate)}
            changes = {}
            for degradation in degradations:
                folder = Path(work) / storage / degradation
                summary = evaluate(items, predictors, folder, degradation, lpips=False, progress=False)
                changes[degradation] = summary[storage]["psnr"][0] - summary[before]["psnr"][0]
            figures = ", ".join(f"{d} {c:+.4f} dB" for d, c in changes.items())
            print(f"{path.name}: {storage} - {before} mean PSNR on {len(items)} {data}: {figures}")
            if max(abs(c) for c in changes.values()) > args.tolerance:
                print(f"not {storage}: the change exceeds {args.tolerance} dB")
                continue
            stored = f"{storage}; mean PSNR change against the {before} file on the first {len(items)} {data}"
            stored += f": {figures}"
            if record.get("stored"):
                stored += f" (that file: {record['stored']})"
            provenance = {k: v for k, v in record.items() if k != "sha256"}
            write_weights(compact, path, {**provenance, "stored": stored})
            print(f"{path.name}: stored in {storage} ({path.stat().st_size / 2**20:.1f} MiB)")
            return 0
    print(f"{path.name}: kept in {before}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
