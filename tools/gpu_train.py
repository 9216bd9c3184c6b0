"""Train the default method's full-size recipe on one lent GPU, in one call of a few minutes.

A GPU machine receives this repository plus what a call names in ``carry``, 64 MiB in all, and nothing from
``../shared``; it has PyTorch but not MONAI. So the work is in two steps:

``pack`` (here, where the shared data is) writes a folder to carry: the NIH training split as JPEG of quality
85 (the lossless PNGs, 61 MB, do not fit beside the tree; 16 MB, 44.8 dB from them), the first ``VAL_IMAGES``
of the validation split lossless (they select the weights), ``images.csv`` and ``boxes.csv`` of these, and
with ``--wheels`` the wheels the machine lacks (fetched from the package registry): about 25 MiB, which with
the tracked tree must stay within the 64 MiB a call carries (``pack`` checks).

``train`` (there, after ``pip install --no-index --no-deps --target`` of the wheels: docs/bundle.md) lays the
images out as ``../shared/data`` is laid out and trains the variants below at once, one bundle training
process each (the CPU cores shared among their data loaders, the GPU among their steps), each for
``--minutes`` of training with the learning rate annealed over that time (``time_limit_minutes``). Then every
published weight file is scored on the carried validation images, clean and degraded, against bicubic. ``--out``
gets the weights, their ``weights.json`` records (the bundle command that reruns each), ``results.json`` and
the end of each training's log.

``--dry-run``: the same on the CPU with a few images and a few seconds of training (the suite runs it)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "monai_sr_bundle"
METHOD = "lrunet"
#: one training process each; the names are folders and file names in the output
VARIANTS = {"x4": {"scale": 4}, "x2": {"scale": 2, "val_degradation": "real_eval_x2"}}
#: the GPU recipe's settings over the method's overlay (the overlay's own are the CPU's). A batch is
#: ``batch_size`` images of ``samples_per_image`` patches each: 32 patches a step, as the overlay's. The steps
#: count, not the patches: 32 images of 16 patches (512 a step) left the network at bicubic after 780 steps.
GPU_SETTINGS = {"batch_size": 4, "samples_per_image": 8, "val_limit": 24, "val_interval": 5, "max_epochs": 100000}
DRY_SETTINGS = {
    "batch_size": 2,
    "samples_per_image": 1,
    "val_limit": 1,
    "val_interval": 1,
    "max_epochs": 2,
    "patch_size": 64,
    "train_limit": 2,
}
#: the degradations each variant is scored under on the validation split, by scale
SCORED = {4: ["bicubic", "real_eval_x4", "jpeg50_x4"], 2: ["bicubic", "real_eval_x2"]}
#: the GPU machine lacks these (ENVIRONMENT.md); pinned to the versions the project is tested with
WHEELS = [
    "monai==1.6.1",
    "pytorch-ignite==0.5.5",
    "nibabel==5.4.2",
    "pydicom==2.4.5",
    "fire==0.7.1",
    "termcolor==3.3.0",
    "importlib_metadata==9.1.0",
]
#: 44.8 dB from the PNGs, 16 MB for the training split (quality 90: 46.1 dB, 21 MB, too much beside the tree)
JPEG_QUALITY = 85
#: what one call to the GPU machine carries at most: the tracked tree and the pack
CARRY_LIMIT = 64 * 2**20
#: the validation images carried (lossless PNG, 130 kB each): enough to select on, few enough to fit
VAL_IMAGES = 24


def pack(args: argparse.Namespace) -> int:
    from PIL import Image

    source = Path(args.data) / "nih_cxr14"
    out = Path(args.pack)
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    with open(source / "images.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    train, val = ([r for r in rows if r["split"] == split] for split in ("train", "val"))
    rows = train[: args.limit] + val[: 1 if args.limit else VAL_IMAGES]
    for row in rows:
        image = Image.open(source / "images_512" / row["image"])
        if row["split"] == "train":
            image.convert("L").save(out / "images" / (Path(row["image"]).stem + ".jpg"), quality=JPEG_QUALITY)
        else:
            shutil.copyfile(source / "images_512" / row["image"], out / "images" / row["image"])
    with open(out / "images.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    names = {r["image"] for r in rows}
    with open(source / "boxes.csv", newline="") as f, open(out / "boxes.csv", "w", newline="") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, reader.fieldnames)
        writer.writeheader()
        writer.writerows(r for r in reader if r["image"] in names)
    if args.wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
                "--implementation",
                "cp",
                "--platform",
                "manylinux_2_28_x86_64",
                "--platform",
                "manylinux_2_17_x86_64",
                "--platform",
                "manylinux2014_x86_64",
                "-d",
                str(out / "wheels"),
                *WHEELS,
            ],
            check=True,
        )
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    tree = tracked_bytes()
    together = f"{(size + tree) / 2**20:.1f} of the {CARRY_LIMIT / 2**20:.0f} MiB a GPU call carries"
    print(f"pack: {len(rows)} images in {out}, {size / 2**20:.1f} MiB; with the tracked tree: {together}")
    if size + tree > CARRY_LIMIT:
        print("pack: too much to carry: store weights compactly or pack fewer images", file=sys.stderr)
        return 1
    return 0


def tracked_bytes() -> int:
    """The bytes of the files git tracks here, which every GPU call carries (0 outside a git checkout)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    names = [n for n in listed.stdout.decode().split("\0") if n] if listed.returncode == 0 else []
    return sum((REPO / n).stat().st_size for n in names if (REPO / n).is_file())


def unpack(packed: Path, data: Path) -> None:
    """The pack laid out as ``../shared/data`` is (``nih_cxr14/images_512/*.png``): the JPEGs decoded once."""
    from PIL import Image

    nih = data / "nih_cxr14"
    (nih / "images_512").mkdir(parents=True, exist_ok=True)
    for name in ("images.csv", "boxes.csv"):
        shutil.copyfile(packed / name, nih / name)

    def one(path: Path) -> None:
        Image.open(path).save(nih / "images_512" / (path.stem + ".png"))

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, sorted((packed / "images").iterdir())))


def train_command(name: str, variant: dict, settings: dict, work: Path, workers: int, minutes: float) -> list[str]:
    from monai_sr_bundle import methods, stages

    method = methods.get(METHOD, variant["scale"])
    files = ",".join(f"'{f}'" for f in stages.stage_configs(method))
    overrides = {
        "method": METHOD,
        "modality": "cxr",
        "intensity": "minmax",
        "key_metric": "val_psnr",
        "lower_is_better": "false",
        "progress_bar": "false",
        "log_every": 100,
        **settings,
        **variant,
        "num_workers": workers,
        "time_limit_minutes": minutes,
        "run_dir": str(work / "runs" / name),
        "ckpt_path": str(work / "weights" / name / method.weights_name),
    }
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"[{files}]"]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return command


def score(name: str, variant: dict, work: Path, device: str, limit: int | None) -> list[dict]:
    """PSNR / SSIM of bicubic and the variant's best weights on the validation split, per degradation."""
    from monai_sr_bundle import methods
    from monai_sr_bundle.data.datalist import nih_datalist
    from monai_sr_bundle.evaluation import evaluate

    scale = variant["scale"]
    method = methods.get(METHOD, scale)
    weights = work / "weights" / name / method.weights_name
    predictors = {
        "bicubic": methods.get("bicubic", scale).predictor(device=device),
        METHOD: method.predictor(weights, device=device),
    }
    rows = []
    for degradation in SCORED[scale]:
        summary = evaluate(
            nih_datalist("val", limit=limit),
            predictors,
            work / "scores" / name / degradation,
            degradation=degradation,
            lpips=False,
            progress=False,
        )
        gain = summary[METHOD]["psnr"][0] - summary["bicubic"]["psnr"][0]
        rows.append(
            {
                "variant": name,
                "scale": scale,
                "degradation": degradation,
                "psnr": round(summary[METHOD]["psnr"][0], 3),
                "ssim": round(summary[METHOD]["ssim"][0], 4),
                "psnr_gain_over_bicubic": round(gain, 3),
            }
        )
    return rows


def train(args: argparse.Namespace) -> int:
    started = time.time()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    unpack(Path(args.pack), data)
    os.environ["MONAI_SR_DATA"] = str(data)
    variants = {k: VARIANTS[k] for k in args.variants}
    settings = DRY_SETTINGS if args.dry_run else GPU_SETTINGS
    workers = 0 if args.dry_run else max(1, (os.cpu_count() or 2) // len(variants) - 1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    print(
        f"train: {', '.join(variants)} for {args.minutes} min each, {workers} loader workers each "
        f"(set-up took {time.time() - started:.0f} s)",
        flush=True,
    )
    procs = {}
    for name, variant in variants.items():
        log = open(work / f"{name}.log", "w")
        procs[name] = (
            subprocess.Popen(
                train_command(name, variant, settings, work, workers, args.minutes),
                cwd=BUNDLE,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    failed = []
    for name, (proc, log) in procs.items():
        proc.wait()
        log.close()
        if proc.returncode:
            failed.append(name)
            print(
                f"--- {name} failed (exit {proc.returncode}); its log ends:\n"
                + "".join((work / f"{name}.log").read_text().splitlines(True)[-30:]),
                flush=True,
            )
    print(f"train: trained in {time.time() - started:.0f} s", flush=True)
    import torch

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    rows, records = [], {}
    for name, variant in variants.items():
        if name in failed:
            continue
        rows += score(name, variant, work, device, 1 if args.dry_run else None)
        folder = work / "weights" / name
        for weights in folder.glob("*.pt"):
            shutil.copyfile(weights, out / f"{name}_{weights.name}")
        pack_note = f"the training split's images as JPEG of quality {JPEG_QUALITY} (tools/gpu_train.py pack)"
        records[name] = {
            file: {**record, "data_pack": pack_note}
            for file, record in json.loads((folder / "weights.json").read_text()).items()
        }
    (out / "weights.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {"rows": rows, "failed": failed, "device": device, "seconds": round(time.time() - started)}, indent=2
        )
        + "\n"
    )
    lines = ["| variant | scale | degradation | PSNR (dB) | SSIM | gain over bicubic (dB) |", "|---|" * 6]
    lines += [
        f"| {r['variant']} | x{r['scale']} | {r['degradation']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
        f"{r['psnr_gain_over_bicubic']:+.2f} |"
        for r in rows
    ]
    with open(out / "train_logs.txt", "w") as logs:  # the end of each training's log
        for name in variants:
            logs.write(f"=== {name}\n" + "".join((work / f"{name}.log").read_text().splitlines(True)[-150:]))
    print("\n".join(lines), f"\ntrain: done in {time.time() - started:.0f} s", sep="\n", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the folder a GPU call carries (here)")
    p.add_argument("--data", default=os.environ.get("MONAI_SR_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--pack", default=str(REPO / ".gpu" / "pack"))
    p.add_argument("--limit", type=int, help="the first N training images and one validation image (tests)")
    p.add_argument("--wheels", action="store_true", help="also fetch the wheels the GPU machine lacks")
    t = sub.add_parser("train", help="train and score the variants (on the GPU machine)")
    t.add_argument("--pack", default=str(REPO / ".gpu" / "pack"))
    t.add_argument("--out", required=True)
    t.add_argument("--work", default="/tmp/monai_sr_gpu")
    t.add_argument("--minutes", type=float, default=6.0, help="training time of each variant")
    t.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    t.add_argument("--dry-run", action="store_true", help="CPU, a few images, a few seconds")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    return pack(args) if args.command == "pack" else train(args)


if __name__ == "__main__":
    sys.exit(main())
