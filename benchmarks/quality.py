"""Quality benchmark: every method with weights, against the interpolation baseline, on the NIH ChestX-ray14
test split at x4.

Writes docs/results/quality.json (the scores as data), docs/results.md (its mean ± sd table with the command
that made it) and docs/figures/comparison*.png (the figure of FIGURE_IMAGE, made apart when ``--limit`` leaves
it out); ``--figure-only`` remakes just the figure (one image: minutes, not the whole split's hours) and its
block of docs/results.md, the table left as its last full run wrote it.
Run: .venv/bin/python -m benchmarks.quality [--limit N] [--methods a,b | --figure-only]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import DOCS
from monai_sr_bundle import methods, results
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.evaluation import evaluate

FIGURE_IMAGE = "00000344_003.png"  # a test image with an effusion box: the zoom row shows the boxed region
#: where the figure's block of docs/results.md starts (``--figure-only`` replaces it)
FIGURE_MARK = "<!-- figure: "


def linked_pages() -> list[str]:
    """The comparison pages that the figure block of docs/results.md links: the ones a run of this benchmark
    wrote, which the next replaces or removes (any other file in docs/figures is not this benchmark's)."""
    page = DOCS / "results.md"
    text = page.read_text() if page.is_file() else ""
    block = text[text.index(FIGURE_MARK) :] if FIGURE_MARK in text else ""
    return re.findall(r"\(figures/(comparison(?:_\d+)?\.png)\)", block)


def figure_block(work: Path, predictors: dict, command: str) -> str:
    """Copy the pages of FIGURE_IMAGE's figure from ``work`` to docs/figures/comparison*.png, removing the pages of
    the last figure that this one has not (no other file); their Markdown."""
    pages = sorted(work.glob(f"figure_{Path(FIGURE_IMAGE).stem}*.png"))  # page 1, _2, ...
    if not pages:
        raise InputError(f"{work}: no figure of {FIGURE_IMAGE} was made; the figure in docs is left as it was.")
    figures = [f"comparison{'' if number == 1 else f'_{number}'}.png" for number in range(1, len(pages) + 1)]
    stale = set(linked_pages()) - set(figures)
    (DOCS / "figures").mkdir(parents=True, exist_ok=True)
    for page, name in zip(pages, figures):
        harness.docs_figure(page, DOCS / "figures" / name)
    for name in stale:
        (DOCS / "figures" / name).unlink(missing_ok=True)
    return f"""{FIGURE_MARK}made by `.venv/bin/{command}` -->
{chr(10).join(f"![LR | methods | HR: whole image, zoom, error](figures/{f})" for f in figures)}

{FIGURE_IMAGE}: LR (nearest), then each method ({", ".join(predictors)}), then HR, at most 7 columns a page
(`docs/figures/comparison*.png`); rows: the whole image with the abnormality box outlined, the box enlarged, and
the absolute error there (black 0, white >= 0.1, one scale for every method), every panel in the HR image's window.
Made by `.venv/bin/{command}`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, methods=True)
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all 116)")
    parser.add_argument("--figure-only", action="store_true", help=f"only the figure of {FIGURE_IMAGE}")
    return harness.main(parser, run, argv)


def run(args: argparse.Namespace) -> int:
    figure_item = [d for d in nih_datalist("test") if Path(d["label"]).name == FIGURE_IMAGE]
    if not figure_item:
        raise InputError(f"{FIGURE_IMAGE}, the image of the figure, is not in the NIH test split; check --data.")
    datalist = nih_datalist("test", limit=args.limit)
    first = [d for d in datalist if Path(d["label"]).name == FIGURE_IMAGE]
    datalist = first + [d for d in datalist if d not in first]  # figure of the boxed image first
    baseline = methods.baseline_name()
    names = args.methods.split(",") if args.methods else methods.names()
    usable = [methods.get(m, 4) for m in names + ([] if baseline in names else [baseline])]  # gains need it
    usable = [m for m in usable if not m.trainable or m.weights_available]
    predictors = {m.name: m.predictor() for m in usable}
    if args.figure_only:  # of one image, whatever --limit says
        work = Path(args.work) / "figure"
        evaluate(figure_item, predictors, work, figures=1, lpips=False)
        page = DOCS / "results.md"
        text = page.read_text()
        page.write_text(text[: text.index(FIGURE_MARK)] + figure_block(work, predictors, args.command))
        return 0
    start = time.perf_counter()
    summary = evaluate(datalist, predictors, args.work, figures=1)
    figure_work = Path(args.work)
    if not first:  # --limit left the figure's image out: its figure is made apart, as --figure-only makes it
        figure_work = figure_work / "figure"
        evaluate(figure_item, predictors, figure_work, figures=1, lpips=False)
    minutes = (time.perf_counter() - start) / 60
    n, boxed = len(datalist), sum(1 for d in datalist if d["boxes"])
    data = f"NIH ChestX-ray14 test split, first {n} images (512 px HR, LR antialiased bicubic x4); {boxed} with boxes"
    written = harness.record(args, data, usable, {"main": summary}, minutes, images=n, boxed_images=boxed)
    table = results.format_table(results.read(written)["tables"]["main"])
    psnr = {m: summary[m]["psnr"][0] for m in summary}
    ssim = {m: summary[m]["ssim"][0] for m in summary}
    bars = []
    for m in usable:
        if m.name == baseline:
            continue
        gain = psnr[m.name] - psnr[baseline]
        bars.append(f"- {m.name} - {baseline}: PSNR {gain:+.2f} dB, SSIM {ssim[m.name]:.4f} vs {ssim[baseline]:.4f}")
    doc = f"""# Results: x4 super-resolution of chest X-rays

NIH ChestX-ray14 test split ({n} images of the fixed patient-level split in `images.csv`), HR = the
512x512 PNGs, LR = antialiased bicubic x4 downsampling (128x128). Mean ± sd over images; in-box metrics
over the {boxed} images that have official NIH abnormality boxes. Weights:
`monai_sr_bundle/models/` (see `weights.json` for how each was trained).

Produced by (from the repository root, {minutes:.0f} min on a 2-core CPU):

    .venv/bin/{args.command}

{table}

Gains over the baseline:
{chr(10).join(bars)}

{figure_block(figure_work, predictors, args.command)}"""
    (DOCS / "results.md").write_text(doc)
    print(table)
    print("\n".join(bars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
