"""The MONAI model zoo's CI, run here on an exported bundle (:func:`monai_sr_bundle.zoo.export`): the zoo's own
scripts and pre-commit hooks in a scratch zoo tree, the bundle's workflows as the zoo's unit tests run them,
the small real data they run on, and the development bundle's output an exported bundle must reproduce. The
zoo's tests and the sweep over every method (``python -m benchmarks.zoo``) call it; so does a person before a
pull request to the zoo:

    python -m tools.zoo_ci <exported bundle> <the zoo's CI folder>
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from monai_sr_bundle import methods, zoo
from monai_sr_bundle.batch import default_input
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.jsonfile import read_json_object
from monai_sr_bundle.launch import safe_env
from monai_sr_bundle.stages import CONFIGS


def isolated(mode: str, *args: str) -> list[str]:
    """The command that runs ``tools/zoo_isolated.py``'s ``mode`` with ``args`` in this Python, monai-sr
    unimportable there: what the zoo's CI and a zoo user see is the bundle alone."""
    return [sys.executable, str(Path(__file__).with_name("zoo_isolated.py")), mode, *args]


#: the zoo's pre-commit hooks (``.pre-commit-config.yaml``) as the pre-commit-hooks package installs them,
#: each with the files pre-commit would give it (its ``types``)
HOOKS = (
    (["check-yaml"], (".yml", ".yaml")),
    (["check-docstring-first"], (".py",)),
    (["check-executables-have-shebangs"], "executable"),
    (["check-toml"], (".toml",)),
    (["check-case-conflict"], "all"),
    (["check-added-large-files", "--maxkb=1024"], "all"),
    (["detect-private-key"], "text"),
    (["pretty-format-json", "--no-sort-keys", "--indent=4"], (".json",)),
    (["trailing-whitespace-fixer"], "text"),
    (["end-of-file-fixer"], "text"),
    (["mixed-line-ending"], "text"),
)


def _hook_files(files: list[Path], kind) -> list[Path]:
    if kind == "all":
        return files
    if kind == "executable":
        return [f for f in files if os.access(f, os.X_OK)]
    if kind == "text":
        return [f for f in files if b"\0" not in f.read_bytes()[:8192]]
    return [f for f in files if f.name.endswith(kind)]


def check(bundle: str | os.PathLike, zoo_ci: str | os.PathLike, workdir: str | os.PathLike) -> list[str]:
    """Run the model zoo's own CI on an exported ``bundle`` in a scratch zoo tree under ``workdir``:
    ``ci/verify_bundle.py -m full`` (files, version, schema, ``verify_net_in_out``, ``ckpt_export``; a bundle
    that does not script goes on the zoo's TorchScript exclusion list first, as its pull request would),
    the pre-commit hooks, isort, black and flake8 with the zoo's settings. Returns the names of the steps
    that passed; the first failure raises an :class:`InputError` with the tool's output."""
    bundle, zoo_ci, tree = Path(bundle), Path(zoo_ci), Path(workdir) / "model-zoo"
    if not (zoo_ci / "ci" / "verify_bundle.py").is_file():
        raise InputError(f"{zoo_ci}: not the model zoo's CI folder (no ci/verify_bundle.py).")
    name = bundle.name
    shutil.copytree(zoo_ci, tree, dirs_exist_ok=True)
    shutil.copytree(bundle, tree / "models" / name)
    meta = read_json_object(bundle / "configs" / "metadata.json", f"{bundle}: configs/metadata.json")
    schema = zoo_ci / meta["schema"].rsplit("/", 1)[-1]
    (tree / "models" / name / "eval").mkdir()
    shutil.copyfile(schema, tree / "models" / name / "eval" / "schema.json")  # ci/prepare_schema.py's download
    if not zoo.scriptable(tree / "models" / name):
        with open(tree / "ci" / "bundle_custom_data.py", "a") as f:
            f.write(f"\nexclude_verify_torchscript_list.append({name!r})\n")

    def run(step: str, *args: str, cwd: Path = tree) -> None:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=safe_env())
        if done.returncode != 0:
            raise InputError(f"{name}: zoo check '{step}' failed:\n{(done.stdout + done.stderr)[-4000:]}")
        passed.append(step)

    passed: list[str] = []
    run("verify_bundle (full)", *isolated("launch", "ci/verify_bundle.py", "-b", name, "-m", "full"))
    shutil.rmtree(tree / "models" / name / "eval")  # made by the CI, not part of a pull request
    for leftover in (tree / "models" / name / "models").glob("verify_model.ts"):
        leftover.unlink()
    git = ["git", "-c", "user.name=zoo", "-c", "user.email=zoo@localhost"]
    run("git init", *git, "init", "-q")
    large = _large_files(tree / "models" / name)
    committed = [
        p.relative_to(tree).as_posix()
        for p in sorted((tree / "models" / name).rglob("*"))
        if p.is_file() and p.relative_to(tree / "models" / name).as_posix() not in large
    ]
    run("git add", *git, "add", "--", *committed)
    bindir = Path(sys.executable).parent
    for hook, kind in HOOKS:
        files = [f.as_posix() for f in _hook_files([tree / f for f in committed], kind)]
        if files:
            run(hook[0], str(bindir / hook[0]), *hook[1:], *files)
    code = f"models/{name}"
    run("isort", sys.executable, "-m", "isort", "--check", code)
    run("black", sys.executable, "-m", "black", "--skip-magic-trailing-comma", "--check", code)
    run("flake8", sys.executable, "-m", "flake8", code, "--count", "--statistics")
    return passed


def _large_files(bundle: Path) -> set[str]:
    listing = bundle / "large_files.yml"
    if not listing.is_file():
        return set()
    return set(re.findall(r'^\s*-\s*path:\s*"([^"]+)"', listing.read_text(encoding="utf-8"), re.M))


def workflow_data(nih_dir: str | os.PathLike, root: str | os.PathLike, modality: str = "cxr") -> tuple[Path, Path]:
    """Small real inputs for :func:`check_workflows` under ``root``: an image to super-resolve (a 96 px crop
    of a NIH radiograph; for CT, pydicom's CT slice) and a NIH-shaped folder of two images per split made
    128 px (``images.csv``, ``boxes.csv``, ``images_512/``), as the zoo's unit tests run on small data."""

    nih_dir, small = Path(nih_dir), Path(root) / "nih_cxr14"
    (small / "images_512").mkdir(parents=True)
    with open(nih_dir / "images.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for split in ("train", "val", "test") for r in [r for r in rows if r["split"] == split][:2]]
    with open(small / "images.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    (small / "boxes.csv").write_text("image,label,x,y,w,h\n")
    for r in keep:
        with Image.open(nih_dir / "images_512" / r["image"]) as img:
            img.resize((128, 128), Image.BICUBIC).save(small / "images_512" / r["image"])
    if modality == "ct":
        return Path(default_input()), small
    image = Path(root) / "cxr.png"
    with Image.open(nih_dir / "images_512" / keep[-1]["image"]) as img:
        img.crop((160, 160, 256, 256)).save(image)
    return image, small


def check_workflows(
    bundle: str | os.PathLike,
    zoo_ci: str | os.PathLike,
    image: str | os.PathLike,
    nih_dir: str | os.PathLike,
    workdir: str | os.PathLike,
    weights_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Run the bundle's inference, evaluate and train workflows as the zoo's unit tests do
    (``ci/unit_tests/utils.py::check_workflow``: MONAI's property check for the workflow type, then run),
    with monai-sr unimportable: inference of ``image``, evaluation of two NIH test images, one epoch on
    two training images (every stage of the method). ``weights_dir`` holds the LPIPS archives (AlexNet,
    VGG16) that evaluation and the perceptual losses load. Returns the stages that passed."""

    bundle, work = Path(bundle), Path(workdir)
    lpips_weights = vgg_weights = None
    if weights_dir:  # the LPIPS archives: AlexNet for the metric and loss, VGG16 for the perceptual loss
        lpips_weights, vgg_weights = (str(Path(weights_dir) / f"lpips_{n}_full_v0.1.npz") for n in ("alex", "vgg16"))
    meta = read_json_object(bundle / "configs" / "inference.json", f"{bundle}: configs/inference.json")
    method = methods.get(meta["method"], meta["scale"], meta["modality"], bundle)
    quick = {"steps": 2} if method.stochastic else {}
    train = {"train_limit": 2, "val_limit": 1, "max_epochs": 1, "batch_size": 2, "samples_per_image": 1}
    train |= {"patch_size": 64, "dataset_dir": str(nih_dir), "val_interval": 1, "lpips_weights": lpips_weights}
    train |= {"vgg_weights": vgg_weights}
    stages = [
        ("infer", ["inference.json"], {"dataset_dir": str(image), "output_dir": str(work / "infer"), **quick}),
        (
            "infer",
            ["inference.json", "evaluate.json"],
            {"dataset_dir": str(nih_dir), "limit": 2, "output_dir": str(work / "eval"), "figures": 0, **quick}
            | ({"lpips_weights": str(lpips_weights)} if lpips_weights else {"lpips": False}),
        ),
    ]
    for stage in zoo.stage_files(method):
        files = [f.split(f"{CONFIGS.name}/", 1)[-1] for f in stage]  # relative to configs/ (methods/<name>.json)
        where = work / Path(files[-1]).stem
        stages.append(("train", files, train | {"run_dir": str(where), "ckpt_path": str(where / "model.pt")}))
        if "train_autoencoder.json" in files:
            train |= {"autoencoder_weights": str(where / "model.pt")}
    command = isolated("workflows", str(bundle), str(zoo_ci), json.dumps(stages))
    done = subprocess.run(command, capture_output=True, text=True, env=safe_env())
    if done.returncode != 0:
        raise InputError(f"{bundle.name}: zoo workflow check failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return [f"{kind} {'+'.join(files)}" for kind, files, _ in stages]


def dev_inference_args(
    method: methods.Method, image: str | os.PathLike, out: str | os.PathLike, steps: int | None = None
) -> list[str]:
    """The development bundle's inference of ``image`` into ``out`` as ``python -m monai.bundle`` arguments, run
    from :data:`constants.BUNDLE_ROOT` (its inference.json, as its docs run it): what an exported bundle's inference
    must reproduce. The tests run them in their own process, :func:`dev_inference` as a process."""
    return (
        ["run", "--config_file", "configs/inference.json", "--method", method.name, "--modality", method.modality]
        + ["--input", str(image), "--output_dir", str(out)]
        + (["--steps", str(steps)] if steps else [])
    )


def dev_inference(method: methods.Method, image: str | os.PathLike, out: str | os.PathLike, steps: int | None = None):
    """:func:`dev_inference_args` run as a process. Returns the written SR file."""
    command = [sys.executable, "-m", "monai.bundle", *dev_inference_args(method, image, out, steps)]
    subprocess.run(command, cwd=BUNDLE_ROOT, check=True, capture_output=True)
    return next(Path(out).glob(f"{Path(image).stem}_sr*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.zoo_ci", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a bundle written by monai-sr export-zoo")
    parser.add_argument("zoo_ci", help="the model zoo's CI folder (its ci/, setup.cfg, ...), trusted as code")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as work:  # private (mode 0700): the CI's scratch zoo tree
            print("zoo CI passed: " + ", ".join(check(args.bundle, args.zoo_ci, work)))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
