"""Robustness benchmark: every shipped method on radiographs as users have them, against the interpolation
baseline: the NIH test split clean, with the ``real_eval_x4`` degradation (blur, quantum and electronic
noise, JPEG), with ``jpeg50_x4`` and with light degradations (no antialiasing, area, a slight blur, low
noise, JPEG at quality 90: fixed points outside the training ranges), at 256, 512 and 1024 px, and an
external hospital (Hannover, ``external_cxr_mhh``: evaluation only, never trained, tuned or selected on)
clean and with ``real_eval_x4``; then the methods with x2 weights at x2. PSNR, SSIM, LPIPS, the PSNR gain over
the baseline on the same images with a bootstrap 68% interval, and a figure per condition with a zoomed crop.

Sampled (diffusion) methods run on the first ``--sampled-images`` images of each condition (CPU time); their
gain is over the baseline on those same images. Then the rule that picks the default method: each
deterministic method's network time for a 512 px radiograph (2048 px out, in this process), and among those
within :data:`SPEED_BAR` seconds, the best mean gain over the NIH and external x4 conditions. Writes
docs/results_robustness.md and docs/figures/robustness_<condition>.png.
Run: .venv/bin/python -m benchmarks.robustness [--limit N] [--sampled-images 8] [--methods a,b]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import REPO
from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import image_datalist, load_datalist, nih_datalist, write_nih_resized
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.evaluation import evaluate
from monai_sr_bundle.metrics import bootstrap_interval
from monai_sr_bundle.metrics.catalogue import CATALOGUE

#: the metrics of its tables (their labels and digits: the catalogue's)
SHOWN = ("psnr", "ssim", "lpips")
#: the default method's largest network time (s) for a 512 px radiograph to 2048 px on 2 CPU cores (issue 53)
SPEED_BAR = 4.5
#: the conditions the default rule averages: x4 at the NIH size and at the external site
RULE_IMAGES = ("nih_512", "external")
#: a method within this much (dB) of the best deterministic method on every condition, and never below the
#: baseline, is as good as the best specialist everywhere: the envelope (issue 70)
ENVELOPE_DB = 0.25
#: the baseline a condition-aware network must beat (issue 70): each image routed to the clean specialist or to
#: the degraded one by its LR's estimated noise level (:func:`router_threshold`); both networks unchanged
ROUTED = ("runet", "runet_real")
ROUTER = "router (runet / runet_real by noise estimate)"
#: electronic noise sd (intensities in [0, 1]) added to clean LR to check that a noise-aware method's estimate
#: grows with the noise
NOISE_STEPS = (0.0, 0.002, 0.005, 0.01, 0.02)


@dataclass(frozen=True)
class Condition:
    name: str
    what: str
    images: str  # nih_512, nih_256, nih_1024 or external
    degradation: str
    scale: int = 4
    figure: bool = True  # the tracked tree must leave room for a GPU call's training pack (tests/test_gpu_train.py)


CONDITIONS = [
    Condition("nih_clean", "NIH test split, 512 px, clean LR (antialiased bicubic)", "nih_512", "bicubic"),
    Condition("nih_real_eval", "NIH test split, 512 px, `real_eval_x4`", "nih_512", "real_eval_x4"),
    Condition("nih_jpeg50", "NIH test split, 512 px, `jpeg50_x4`", "nih_512", "jpeg50_x4"),
    Condition(
        "nih_noaa",
        "NIH test split, 512 px, light: bicubic without antialiasing",
        "nih_512",
        "bicubic_noaa_x4",
        figure=False,
    ),
    Condition(
        "nih_area", "NIH test split, 512 px, light: area (box-average) downsampling", "nih_512", "area_x4", figure=False
    ),
    Condition(
        "nih_light_bilinear",
        "NIH test split, 512 px, `light_bilinear_x4`",
        "nih_512",
        "light_bilinear_x4",
        figure=False,
    ),
    Condition("nih_light_blur", "NIH test split, 512 px, `light_blur_x4`", "nih_512", "light_blur_x4", figure=False),
    Condition("nih_light_noise", "NIH test split, 512 px, `light_noise_x4`", "nih_512", "light_noise_x4", figure=False),
    Condition("nih_jpeg90", "NIH test split, 512 px, `jpeg90_x4`", "nih_512", "jpeg90_x4", figure=False),
    Condition("nih_256", "NIH test split at 256 px (another pixel size), clean LR", "nih_256", "bicubic"),
    Condition("nih_1024", "NIH test images at 1024 px (the 20 of `images_1024`), clean LR", "nih_1024", "bicubic"),
    Condition("external_clean", "external site (Hannover CR/DX), clean LR", "external", "bicubic"),
    Condition("external_real_eval", "external site (Hannover CR/DX), `real_eval_x4`", "external", "real_eval_x4"),
    Condition("nih_clean_x2", "NIH test split, 512 px, clean LR, x2", "nih_512", "bicubic", 2, figure=False),
    Condition(
        "nih_real_eval_x2", "NIH test split, 512 px, `real_eval_x2`, x2", "nih_512", "real_eval_x2", 2, figure=False
    ),
]


def external_images(folder: str | None) -> list[dict]:
    """The external site's images (``--external``, by default the data's) as evaluation items; a missing folder
    or one without images is one sentence."""
    folder = Path(folder) if folder else shared_data_dir() / "external_cxr_mhh" / "images"
    items = image_datalist(folder) if folder.is_dir() else []
    if not items or any(Path(i["label"]) == folder for i in items):
        raise InputError(f"--external {folder}: no images there; give the external site's folder of radiographs.")
    return items


def datalist(images: str, work: Path, external: list[dict], limit: int | None) -> list[dict]:
    if images == "nih_512":
        items = nih_datalist("test")
    elif images == "nih_1024":
        items = nih_datalist("test", resolution=1024)
    elif images == "nih_256":
        items = load_datalist(write_nih_resized(work / "nih256", 256), "test")
    else:
        items = external
    return items[:limit] if limit else items


def rows_of(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def scores(rows: list[dict], order: list[str], baseline: str) -> dict[str, dict]:
    """One row per method: its images, mean metrics and, beside the baseline, its PSNR gain over the baseline on
    the same images with the bootstrap 68% interval (``psnr_gain``), and LPIPS as a share of the baseline's."""
    found = {}
    for name in order:
        mine = {r["image"]: r for r in rows if r["method"] == name}
        if not mine:
            continue
        base = {r["image"]: r for r in rows if r["method"] == baseline and r["image"] in mine}
        row = {"images": len(mine)}
        row |= {m: [float(np.mean([float(r[m]) for r in mine.values()]))] for m in SHOWN}
        if name != baseline:
            gains = [float(mine[i]["psnr"]) - float(base[i]["psnr"]) for i in base]
            row["psnr_gain"] = [float(np.mean(gains)), *bootstrap_interval(gains)]
            lpips = [float(mine[i]["lpips"]) for i in base], [float(r["lpips"]) for r in base.values()]
            row["lpips_ratio"] = float(np.mean(lpips[0]) / np.mean(lpips[1]))
        found[name] = row
    return found


def table(found: dict[str, dict], baseline: str) -> str:
    """:func:`scores` as the page's table."""
    head = ["method", "images", *(CATALOGUE[m].heading for m in SHOWN), "ΔPSNR vs " + baseline, "LPIPS / " + baseline]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in found.items():
        cells = [name, str(row["images"]), *(CATALOGUE[m].value(row[m][0]) for m in SHOWN)]
        if "psnr_gain" in row:
            gain, lo, hi = row["psnr_gain"]
            cells += [f"{gain:+.2f} [{lo:+.2f}, {hi:+.2f}]", f"{row['lpips_ratio']:.2f}"]
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_gain(rows: list[dict], name: str, baseline: str) -> float | None:
    """Mean per-image PSNR gain of ``name`` over ``baseline`` on the images both have, or None."""
    mine = {r["image"]: float(r["psnr"]) for r in rows if r["method"] == name}
    base = {r["image"]: float(r["psnr"]) for r in rows if r["method"] == baseline and r["image"] in mine}
    return float(np.mean([mine[i] - base[i] for i in base])) if base else None


def network_seconds(method: methods.Method, image: Path, repeats: int = 3) -> float:
    """Median time (s) of the loaded method's SR of ``image`` (tiles and all, reading and writing left out),
    after one warm-up call."""
    import torch

    from monai_sr_bundle.data.readers import read_image

    predictor = method.predictor()
    img = read_image(str(image), predictor.intensity)
    times = []
    with torch.inference_mode():
        predictor(img)
        for _ in range(repeats):
            start = time.perf_counter()
            predictor(img)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def default_rule(gains: dict[str, dict[str, float]], seconds: dict[str, float]) -> tuple[str, str | None]:
    """The rule's table (method, network time, within the bar, mean gain over the x4 NIH and external
    conditions, one column per condition) and the method it picks: the best mean gain among those within
    :data:`SPEED_BAR`. A method without a gain on every condition is not ranked."""
    conditions = sorted({c for g in gains.values() for c in g})
    head = ["method", "network s (512 px)", f"≤ {SPEED_BAR:g} s", "mean ΔPSNR", *conditions]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ranked = {}
    means = {n: float(np.mean(list(g.values()))) for n, g in gains.items() if len(g) == len(conditions)}
    for name in sorted(seconds, key=lambda n: -means.get(n, -np.inf)):
        mine, fast = gains.get(name, {}), seconds[name] <= SPEED_BAR
        if name in means and fast:
            ranked[name] = means[name]
        cells = [name, f"{seconds[name]:.2f}", "yes" if fast else "no"]
        cells.append(f"{means[name]:+.2f}" if name in means else "n/a")
        cells += [f"{mine[c]:+.2f}" if c in mine else "" for c in conditions]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), (max(ranked, key=ranked.get) if ranked else None)


def envelope(gains: dict[str, dict[str, float]], routed: dict[str, float] | None = None) -> str:
    """Each deterministic method's PSNR gain over the baseline per condition (``{condition: {method: gain}}``),
    how far it is behind the best there, and whether it is in the envelope: within :data:`ENVELOPE_DB` of the
    best on every condition and never below the baseline (a method without weights for a condition is not).
    ``routed`` (``{condition: gain}``): the :data:`ROUTER` baseline's row, measured against the shipped methods'
    best but not counted in it."""
    conditions = list(gains)
    names = sorted({n for g in gains.values() for n in g})
    best = {c: max(g.values()) for c, g in gains.items()}
    head = ["method", *conditions, f"within {ENVELOPE_DB:g} dB everywhere"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = {name: {c: gains[c].get(name) for c in conditions} for name in names}
    if routed:
        rows[ROUTER] = {c: routed.get(c) for c in conditions}
    for name, mine in rows.items():
        cells, inside = [name], 0
        for c in conditions:
            gain = mine[c]
            if gain is None:
                cells.append("")
                continue
            behind = best[c] - gain
            inside += behind <= ENVELOPE_DB and gain >= 0
            cells.append(f"**{gain:+.2f}**" if behind == 0 else f"{gain:+.2f} ({-behind:+.2f})")
        cells.append(f"{'yes' if inside == len(conditions) else 'no'} ({inside}/{len(conditions)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def synthesized_lr(items: list[dict], degradation: str, scale: int, intensity):
    """Each item's LR, (1, C, H, W), synthesized as :func:`evaluate` makes it (image ``i`` seeded ``i``)."""
    import torch

    from monai_sr_bundle.data.readers import read_image
    from monai_sr_bundle.transforms.presets import lr_synthesis

    synthesis = lr_synthesis(degradation, scale)
    for i, item in enumerate(items):
        yield torch.as_tensor(
            synthesis.set_random_state(i)({"label": read_image(str(item["label"]), intensity)})["image"]
        )[None]


def lr_levels(items: list[dict], degradation: str, scale: int, intensity) -> list[float]:
    """The estimated noise level of each item's LR."""
    from monai_sr_bundle.networks.noise import estimate_noise_level

    return [float(estimate_noise_level(lr)[0]) for lr in synthesized_lr(items, degradation, scale, intensity)]


def router_threshold(intensity, limit: int | None) -> float:
    """The :data:`ROUTER`'s level: halfway between the median estimates of clean and `real_eval_x4` LR of the
    first ``limit`` NIH validation images (never the test split)."""
    items = nih_datalist("val")[:limit]
    return float(np.mean([np.median(lr_levels(items, d, 4, intensity)) for d in ("bicubic", "real_eval_x4")]))


def routed_gain(rows: list[dict], levels: list[float], items: list[dict], threshold: float, baseline: str) -> float:
    """The :data:`ROUTER`'s mean PSNR gain over ``baseline``: per image, the clean specialist's row where the LR's
    level is at most ``threshold``, else the degraded one's."""
    psnr = {(r["image"], r["method"]): float(r["psnr"]) for r in rows}
    gains = []
    for item, level in zip(items, levels):
        image = Path(item["label"]).name
        chosen = ROUTED[0] if level <= threshold else ROUTED[1]
        if (image, chosen) in psnr and (image, baseline) in psnr:
            gains.append(psnr[image, chosen] - psnr[image, baseline])
    return float(np.mean(gains))


def noise_control(method: methods.Method, items: list[dict], work: Path, precision: str) -> dict:
    """A noise-aware method's level control on clean LR of ``items``: the mean PSNR with the level estimated
    and with it set to 0 (a clean image should need no noise reduction), and the median estimate on the same
    LR with each of :data:`NOISE_STEPS` of electronic noise added (it should grow with the noise)."""
    import torch

    from monai_sr_bundle.networks.noise import estimate_noise_level

    predictors = {"estimated": method.predictor(precision=precision)}
    predictors["zero"] = method.predictor(precision=precision, noise_level=0)
    folder = work / f"noise_control_{method.name}"
    evaluate(items, predictors, folder, "bicubic", lpips=False, progress=False)
    rows = rows_of(folder)
    psnr = {k: float(np.mean([float(r["psnr"]) for r in rows if r["method"] == k])) for k in predictors}
    generator = torch.Generator().manual_seed(0)
    estimates = {sd: [] for sd in NOISE_STEPS}
    for lr in synthesized_lr(items, "bicubic", method.scale, method.intensity):
        for sd in NOISE_STEPS:
            noisy = (lr + sd * torch.randn(lr.shape, generator=generator)).clamp(0, 1)
            estimates[sd].append(float(estimate_noise_level(noisy)[0]))
    medians = [float(np.median(estimates[sd])) for sd in NOISE_STEPS]
    return {"psnr": psnr, "estimate_median": dict(zip(map(str, NOISE_STEPS), medians))}


def noise_table(found: dict[str, dict]) -> str:
    head = ["method", "PSNR, level estimated (dB)", "PSNR, level 0 (dB)", "level 0 - estimated (dB)"]
    head += [f"median estimate, +{sd:g} noise" for sd in NOISE_STEPS] + ["estimates grow with the noise"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in found.items():
        medians = list(r["estimate_median"].values())
        grows = all(a < b for a, b in zip(medians, medians[1:]))
        cells = [name, f"{r['psnr']['estimated']:.2f}", f"{r['psnr']['zero']:.2f}"]
        cells += [f"{r['psnr']['zero'] - r['psnr']['estimated']:+.3f}", *(f"{m:.2f}" for m in medians)]
        lines.append("| " + " | ".join([*cells, "yes" if grows else "no"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__, methods=True)
    parser.add_argument("--limit", type=int, default=None, help="first N images of each condition (default: all)")
    parser.add_argument("--sampled-images", type=int, default=8, help="images per condition for sampled methods")
    parser.add_argument("--conditions", default=None, help="comma-separated conditions (default: all)")
    parser.add_argument("--no-timing", action="store_true", help="leave out the network times and the default rule")
    parser.add_argument(
        "--precision",
        default="fp32",
        help="the deterministic networks' arithmetic (default fp32: scores that do not depend on the processor; "
        "auto: bf16 on an engine where the CPU has it, as users get)",
    )
    add_external(parser)
    return harness.main(parser, run, argv)


def add_external(parser: argparse.ArgumentParser) -> None:
    """The option of every held-out benchmark: the external site's images, for evaluation only."""
    parser.add_argument("--external", help="the external site's images (default: <data>/external_cxr_mhh/images)")


def run(args: argparse.Namespace) -> int:
    work = Path(args.work)
    nih_datalist("test")  # the data are there before anything is written
    external = external_images(args.external)
    baseline = methods.baseline_name()
    wanted = args.methods.split(",") if args.methods else methods.names()
    conditions = [c for c in CONDITIONS if not args.conditions or c.name in args.conditions.split(",")]
    start = time.perf_counter()
    sections = []
    tables, used, everywhere = {}, {}, {}  # everywhere: {condition: {deterministic method: mean gain}}
    routed, threshold = {}, None  # the router baseline's gain per condition, and its level
    for c in conditions:
        usable = [methods.get(m, c.scale) for m in wanted if m != baseline]
        # the default first: its row under the baseline's, its panel on the figure's first page
        usable = sorted((m for m in usable if m.weights_available), key=lambda m: m.name != methods.default_name())
        if not usable:
            continue
        items = datalist(c.images, work, external, args.limit)
        fast = {m.name: m.predictor(precision=args.precision) for m in usable if not m.stochastic}
        sampled = {m.name: m.predictor() for m in usable if m.stochastic}
        base = methods.get(baseline, c.scale).predictor()
        folder = work / c.name
        rows = []
        if fast:
            evaluate(items, {baseline: base, **fast}, folder, c.degradation, figures=1, progress=False)
            rows += rows_of(folder)
        if sampled:
            evaluate(items[: args.sampled_images], {baseline: base, **sampled}, folder / "sampled", c.degradation,
                     progress=False)  # fmt: skip
            rows += [r for r in rows_of(folder / "sampled") if r["method"] != baseline or not fast]
        figure = REPO / "docs" / "figures" / f"robustness_{c.name}.png"
        if fast and c.figure:
            harness.docs_figure(sorted(folder.glob("figure_*.png"))[0], figure)  # the first page: the default's
        everywhere[c.name] = {name: mean_gain(rows, name, baseline) for name in fast}
        if all(name in fast for name in ROUTED):
            intensity = fast[ROUTED[0]].intensity
            threshold = router_threshold(intensity, args.limit) if threshold is None else threshold
            levels = lr_levels(items, c.degradation, c.scale, intensity)
            routed[c.name] = routed_gain(rows, levels, items, threshold, baseline)
        tables[c.name] = scores(rows, [baseline, *fast, *sampled], baseline)
        used |= {m.weights_name: m for m in usable}
        text = table(tables[c.name], baseline)
        print(f"\n{c.name}: {c.what}\n{text}", flush=True)
        picture = f"\n\n![{c.name}](figures/{figure.name})" if fast and c.figure else ""
        sections.append(f"## {c.name}: {c.what}\n\n{text}{picture}\n")

    def summary(heading: str, intro: str, text: str) -> None:
        print(f"\n{heading}\n{text}", flush=True)
        sections.append(f"## {heading}\n\n{intro}\n\n{text}\n")

    if everywhere:
        summary(
            "The envelope",
            f"Each deterministic method's ΔPSNR over {baseline} on every condition above (in brackets: how far "
            f"behind the best method there; bold: the best). In the envelope: within {ENVELOPE_DB:g} dB of the "
            f"best on every condition and never below {baseline}."
            + (
                f" The {ROUTER} row is the baseline a condition-aware network must beat: each image to "
                f"`{ROUTED[0]}` where its LR's estimated noise level is at most {threshold:.2f} grey levels (halfway "
                f"between the medians of clean and `real_eval_x4` LR of NIH validation images), else to "
                f"`{ROUTED[1]}`; it is not a shipped method and does not count as the best."
                if routed
                else ""
            ),
            envelope(everywhere, routed),
        )
    aware = [methods.get(m) for m in wanted if m != baseline and methods.get(m).noise_aware]
    aware = [m for m in aware if m.weights_available]
    noise = {}
    if aware and any(c.name == "nih_clean" for c in conditions):
        items = datalist("nih_512", work, external, args.limit)
        noise = {m.name: noise_control(m, items, work, args.precision) for m in aware}
        summary(
            "Noise-level control",
            "The noise-aware methods on `nih_clean`'s images (clean LR): the mean PSNR with the noise level "
            "estimated from each image, as every surface runs them, and overridden to 0 (`--noise-level 0`); and "
            "the median estimate (grey levels of 255) on the same LR with Gaussian noise of each sd (intensities "
            "in [0, 1]) added.",
            noise_table(noise),
        )
    rule_facts = {"envelope": everywhere, "router": {"threshold": threshold, "gains": routed}, "noise_control": noise}
    gains: dict[str, dict[str, float]] = {}  # the rule's: {method: {x4 condition at 512 px: mean gain}}
    for c in conditions:
        if c.scale == 4 and c.images in RULE_IMAGES:
            for name, gain in everywhere.get(c.name, {}).items():
                gains.setdefault(name, {})[c.name] = gain
    if not args.no_timing and gains:
        image = Path(nih_datalist("test")[0]["label"])
        seconds = {name: network_seconds(methods.get(name, 4), image) for name in gains}
        rule, chosen = default_rule(gains, seconds)
        marked = methods.default_name()
        verdict = f"The rule picks **{chosen}**; the overlay marked default is **{marked}**" + (
            " (the same)." if chosen == marked else ": they differ, change the overlays' `default`."
        )
        rule_facts["default_rule"] = {"seconds": seconds, "gains": gains, "picks": chosen, "marked": marked}
        summary(
            "The default method, by rule",
            f"Among the deterministic methods whose network takes at most {SPEED_BAR:g} s for a 512 px radiograph "
            f"(2048 px out; this process, the first NIH test image, median of 3 after a warm-up, on the runtime "
            f"and precision users get: `auto`), the best mean PSNR gain over the x4 conditions at 512 px: NIH and "
            f"the external site, clean and degraded.",
            f"{rule}\n\n{verdict}",
        )
    minutes = (time.perf_counter() - start) / 60
    data = "; ".join(f"{c.name}: {c.what}" for c in conditions if c.name in tables)
    harness.record(args, data, used.values(), tables, minutes, sampled_images=args.sampled_images, **rule_facts)
    who = "The methods of the command below" if args.methods else "Every shipped method"
    doc = f"""# Robustness: radiographs as users have them

{who} against {baseline} on conditions the models never trained, tuned or selected on
(HR = the images; LR made by the named degradation preset, seeded per image). ΔPSNR: the mean per-image
gain over {baseline} on the same images, with a bootstrap 68% interval (2000 resamples, seed 0). Sampled
methods on the first {args.sampled_images} images of each condition. The external site
(`external_cxr_mhh`, Hannover Medical School) is used for evaluation only.

Produced by (from the repository root, {minutes:.0f} min on a 2-core CPU):

    .venv/bin/{args.command}

{chr(10).join(sections)}
Figures: one image of each condition; LR, each deterministic method, HR, |last method - HR|; the bottom row
enlarges the image's first NIH box, or on images without boxes a patch of the right mid lung.
"""
    (REPO / "docs" / "results_robustness.md").write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
