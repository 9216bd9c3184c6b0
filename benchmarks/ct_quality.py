"""Chest CT quality benchmark: x4 in-plane SR of the held-out chest CT slices (patients no CT weights were
trained or selected on), scored in the HU window of the CT weights, mean with a bootstrap 68% interval.

Rows: nearest-neighbour, bilinear and bicubic interpolation, then every method with chest CT weights
(``models/<method>_ct_x4.pt``), then the ablations: ``benchmarks/ablations`` is laid out as a bundle root
(``configs/methods/<name>.json``, ``models/<name>_ct_x4.pt``) whose variants are trained as site methods
(``MONAI_SR_METHODS``) and scored here but not shipped. Writes docs/results/ct_quality.json (the scores as
data) and docs/results_ct.md.
Run: .venv/bin/python -m benchmarks.ct_quality
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import DOCS, REPO
from monai_sr_bundle import methods, results
from monai_sr_bundle.data.ct import CT_SPLIT, CT_WINDOW, write_ct_datalist
from monai_sr_bundle.data.datalist import load_datalist
from monai_sr_bundle.evaluation import evaluate
from monai_sr_bundle.inference import Predictor
from monai_sr_bundle.metrics import bootstrap_interval
from monai_sr_bundle.metrics.catalogue import CATALOGUE
from monai_sr_bundle.networks import Bicubic

ABLATIONS = REPO / "benchmarks" / "ablations"
SCALE = 4
#: the metrics of its table (their labels and digits: the catalogue's)
SHOWN = ("psnr", "ssim", "lpips")


def compare(variant: methods.Method, method: methods.Method, rows: list[dict]) -> str:
    """One line: which network arguments the ablation changes and the paired per-slice difference it makes."""
    ours, theirs = method.network_spec()["args"], variant.network_spec()["args"]
    keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    changed = ", ".join(f"{k} {ours.get(k)!r} vs {theirs.get(k)!r}" for k in keys)
    cells = []
    for metric in SHOWN:
        label, digits = CATALOGUE[metric].heading, CATALOGUE[metric].digits
        by_image = {r["image"]: float(r[metric]) for r in rows if r["method"] == variant.name}
        diffs = [float(r[metric]) - by_image[r["image"]] for r in rows if r["method"] == method.name]
        lo, hi = bootstrap_interval(diffs)
        cells.append(f"{label} {sum(diffs) / len(diffs):+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]")
    return f"- {method.name} vs {variant.name} ({changed}): " + "; ".join(cells)


def main(argv: list[str] | None = None) -> int:
    return harness.main(harness.parser(__file__, __doc__), run, argv)


def run(args: argparse.Namespace) -> int:
    datalist = load_datalist(write_ct_datalist(Path(args.work) / "slices"), "test")
    baseline = methods.baseline_name()
    interpolation = methods.get(baseline, SCALE, "ct")
    predictors = {mode: Predictor(interpolation, Bicubic(SCALE, mode)) for mode in ("nearest", "bilinear")}
    predictors[baseline] = interpolation.predictor()
    ct = [methods.get(m, SCALE, "ct") for m in methods.trainable_names()]
    ablations = sorted((ABLATIONS / "configs" / "methods").glob("*.json"))
    variants = [methods.Method(p.stem, p, SCALE, "ct", ABLATIONS) for p in ablations]
    shipped = [m for m in ct if m.weights_available]
    variants = [m for m in variants if m.weights_available]
    ct = shipped + variants
    predictors.update({m.name: m.predictor() for m in ct})
    start = time.perf_counter()
    out = Path(args.work) / "eval"
    evaluate(datalist, predictors, out, figures=1)
    minutes = (time.perf_counter() - start) / 60
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = {}
    for name in predictors:
        table[name] = {}
        for metric in SHOWN:
            values = [float(r[metric]) for r in rows if r["method"] == name]
            table[name][metric] = [sum(values) / len(values), *bootstrap_interval(values)]
    patients = sorted({d["patient"] for d in datalist})
    data = f"{len(datalist)} held-out axial chest CT slices of {len(patients)} patients ({', '.join(patients)}), x4"
    written = harness.record(args, data, ct, {"main": table}, minutes, slices=len(datalist))
    table = results.format_table(results.read(written)["tables"]["main"])
    comparisons = "\n".join(compare(v, m, rows) for v in variants for m in shipped if m.family == v.family)
    doc = f"""# Results: x4 super-resolution of chest CT slices

Test set: the {len(datalist)} axial slices of {len(patients)} patients ({", ".join(patients)}) that no CT
weights are trained or selected on (`monai-sr ct-slices`; the split by patient and why:
`monai_sr_bundle/data/ct.py`: training {", ".join(CT_SPLIT["training"])}; validation
{", ".join(CT_SPLIT["validation"])}). HR = the 512x512 slice in the HU window [{CT_WINDOW[0]:g}, {CT_WINDOW[1]:g}]
mapped to [0, 1]; LR = antialiased bicubic x4 downsampling (128x128). Mean over slices with the percentile
bootstrap 68% interval of the mean (2000 resamples of slices, seed 0); slices of one patient are not
independent, so the intervals are narrower than a patient-level spread would be.

Produced by (from the repository root, {minutes:.1f} min on a 2-core CPU):

    .venv/bin/{args.command}

{table}

Methods with chest CT weights: {", ".join(m.name for m in shipped) or "none yet"}; ablations (not shipped,
`benchmarks/ablations/`): {", ".join(m.name for m in variants) or "none"}.

Ablations against the shipped method of their network, per-slice paired difference (shipped minus ablation)
with its bootstrap 68% interval:

{comparisons or "none"}
"""
    (DOCS / "results_ct.md").write_text(doc)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
