"""The protocol of the anomaly-focused diffusion SR paper (ADSR, MIDL 2024) on NIH ChestX-ray14: HR = the
NIH images at 256x256 (``monai-sr nih-resize``), LR = 64x64 with synthetic artifacts burnt in (preset
``adsr_artifacts_x4``; the HR stays clean), every learned method trained on that artifacted LR. Scored on the
test split against the clean HR: PSNR, SSIM, LPIPS, in-box PSNR and artifact-region PSNR; the stochastic
methods over several sampling seeds, with paired t-tests per image (seed-averaged) of ADSR against SR3 and
against its two ablations.

Weights: ``adsr`` is the shipped ``adsr_cxr_x4.pt`` (trained by this protocol); the other learned rows are
trained by it into ``benchmarks/adsr_protocol/models/`` (a bundle root, like ``benchmarks/ablations``), the
ablations' overlays in ``benchmarks/adsr_protocol/configs/methods/``. ``--part train`` trains what is missing
through the bundle's train config and prints each command (``weights.json`` records it); each (method, seed)
evaluation is kept in out/adsr_protocol/eval, so the parts can run apart and resume.

Run: .venv/bin/python -m benchmarks.adsr_protocol [--part train|evaluate|report|all] [--limit N] [--seeds 5]
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import REPO
from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import load_datalist, write_nih_resized
from monai_sr_bundle.evaluation import evaluate
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.inference import Predictor
from monai_sr_bundle.metrics import paired_t_test, summarize
from monai_sr_bundle.metrics.catalogue import CATALOGUE
from monai_sr_bundle.stages import train_configs

BUNDLE = REPO / "monai_sr_bundle"
ROOT = REPO / "benchmarks" / "adsr_protocol"
WORK = REPO / "out" / "adsr_protocol"
DATA = REPO / "out" / "nih256"
SIZE, SCALE, PRESET = 256, 4, "adsr_artifacts_x4"
METHOD = "adsr"
#: the rows after the interpolation baseline, each with how it is trained on the protocol data (train-config
#: overrides): the diffusion rows from scratch with ADSR's budget; the CNN baselines from their shipped clean-x4
#: weights for a few epochs (the CPU budget), an advantage over training from scratch that can only flatter them
TRAINED = {
    "srcnn": {"init_shipped": True, "max_epochs": 5},
    "vdsr": {"init_shipped": True, "max_epochs": 2},
    "srgan": {"init_shipped": True, "max_epochs": 2},
    "esrgan": {"init_shipped": True, "max_epochs": 2},
    "sr3": {},
    "sr3_x0": {},
    "adsr_novae": {},
    "adsr_nobox": {},
    "adsr": {},
}
#: what ADSR is tested against, paired per image: SR3 as the project ships it (noise prediction on the residual
#: over bicubic), SR3 trained as ADSR is (clean-image prediction on the image, L_R alone: ADSR without both of
#: its additions), and each addition removed alone
COMPARED = ("sr3", "sr3_x0", "adsr_novae", "adsr_nobox")
SR3_ROWS = COMPARED[:2]
#: the paper's figures (VinBig, 64 -> 256 with artifacts, their Table; PSNR dB), quoted as theirs
PAPER = {
    "bicubic": 22.7,
    "srcnn": 25.1,
    "srgan": 31.8,
    "esrgan": 33.7,
    "sr3": 37.7,
    "adsr": 38.9,
    "adsr_nobox": 38.74,
    "adsr_novae": 37.95,
}
SHOWN = ("psnr", "ssim", "lpips", "inbox_psnr", "artifact_psnr")
DOC = """# ADSR: the anomaly-focused diffusion paper's protocol on NIH ChestX-ray14

The protocol of "Anomaly-focused single image super-resolution with artifact removal for chest X-rays using a
distribution-aware diffusion model" (MIDL 2024): HR = the NIH images at 256x256 (Lanczos from `images_512`:
`monai-sr nih-resize --size 256`), LR = 64x64 (antialiased bicubic x4) with synthetic artifacts burnt into the
LR only (preset `adsr_artifacts_x4`: with probability 0.5 one to three circles, letters, digits or lines at
0.9-1.0 intensity), every learned method trained on that artifacted LR against the clean HR (the NIH training
split, patient-level), scored against the clean HR on the test split: {images} images, in-box PSNR over the
{boxed} with official NIH boxes, artifact-region PSNR (inside the drawn artifacts, at HR size) over the
{drawn} whose LR got artifacts. The LR images and their artifacts are fixed (seeded by image) and the same
for every method and seed. Stochastic methods: mean over images for each sampling seed, then mean ± sd over
seeds (their default sampler, dpmpp_sde, 20 steps); paired t-tests per image on the seed-averaged values.

Produced by (from the repository root; it trains what is missing, then evaluates, on a 2-core CPU):

    .venv/bin/python -m benchmarks.adsr_protocol{options}

{table}
{missing}
The paper's column is the authors' own PSNR on VinBigData (64 -> 256 with artifacts), quoted as theirs, not
measured here; they report the ablations without the box loss (38.74) and without the VAE branch (37.95),
and p = 0.0029 for ADSR vs SR3 on NIH. Their data, training length and network widths differ from ours.
Each of our rows is one training run: the t-tests see the spread over images and sampling seeds, not over
retraining, so a difference of a few tenths of a dB between two diffusion rows may not survive a rerun.

Paired per-image differences, ADSR minus the row (two-sided paired t-test):

{tests}

Bars of issue 14:

{bars}

![every method on an artifacted test image](figures/adsr_protocol.png)

## How each row was trained (CPU budget)

- `adsr`: the shipped `adsr_cxr_x4.pt` (overlay `configs/methods/adsr.json`): the SR3 U-Net (32/64/128
  channels on 2x2-unshuffled pixels) with the VAE branch (8 latent channels per position), the denoiser
  predicting the clean image (diffused in [-1, 1], not as a residual over bicubic: a residual scaled for
  clean detail is 20x larger where an artifact must be removed, and enough of it survived the noisiest
  step of the paper's 1e-4 -> 1e-2 schedule that the model hallucinated ring artifacts from the starting
  noise); loss 0.4 L_R + 0.3 L_B + 0.3 (L_VR + L_KL) on the image the denoiser's estimate implies; 96 px
  patches, 4 per image, 2 images a step, Adam 2e-4 cosine (the paper: 1e-4, batch 2 of whole images).
- `adsr_nobox`, `adsr_novae`: the ablations, the same with the box weight 0 / without the VAE branch
  (`benchmarks/adsr_protocol/configs/methods/`).
- `sr3`: the project's SR3 as it ships (residual over bicubic, noise prediction, 1e-4 -> 2e-2) with ADSR's
  epochs: the two methods as each is defined here.
- `sr3_x0`: SR3 trained as ADSR is (clean-image prediction, the image diffused with the paper's schedule,
  the MSE term L_R alone): ADSR without its VAE branch and without its box loss, so ADSR vs `sr3_x0` measures
  the paper's two additions together, apart from how the denoiser is parameterised.
- `srcnn`, `vdsr`, `srgan`, `esrgan`: their shipped clean-x4 weights fine-tuned on the protocol data for a
  few epochs (a head start the diffusion rows do not get; the GANs through their GAN stage).

Commands (from `monai_sr_bundle/`; `MONAI_SR_METHODS=../benchmarks/adsr_protocol/configs/methods` for the
ablations); each weights file's `weights.json` entry records its command and sha256:

{train}
"""


def method(name: str) -> methods.Method:
    """A row's method: the shipped adsr, else the method (an ablation's overlay is found through
    ``$MONAI_SR_METHODS``, which :func:`main` extends with this folder's) with its protocol weights here."""
    return methods.get(name, SCALE) if name == METHOD else methods.get(name, SCALE, "cxr", ROOT)


def shell(command: list[str]) -> str:
    """``command`` as one line to paste into a shell (the config list in double quotes, as the docs write it)."""
    return " ".join(f'"{c}"' if "'" in c else c for c in command)


def predictor(m: methods.Method, seed: int):
    """``m`` loaded, seeded when it samples."""
    return m.predictor(seed=seed) if m.stochastic else m.predictor()


def datalist_file() -> Path:
    existing = DATA / "datalist.json"
    return existing if existing.is_file() else write_nih_resized(DATA, SIZE)


def train_command(name: str) -> list[str]:
    """The bundle command that trains row ``name`` on the protocol data into its weights file."""
    m, settings = method(name), TRAINED[name]
    epochs = settings.get("max_epochs", methods.get(METHOD, SCALE).config["max_epochs"])
    stages = ",".join(f"'{os.path.relpath(f, BUNDLE)}'" for f in train_configs(name))
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"[{stages}]", "--method", name]
    command += ["--datalist_file", datalist_file(), "--degradation", PRESET, "--max_epochs", str(epochs)]
    command += ["--run_dir", WORK / "runs" / name, "--ckpt_path", m.weights_path]
    if settings.get("init_shipped"):
        command += ["--init_weights", methods.get(name, SCALE).weights_path]
    # paths as seen from the bundle root, where it runs: weights.json records a command anyone can rerun
    return [os.path.relpath(c, BUNDLE) if isinstance(c, Path) else c for c in command]


def part_train() -> None:
    # ADSR first (every comparison needs it), the GANs last (the longest, and no bar needs them)
    for name in sorted(TRAINED, key=lambda n: (n != METHOD, method(n).adversarial)):
        if method(name).weights_available:
            continue
        command = train_command(name)
        print("training:", shell(command), flush=True)
        subprocess.run(command, cwd=BUNDLE, check=True)


def rows() -> list[str]:
    return [methods.baseline_name(), *TRAINED]


def ready(name: str) -> bool:
    """Whether row ``name`` can be evaluated: interpolation, or a method whose protocol weights exist."""
    m = method(name)
    return not m.trainable or m.weights_available


def eval_dir(name: str, limit: int | None) -> Path:
    """Where row ``name``'s evaluations are kept: per test-set size and per weights file (by its sha256), so a
    retrained model or another ``--limit`` is never mixed with an older run."""
    m = method(name)
    tag = sha256(m.weights_path)[:12] if m.trainable else "none"
    return WORK / "eval" / (f"first{limit}" if limit else "all") / f"{name}_{tag}"


def part_evaluate(limit: int | None, seeds: int) -> None:
    """Each row on the test split; a stochastic row once per sampling seed. The LR images (and their
    artifacts) are the same for every row and seed: evaluate() seeds LR synthesis by image index."""
    datalist = load_datalist(datalist_file(), "test", limit=limit)
    for name in rows():
        m = method(name)
        if not ready(name):
            print(f"{name}: no weights yet ({m.weights_path}); run --part train", flush=True)
            continue
        loaded, folder = m.predictor(), eval_dir(name, limit)
        for seed in range(seeds if m.stochastic else 1):
            out = folder / f"seed{seed}"
            if (out / "metrics.csv").is_file():
                continue
            start = time.perf_counter()
            seeded = Predictor(m, loaded.network, seed=seed) if m.stochastic else loaded
            evaluate(datalist, {name: seeded}, out, degradation=PRESET)
            print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)


def part_figure(limit: int | None) -> Path:
    """Every row (seed 0) on the first test image that has an abnormality box and drawn artifacts, side by
    side with its LR and HR, ADSR last (the error map is its): docs/figures/adsr_protocol.png."""
    datalist = load_datalist(datalist_file(), "test", limit=limit)
    drawn = {r["image"] for r in read_rows(methods.baseline_name(), limit) if not math.isnan(r["artifact_psnr"])}
    index = next(i for i, d in enumerate(datalist) if d["boxes"] and Path(d["label"]).name in drawn)
    names = [n for n in rows() if n != METHOD and ready(n)]
    names.append(METHOD)
    predictors = {n: predictor(method(n), 0) for n in names}
    out = WORK / "figure"
    evaluate([datalist[index]], predictors, out, degradation=PRESET, seed=index, figures=1, lpips=False, progress=False)
    figure = REPO / "docs" / "figures" / "adsr_protocol.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    harness.docs_figure(out / f"figure_{Path(datalist[index]['label']).stem}.png", figure)
    return figure


def read_rows(name: str, limit: int | None) -> list[dict]:
    """Row ``name``'s per-image metrics over all its evaluated seeds, each with its ``seed`` (none for a row
    without weights yet)."""
    if not ready(name):
        return []
    found = []
    for path in sorted(eval_dir(name, limit).glob("seed*/metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                found.append({"image": row["image"], "seed": path.parent.name, **{m: float(row[m]) for m in SHOWN}})
    return found


def seed_means(found: list[dict], metric: str) -> list[float]:
    """The mean over images of each seed's values of ``metric``."""
    seeds = sorted({r["seed"] for r in found})
    return [summarize([r[metric] for r in found if r["seed"] == s])[0] for s in seeds]


def image_means(found: list[dict], metric: str, images: list[str]) -> list[float]:
    """Each image's value of ``metric`` averaged over seeds (NaN where it has none, e.g. no artifact)."""
    return [summarize([r[metric] for r in found if r["image"] == i])[0] for i in images]


def report(limit: int | None, seeds: int) -> tuple[str, dict]:
    """docs/adsr_protocol.md's text from the kept evaluations, and its tables as data: each method's mean ± sd
    over seeds (``main``), ADSR's paired differences and their p values (``paired``)."""
    found = {n: read_rows(n, limit) for n in rows()}
    found = {n: f for n, f in found.items() if f}
    digits = {m: CATALOGUE[m].digits for m in SHOWN}
    head = " | ".join(CATALOGUE[m].heading for m in SHOWN)
    table = [f"| method | {head} | seeds | paper's PSNR (dB) |"]
    table.append("|---" * (len(SHOWN) + 3) + "|")
    tables = {"main": {}, "paired": {}}
    for name, f in found.items():
        tables["main"][name] = {m: list(summarize(seed_means(f, m))) for m in SHOWN}
        cells = [CATALOGUE[m].value(*tables["main"][name][m]) for m in SHOWN]
        paper = f"{PAPER[name]:.2f}" if name in PAPER else "-"
        table.append(f"| {name} | " + " | ".join(cells) + f" | {len(seed_means(f, 'psnr'))} | {paper} |")
    images = sorted({r["image"] for f in found.values() for r in f})
    tests = [f"| ADSR vs | {head} |", "|---" * (len(SHOWN) + 1) + "|"]
    paired = {}
    for other in (o for o in COMPARED if o in found and METHOD in found):
        cells = []
        for m in SHOWN:
            diff, p, n = paired_t_test(image_means(found[METHOD], m, images), image_means(found[other], m, images))
            paired[other, m] = (diff, p)
            tables["paired"].setdefault(other, {})[m] = {"difference": diff, "p": p, "images": n}
            cells.append(f"{diff:+.{digits[m]}f} (p = {p:.2g}, n = {n})")
        tests.append(f"| {other} | " + " | ".join(cells) + " |")
    bars, baseline = [], methods.baseline_name()
    for sr3 in (n for n in SR3_ROWS if (n, "inbox_psnr") in paired):
        diff, p = paired[sr3, "inbox_psnr"]
        verdict = "met" if diff > 0 and p < 0.05 else "NOT met"
        bars.append(f"- in-box PSNR, ADSR - {sr3}: {diff:+.2f} dB, p = {p:.2g} (bar: > 0 with p < 0.05): {verdict}")
    if {METHOD, baseline} <= found.keys():
        art = {n: summarize(seed_means(found[n], "artifact_psnr"))[0] for n in found}
        versus = [n for n in SR3_ROWS if n in art]
        ok = art[METHOD] >= art[baseline] + 3 and all(art[METHOD] >= art[n] for n in versus)
        bars.append(
            f"- artifact-region PSNR: ADSR {art[METHOD]:.2f} dB, {baseline} {art[baseline]:.2f}"
            + "".join(f", {n} {art[n]:.2f}" for n in versus)
            + f" (bar: at least {baseline}'s + 3 dB and at least SR3's): {'met' if ok else 'NOT met'}"
        )
    for other in ("adsr_nobox", "adsr_novae"):
        if (other, "psnr") in paired:
            diff, p = paired[other, "psnr"]
            box, pb = paired[other, "inbox_psnr"]
            bars.append(
                f"- ablation {other}: ADSR - {other} PSNR {diff:+.2f} dB (p = {p:.2g}), "
                f"in-box PSNR {box:+.2f} dB (p = {pb:.2g})"
            )
    missing = [n for n in rows() if n not in found]
    options = (f" --limit {limit}" if limit else "") + (f" --seeds {seeds}" if seeds != 5 else "")
    boxed = sum(1 for d in load_datalist(datalist_file(), "test", limit=limit) if d["boxes"])
    drawn = sum(not math.isnan(v) for v in image_means(found.get(baseline, []), "artifact_psnr", images))
    text = DOC.format(
        images=len(images), boxed=boxed, drawn=drawn, options=options, table="\n".join(table),
        tests="\n".join(tests), bars="\n".join(bars) or "- not measured yet",
        missing=f"\nNot trained or evaluated yet: {', '.join(missing)}.\n" if missing else "",
        train="\n".join(f"    {shell(['python', *train_command(n)[1:]])}" for n in TRAINED),
    )  # fmt: skip
    return text, tables


def main() -> int:
    parser = harness.parser(__file__, __doc__, work=False)
    parser.add_argument("--part", default="all", choices=["train", "evaluate", "report", "all"])
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all 116)")
    parser.add_argument("--seeds", type=int, default=5, help="sampling seeds per stochastic method")
    args = harness.parse(parser)
    start = time.perf_counter()
    os.environ["MONAI_SR_METHODS"] = os.pathsep.join(
        [p for p in (os.environ.get("MONAI_SR_METHODS"), str(ROOT / "configs" / "methods")) if p]
    )
    if args.part in ("train", "all"):
        part_train()
    if args.part in ("evaluate", "all"):
        part_evaluate(args.limit, args.seeds)
        part_figure(args.limit)
    if args.part in ("evaluate", "report", "all"):
        text, tables = report(args.limit, args.seeds)
        used = [method(n) for n in tables["main"] if method(n).trainable]
        data = f"NIH ChestX-ray14 test split at 256 px{f', first {args.limit} images' if args.limit else ''}, x4"
        harness.record(args, data, used, tables, (time.perf_counter() - start) / 60, seeds=args.seeds)
        (REPO / "docs" / "adsr_protocol.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
