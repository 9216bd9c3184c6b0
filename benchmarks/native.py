"""No-reference check on native radiographs, where no HR image exists: every shipped method super-resolves the
three real CR DICOMs of the shared data and the external site's radiographs as they are stored (no synthetic
LR), and is scored by what can be measured without a reference: the LR-consistency (the SR shrunk back by
antialiased bicubic against the input: SR that invents or moves structure drifts from it) and, for the
sampled methods, the spread of their samples (where they disagree, they guess).

Each image is read with the method's own intensity map, then a ``--crop`` px LR square centred on the right
mid lung (:func:`lung_patch`) is taken, native pixels, so that every method,
the sampled ones included, runs on the same tissue in CPU time. Sampled methods run on the first
``--sampled-images`` images with ``--samples`` draws each. Writes docs/results_native.md and
docs/figures/native_x<scale>.png.
Run: .venv/bin/python -m benchmarks.native [--scales 2,4] [--crop 128] [--limit N] [--methods a,b]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import REPO
from benchmarks.robustness import add_external, external_images
from monai_sr_bundle import methods
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.data.writers import write_figure
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.report import PANEL
from monai_sr_bundle.uncertainty import uncertainty_maps

HEAD = ["method", "images", "LR-consistency PSNR (dB) ↑", "mean abs(↓SR - LR) ↓", "sample SD ↓", "s/image"]


def lung_patch(shape: Sequence[int]) -> list[float]:
    """Where a figure zooms on an image without boxes: a patch of the patient's right mid lung on a frontal
    radiograph of spatial ``shape`` (X, Y), a quarter of each side, where SR's gains and its invented texture
    show; (x0, y0, x1, y1) as boxes are."""
    x, y = (float(n) for n in shape)
    return [0.15 * x, 0.30 * y, 0.40 * x, 0.55 * y]


def _to_display(img: torch.Tensor) -> np.ndarray:
    """(1, X, Y) in [0, 1] -> (rows, cols) uint8 for PIL."""
    return (np.asarray(img[0], dtype=np.float32).T.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def comparison_figure(
    panels: Mapping[str, torch.Tensor], path: str | os.PathLike, box: Sequence[float] | None = None
) -> Path:
    """Save panels side by side with titles, each shown :data:`~monai_sr_bundle.report.PANEL` px wide; with
    ``box`` (x0, y0, x1, y1 at the panels' size) a second row shows that region enlarged to the panel, where SR
    differences are visible. Panels must share one size."""
    from PIL import Image, ImageDraw

    images = {k: _to_display(v) for k, v in panels.items()}
    rows, cols = next(iter(images.values())).shape
    width = min(cols, PANEL)
    height = max(1, round(rows * width / cols))
    title_h = 24
    zoom = None
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        side = max(x1 - x0, y1 - y0, 32)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        x0, y0 = min(max(cx - side // 2, 0), cols - side), min(max(cy - side // 2, 0), rows - side)
        zoom = (x0, y0, x0 + side, y0 + side)
    canvas = Image.new("L", (width * len(images), title_h + height * (2 if zoom else 1)), 0)
    draw = ImageDraw.Draw(canvas)
    fit = width / cols
    for i, (title, arr) in enumerate(images.items()):
        tile = Image.fromarray(arr)
        canvas.paste(tile.resize((width, height), Image.LANCZOS), (i * width, title_h))
        draw.text((i * width + 4, 4), title, fill=255)
        if zoom:
            canvas.paste(tile.crop(zoom).resize((width, height), Image.NEAREST), (i * width, title_h + height))
            outline = [round(v * fit) for v in zoom]
            draw.rectangle(
                (i * width + outline[0], title_h + outline[1], i * width + outline[2], title_h + outline[3]),
                outline=255,
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_figure(canvas, path)


def lung_crop(image: torch.Tensor, crop: int) -> torch.Tensor:
    """The ``crop`` px square (or the whole image where it is smaller) centred on :func:`lung_patch`."""
    x, y = image.shape[-2:]
    x0, y0, x1, y1 = lung_patch((x, y))
    sx, sy = min(crop, x), min(crop, y)
    cx = int(min(max((x0 + x1) / 2 - sx / 2, 0), x - sx))
    cy = int(min(max((y0 + y1) / 2 - sy / 2, 0), y - sy))
    return image[:, cx : cx + sx, cy : cy + sy]


def score(lr: torch.Tensor, draws: torch.Tensor, scale: int) -> tuple[dict, dict]:
    """One image's row (LR-consistency PSNR and mean gap, sample SD) and its maps, from its SR ``draws``
    (N, 1, sX, sY) of the LR ``lr`` (1, X, Y)."""
    maps = uncertainty_maps(lr[None], draws[:, None], scale)
    gap = maps["lr_consistency"]
    mse = float(gap.square().mean())
    row = {
        "consistency_psnr": 10 * np.log10(1.0 / max(mse, 1e-12)),
        "gap": float(gap.mean()),
        "sd": float(maps["std"].mean()) if len(draws) > 1 else None,
    }
    return row, maps


def inputs(external: str | None, limit: int | None) -> dict[str, list[Path]]:
    """The native images by source: the CR DICOMs and the external site's files."""
    dicoms = sorted((shared_data_dir() / "cxr_dicom").glob("*.dcm"))
    if not dicoms:
        raise InputError(f"{shared_data_dir() / 'cxr_dicom'}: no CR DICOM there; set MONAI_SR_DATA to the shared data.")
    site = [Path(i["label"]) for i in external_images(external)]
    return {"CR DICOM": dicoms[:limit] if limit else dicoms, "external site": site[:limit] if limit else site}


def summary(rows: list[dict], order: list[str]) -> dict[str, dict]:
    """Per method: its images and the means of its LR-consistency, gap, sample SD (sampled methods) and seconds."""
    found = {}
    for name in order:
        mine = [r for r in rows if r["method"] == name]
        if mine:
            sds = [r["sd"] for r in mine if r["sd"] is not None]
            found[name] = {"images": len(mine), "sd": float(np.mean(sds)) if sds else None}
            found[name] |= {k: float(np.mean([r[k] for r in mine])) for k in ("consistency_psnr", "gap", "seconds")}
    return found


def table(found: dict[str, dict]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for name, row in found.items():
        sd = "" if row["sd"] is None else f"{row['sd']:.4f}"
        cells = [name, str(row["images"]), f"{row['consistency_psnr']:.2f}", f"{row['gap']:.4f}", sd]
        lines.append("| " + " | ".join([*cells, f"{row['seconds']:.2f}"]) + " |")
    return "\n".join(lines)


def run_scale(scale: int, wanted: list[str], sources: dict[str, list[Path]], args, found: dict) -> str:
    """The sections of one scale: a table per source and a figure of the first image; each table's
    :func:`summary` and the methods' weights go into ``found``."""
    usable = [m for m in (methods.get(n, scale) for n in wanted) if m.weights_available or not m.trainable]
    if not usable:
        return ""
    predictors = {m.name: m.predictor() for m in usable}
    found["used"] += usable
    sections, panels = [], {}
    for source, paths in sources.items():
        rows = []
        for i, path in enumerate(paths):
            crops = {}  # the image read once per intensity map
            for name, predictor in predictors.items():
                sampled = predictor.method.stochastic
                if sampled and i >= args.sampled_images:
                    continue
                key = str(predictor.intensity)
                if key not in crops:
                    crops[key] = lung_crop(read_image(path, predictor.intensity), args.crop)
                lr = crops[key]
                start = time.perf_counter()
                if sampled:
                    draws = torch.stack([predictor(lr, seed=s).as_tensor() for s in range(args.samples)])
                else:
                    draws = predictor(lr).as_tensor()[None]
                seconds = (time.perf_counter() - start) / len(draws)
                row, maps = score(lr.as_tensor(), draws, scale)
                rows.append({"method": name, "image": path.name, "seconds": seconds, **row})
                if i == 0 and not sections:  # the figure: the first image of the first source
                    nearest = lr.as_tensor().repeat_interleave(scale, 1).repeat_interleave(scale, 2)
                    panels.setdefault("LR (nearest)", nearest)
                    panels[name] = maps["sr"][0]
                    if sampled:
                        panels[f"SD {name} (x10)"] = (maps["std"][0] * 10).clamp(0, 1)
        found["tables"][f"x{scale}, {source}"] = summary(rows, list(predictors))
        text = table(found["tables"][f"x{scale}, {source}"])
        print(f"\nx{scale}, {source}:\n{text}", flush=True)
        sections.append(f"## x{scale}, {source} ({len(paths)} images)\n\n{text}\n")
    figure = REPO / "docs" / "figures" / f"native_x{scale}.png"
    size = next(iter(panels.values())).shape[-2:]
    comparison_figure(panels, figure, [size[0] / 4, size[1] / 4, size[0] * 3 / 4, size[1] * 3 / 4])
    first = next(iter(sources.values()))[0].name
    sections.append(f"![native x{scale}](figures/{figure.name})\n\nThe first CR DICOM ({first}), its crop: LR, each "
                    "method, the sampled methods' sample SD; the bottom row enlarges the centre.\n")  # fmt: skip
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, work=False, methods=True)
    parser.add_argument("--scales", default="2,4", help="SR factors; methods without weights there are left out")
    parser.add_argument("--crop", type=int, default=128, help="LR crop edge in px, centred on the right mid lung")
    parser.add_argument("--limit", type=int, default=None, help="first N images of each source (default: all)")
    parser.add_argument("--sampled-images", type=int, default=2, help="images per source for sampled methods")
    parser.add_argument("--samples", type=int, default=3, help="draws per image of a sampled method")
    add_external(parser)
    return harness.main(parser, run, argv)


def run(args: argparse.Namespace) -> int:
    if args.crop < 16 or args.samples < 2 or args.sampled_images < 0:
        raise InputError(
            "--crop must be at least 16 px, --samples at least 2 (a spread needs two), --sampled-images not negative."
        )
    sources = inputs(args.external, args.limit)
    wanted = args.methods.split(",") if args.methods else methods.names()
    for name in wanted:
        methods.get(name)  # an unknown name is one sentence before anything runs
    start = time.perf_counter()
    found = {"tables": {}, "used": []}
    body = "\n".join(run_scale(int(s), wanted, sources, args, found) for s in args.scales.split(","))
    minutes = (time.perf_counter() - start) / 60
    data = ", ".join(f"{len(paths)} {source} images" for source, paths in sources.items())
    data += f" as stored, a {args.crop} px LR crop of each on the right mid lung"
    harness.record(args, data, found["used"], found["tables"], minutes, samples=args.samples,
                   sampled_images=args.sampled_images)  # fmt: skip
    doc = f"""# No-reference check on native radiographs

No HR image exists for a radiograph as it was acquired, so PSNR cannot be measured on it. What can be: the
**LR-consistency**, how far the SR image, shrunk back by antialiased bicubic, lies from the input (in [0, 1]
units of the method's intensity map; interpolation itself is not perfectly consistent, so compare each
method with bicubic), and for sampled methods the **sample SD**, the mean per-pixel standard deviation of
{args.samples} draws (where the draws disagree the model is guessing). A high consistency does not prove
the detail real; a low one says the SR changed what the input shows: detail it does not support, or, for
a method trained on noisy LR, the noise it removes. Inputs: the three real CR DICOMs of the shared data
(`cxr_dicom/`) and the external site (`external_cxr_mhh`, never trained, tuned or selected on), each as
stored, a {args.crop} px crop centred on the right mid lung. Sampled methods on the first
{args.sampled_images} images of each source.

Produced by (from the repository root, {minutes:.0f} min on a 2-core CPU):

    .venv/bin/{args.command}

{body}"""
    (REPO / "docs" / "results_native.md").write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
