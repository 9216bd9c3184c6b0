"""Federated vs centralized vs single-site training of SR at x4 on the same epoch budget, and the cost of
NVFlare's PercentilePrivacy filter, all scored on the NIH ChestX-ray14 test split.

- centralized: the bundle's train config on the three example sites' images pooled, ``rounds * local_epochs`` epochs;
- single-site: the same on cxr-site-1's images alone;
- federated: ``configs/federated/cxr_nih.json`` in NVFlare's simulator, ``rounds`` rounds of ``local_epochs``
  (local batch 3: the method's 8 split over 3 sites, so an epoch takes as many steps as centralized);
- federated + privacy: the same with PercentilePrivacy on the sites' weight differences.

Every run starts from a fresh network and ends with its last weights (no model selection), and the
centralized and single-site runs go through the federated client's own ``SiteTrainer``, so the only
difference is where the data sits. Writes docs/federated_results.md.
Run: .venv/bin/python -m benchmarks.federated [--rounds 8 --local_epochs 2 --batch_size B --limit N]
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import REPO
from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.evaluation import evaluate
from monai_sr_bundle.federated.client import SiteTrainer
from monai_sr_bundle.federated.job import PRIVACY_DEFAULTS, load_job_config, run_simulation
from monai_sr_bundle.federated.sites import SiteData, load_site
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.results import format_table

JOB = REPO / "configs" / "federated" / "cxr_nih.json"
BAR_DB = 0.3


def pooled_site(sites: dict[str, SiteData], work: Path) -> SiteData:
    """One site holding every site's training and validation images (centralized training)."""
    training = [d for site in sites.values() for d in site.training]
    validation = [d for site in sites.values() for d in site.validation]
    datalist = work / "pooled_datalist.json"  # the train config reads its data from a datalist file
    datalist.write_text(json.dumps({"training": training, "validation": validation}))  # absolute image paths
    return SiteData("centralized", datalist, work, training, validation)


def train_locally(site: SiteData, config: dict, epochs: int, work: Path) -> Path:
    trainer = SiteTrainer(
        site, config["method"], config["scale"], config["modality"], config["intensity"], epochs, work / "runs"
    )
    trainer.train(epochs)
    target = work / f"{site.site}.pt"
    torch.save(trainer.network.state_dict(), target)
    return target


def train_federated(name: str, config: dict, work: Path, privacy: bool) -> Path:
    config = {**config, "name": name, "privacy": dict(PRIVACY_DEFAULTS) if privacy else None}
    app = run_simulation(config, work / "fl_workspace", command=f"python -m benchmarks.federated ({name})")
    target = work / f"{name}.pt"
    shutil.copyfile(app / "models" / f"{config['method']}_{config['modality']}_x{config['scale']}.pt", target)
    shutil.copyfile(app / "fl_report.json", work / f"{name}_report.json")
    return target


def main() -> int:
    parser = harness.parser(__file__, __doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--local_epochs", type=int, default=2)
    parser.add_argument(
        "--batch_size", type=int, default=None, help="federated local batch (default: the job config's, 3)"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all 116)")
    args = harness.parse(parser)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = load_job_config(JOB, num_rounds=args.rounds, local_epochs=args.local_epochs, batch_size=args.batch_size)
    epochs = args.rounds * args.local_epochs
    sites = {name: load_site(name, path) for name, path in config["sites"].items()}
    test = nih_datalist("test", limit=args.limit)
    minutes, weights = {}, {}
    runs = {
        "centralized": lambda: train_locally(pooled_site(sites, work), config, epochs, work),
        "single-site": lambda: train_locally(sites["cxr-site-1"], config, epochs, work),
        "federated": lambda: train_federated("federated", config, work, privacy=False),
        "federated+privacy": lambda: train_federated("federated_privacy", config, work, privacy=True),
    }
    for name, run in runs.items():
        start = time.perf_counter()
        weights[name] = run()
        minutes[name] = (time.perf_counter() - start) / 60
        print(f"{name}: trained in {minutes[name]:.1f} min -> {weights[name]}", flush=True)
    baseline = methods.get(methods.baseline_name(), config["scale"])
    trained = methods.get(config["method"], config["scale"])
    predictors = {baseline.name: baseline.predictor(), **{n: trained.predictor(w) for n, w in weights.items()}}
    summary = evaluate(test, predictors, work / "eval", lpips=False)
    trained_weights = {n: sha256(w) for n, w in weights.items()}
    data = f"NIH ChestX-ray14 test split, first {len(test)} images; training: the job's sites ({', '.join(sites)})"
    harness.record(args, data, [baseline], {"main": summary}, sum(minutes.values()), trained_weights=trained_weights,
                   train_minutes=minutes)  # fmt: skip
    psnr = {n: summary[n]["psnr"][0] for n in summary}
    gap = psnr["centralized"] - psnr["federated"]
    command = args.command
    doc = (
        f"""# Federated training: results

{config["method"].upper()} x4 from a fresh network, {epochs} epochs of the bundle's train config in every run
(federated: {args.rounds} rounds x {args.local_epochs} local epochs with a local batch of
{config["batch_size"] or "the method's"} images;
centralized and single-site: the method's own recipe, batch 8), last weights kept (no selection), scored on the
NIH ChestX-ray14 test split ({len(test)} images; LR = antialiased bicubic x4).
Sites: {", ".join(f"{name} ({len(site.training)} images)" for name, site in sites.items())}, the NIH train split
partitioned by patient (`configs/federated/sites/`).
Privacy: NVFlare's PercentilePrivacy (percentile 10, gamma 0.01) on each site's weight difference.

Produced by (from the repository root, on a 2-core CPU):

    .venv/bin/{command}

{format_table(summary)}

| run | PSNR vs centralized (dB) | training time (min) |
|---|---|---|
"""
        + "\n".join(f"| {n} | {psnr[n] - psnr['centralized']:+.2f} | {minutes[n]:.1f} |" for n in weights)
        + f"""

- Bar: federated within {BAR_DB} dB PSNR of centralized: {gap:+.2f} dB gap ->
  {"met" if abs(gap) <= BAR_DB else "NOT met"}.
- Single-site (cxr-site-1 alone): {psnr["single-site"] - psnr["centralized"]:+.2f} dB vs centralized.
- Privacy filter cost: {psnr["federated+privacy"] - psnr["federated"]:+.2f} dB vs federated without it.
"""
    )
    (REPO / "docs" / "federated_results.md").write_text(doc)
    print(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
