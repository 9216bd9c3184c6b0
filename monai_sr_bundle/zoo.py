"""Export one method as a self-contained MONAI model-zoo bundle (``monai-sr export-zoo``).

The development bundle (this package) serves every method and finds its weights by name; a zoo bundle is
one model: ``models/model.pt``, configs that fix the method, and its code under ``scripts/``, importable
with the bundle folder on ``sys.path`` (as the zoo's CI and ``monai.bundle run`` put it) and no monai-sr
installed. The export assembles, it does not fork: the code is this package's modules with the package
name rewritten to ``scripts``, the configs are the development configs with a few keys fixed, the
metadata and model card are the development ones narrowed to the method, with its row of the benchmark
results file (``docs/results/<benchmark>.json``) of its modality.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

import monai_sr_bundle
from monai_sr_bundle import methods, results
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.jsonfile import read_json_object
from monai_sr_bundle.launch import safe_env
from monai_sr_bundle.stages import stage_configs
from monai_sr_bundle.transforms.presets import DEFAULT_PRESET
from monai_sr_bundle.weights import expand_state, weights_record

#: adapters and tools of the development bundle that a zoo bundle does not run (the NVFlare job, the
#: command line, this exporter)
NOT_EXPORTED = ("federated", "cli.py", "zoo.py")
#: the zoo's pre-commit hook refuses committed files above this size: larger ones go in large_files.yml
MAX_COMMITTED_BYTES = 1024 * 1024
#: the benchmark of each modality whose results (``docs/results/<benchmark>.json``) give a bundle's eval_metrics
BENCHMARKS = {"cxr": "quality", "ct": "ct_quality"}
MODALITY_WORDS = {"cxr": ("xray", "chest X-ray"), "ct": ("ct", "chest CT")}
TITLES = {"cxr": "Chest X-ray", "ct": "Chest CT"}


def bundle_name(method: methods.Method) -> str:
    """The zoo's folder name: lower case words joined by ``_`` (``chest_xray_sr_vdsr_x4``)."""
    return f"chest_{MODALITY_WORDS[method.modality][0]}_sr_{method.name}_x{method.scale}"


def rewrite_package(text: str) -> str:
    """Imports and references of this package (``import monai_sr_bundle``, ``monai_sr_bundle.x``) as the
    zoo bundle's ``scripts`` package."""
    text = re.sub(r"\b(from|import) monai_sr_bundle\b", r"\1 scripts", text)
    return re.sub(r"\bmonai_sr_bundle\.", "scripts.", text)


def json_text(content) -> str:
    """JSON as the zoo's ``pretty-format-json`` hook writes it (indent 4, keys in order, ASCII, final newline)."""
    return json.dumps(content, indent=4) + "\n"


def benchmark(method: methods.Method, source: str | os.PathLike | None = None) -> dict:
    """The results of the benchmark of the method's modality (or the results file ``source``), which must
    have a row for the method."""
    name = BENCHMARKS[method.modality]
    if source is None and not results.path(name).is_file():
        raise InputError(f"{results.path(name)}: not found; run python -m benchmarks.{name} or pass --results.")
    record = results.read(source or results.path(name))
    results.means(record, method.name)
    return record


def method_row(method: methods.Method) -> str:
    """The network in words and its size, as the method's overlay says them."""
    config = method.config
    return f"{config['description']} ({config['parameters']} parameters)" if "description" in config else method.family


def export(
    name: str,
    out: str | os.PathLike,
    modality: str = "cxr",
    scale: int = 4,
    weights_url: str = "",
    results_file: str | os.PathLike | None = None,
) -> Path:
    """Write the zoo bundle of method ``name`` into ``out/<bundle name>`` (written beside, then moved in
    place) and return its folder. Anything at that name (a bundle, a link) is refused, and so is an ``out``
    that is no folder (a file, a link to one, a device), before anything is written."""
    from monai_sr_bundle.data.writers import check_replaceable

    method = methods.get(name, scale, modality)
    if not method.weights_available:
        raise InputError(
            f"method {name!r} has no {modality} x{scale} weights ({method.weights_name}); a zoo bundle is one "
            "trained model: export a method with weights ('monai-sr methods' lists them)."
        )
    if not os.fspath(out):
        raise InputError("-o '': give the folder that receives the bundle folder.")
    target = Path(out) / bundle_name(method)
    if os.path.lexists(target):
        raise InputError(f"{target} exists; remove it or export to another folder.")
    check_replaceable([target])  # here: a file where its folder would be
    scores = benchmark(method, results_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _assemble(method, staging, scores, weights_url)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _assemble(method: methods.Method, root: Path, scores: dict, weights_url: str) -> None:
    source = BUNDLE_ROOT / "configs"
    dev = read_json_object(source / "metadata.json", f"the bundle's metadata {source / 'metadata.json'}")
    record = weights_record(method.weights_path)
    _copy_code(root / "scripts")
    _write_configs(method, root / "configs", _metadata(method, dev, results.means(scores, method.name)))
    models = root / "models"
    models.mkdir()
    # a plain fp32 state dict, as the zoo's tools (ckpt_export) and users' own load_state_dict expect
    state = torch.load(method.weights_path, map_location="cpu", weights_only=True)
    torch.save(expand_state(state), models / "model.pt")
    digest = sha256(models / "model.pt")
    trained_in = f"monai-sr {monai_sr_bundle.__version__}: its development bundle, where the command ran"
    entry = {"sha256": digest, **{k: v for k, v in record.items() if k != "sha256"}, "trained_in": trained_in}
    if "stored" in record:
        entry["stored"] = f"fp32, expanded from the development bundle's file ({record['stored']})"
    (models / "weights.json").write_text(json_text({"model.pt": entry}))
    if (models / "model.pt").stat().st_size > MAX_COMMITTED_BYTES:
        (root / "large_files.yml").write_text(
            "# the zoo keeps files over 1 MB out of git: upload models/model.pt and give its address as url\n"
            "large_files:\n"
            '  - path: "models/model.pt"\n'
            f'    url: "{weights_url}"\n'
            f'    hash_val: "{digest}"\n'
            '    hash_type: "sha256"\n'
        )
    shutil.copyfile(BUNDLE_ROOT / "LICENSE", root / "LICENSE")
    docs = root / "docs"
    docs.mkdir()
    (docs / "README.md").write_text(_model_card(method, scores, record, dev["authors"], scriptable(root)))
    (docs / "data_license.txt").write_text(DATA_LICENSE[method.modality])


def _copy_code(scripts: Path) -> None:
    """This package's modules as ``scripts``, imports sorted as the zoo's isort settings sort them (there,
    ``scripts`` is a third-party name: it stands beside torch, not in a first-party block of its own). An import
    wrapped here because ``monai_sr_bundle`` made it too long is joined when ``scripts`` fits it in a line, as
    the zoo's black (``--skip-magic-trailing-comma``) wants, so its trailing comma does not keep it wrapped."""
    try:
        import isort
    except ImportError as e:
        raise InputError("export-zoo sorts the bundle's imports with isort: pip install isort.") from e
    settings = dict(profile="black", line_length=120, known_first_party=["models"], split_on_trailing_comma=False)
    for path in sorted(BUNDLE_ROOT.rglob("*.py")):  # the development bundle is the package
        rel = path.relative_to(BUNDLE_ROOT)
        if rel.parts[0] in NOT_EXPORTED or rel.parts[0] in ("configs", "models", "docs"):
            continue
        dest = scripts / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        code = rewrite_package(path.read_text(encoding="utf-8"))
        dest.write_text(isort.code(code, **settings))


def _write_configs(method: methods.Method, configs: Path, metadata: dict) -> None:
    """The development configs of the method's stages, its overlay and the degradation presets, with this
    package's name rewritten; inference.json with :func:`_fixed_keys`; ``metadata`` as metadata.json."""
    source = BUNDLE_ROOT / "configs"
    stages = {Path(f).name for stage in stage_files(method) for f in stage}
    (configs / "degradations").mkdir(parents=True)
    for path in sorted(source.glob("*.json")):
        if path.name == "metadata.json" or (path.name.startswith("train") and path.name not in stages):
            continue
        if path.name == "export_denoiser.json" and method.exportable:
            continue
        _copy_json(path, configs / path.name, _fixed_keys(method) if path.name == "inference.json" else {})
    (configs / "metadata.json").write_text(json_text(metadata))
    shutil.copyfile(source / "logging.conf", configs / "logging.conf")
    (configs / "methods").mkdir()
    _copy_json(method.overlay, configs / "methods" / method.overlay.name)
    for path in sorted((source / "degradations").glob("*.json")):
        _copy_json(path, configs / "degradations" / path.name)


def _copy_json(source: Path, dest: Path, updates: dict | None = None) -> None:
    """``source`` with this package's name rewritten and ``updates`` set, in the zoo's JSON format."""
    content = json.loads(rewrite_package(source.read_text(encoding="utf-8")))
    dest.write_text(json_text({**content, **(updates or {})}))


def stage_files(method: methods.Method) -> list[list[str]]:
    """Each training stage's config files, in the order the method's overlay declares them."""
    return [stage_configs(method, stage) for stage in method.stages]


def _fixed_keys(method: methods.Method) -> dict:
    """What the development bundle chooses at run time and a zoo bundle fixes: the method, its modality and
    weights file, the intensity map it was trained with, and the zoo's data folder convention."""
    return {
        "method": method.name,
        "modality": method.modality,
        "scale": method.scale,
        "intensity": method.intensity,
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": f"/workspace/data/chest_{MODALITY_WORDS[method.modality][0]}",
    }


def _metadata(method: methods.Method, dev: dict, metrics: dict[str, float]) -> dict:
    word, phrase = MODALITY_WORDS[method.modality]
    meta = dict(dev)
    meta["name"] = f"{TITLES[method.modality]} super-resolution x{method.scale} ({method.name})"
    meta["task"] = f"Single-image super-resolution (x{method.scale}) of {phrase} images"
    meta["description"] = (
        f"{method_row(method)}. Takes the low-resolution image and returns it enlarged {method.scale}x; spacing "
        "is divided by the scale."
    )
    meta["modality"] = {"cxr": "CXR (chest radiograph: CR/DX)", "ct": "chest CT, axial slice by slice"}[method.modality]
    meta["eval_metrics"] = metrics
    for part in ("inputs", "outputs"):
        for spec in meta["network_data_format"][part].values():
            spec["modality"] = word
    return meta


NIH_CITATION = (
    "X. Wang, Y. Peng, L. Lu, Z. Lu, M. Bagheri, R. M. Summers. ChestX-ray8: Hospital-scale Chest X-ray Database "
    "and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases. CVPR 2017."
)
DATA_LICENSE = {
    "cxr": (
        "Third party data licence\n\n"
        "The weights in models/ were trained on NIH ChestX-ray14 (NIH Clinical Center), which is not part of "
        "this bundle.\nThe NIH released it without usage restriction and asks users to acknowledge the NIH "
        "Clinical Center as its source\nand to cite:\n\n" + NIH_CITATION + "\n\n"
        "Images: https://nihcc.app.box.com/v/ChestXray-NIHCC\n"
    ),
    "ct": (
        "Third party data licence\n\n"
        "The weights in models/ were trained on chest CT of The Cancer Imaging Archive (TCIA), which is not "
        "part of this bundle:\n"
        "- LIDC-IDRI (CC BY 3.0): Armato III SG et al., Data From LIDC-IDRI, TCIA 2015, "
        "doi:10.7937/K9/TCIA.2015.LO9QL9SX; Med Phys 38:915-931 (2011).\n"
        "- Lung-PET-CT-Dx (CC BY 4.0): Li P et al., A Large-Scale CT and PET/CT Dataset for Lung Cancer "
        "Diagnosis, TCIA 2020, doi:10.7937/TCIA.2020.NNC2-0461.\n"
        "- TCIA: Clark K et al., J Digit Imaging 26:1045 (2013).\n"
        "Evaluation also used slices of the dcmqi (BSD-3) and TotalSegmentator (CC BY 4.0) example series.\n"
    ),
}


def _model_card(method: methods.Method, scores: dict, record: dict, authors: str, scripts: bool) -> str:
    """The zoo template's sections for one method, from its registry entry, its weights record and its
    row of the benchmark results ``scores``."""
    word, phrase = MODALITY_WORDS[method.modality]
    configs = "configs/inference.json"
    run = "python -m monai.bundle run --config_file"
    table = results.format_table({method.name: scores["tables"]["main"][method.name]})
    degradation = json.dumps(record.get("degradation", DEFAULT_PRESET))
    training = "\n".join(
        f'{run} "[{",".join(repr(f) for f in stage)}]" --dataset_dir <nih_cxr14 folder>'
        for stage in stage_files(method)
    )
    tags = ", ".join(
        ["Super-resolution", "X-ray" if word == "xray" else "CT", "Chest", method.family]
        + (["Diffusion"] if method.stochastic else [])
    )
    intensity = method.intensity
    reading = (
        "the image's own range mapped to [0, 1] (min-max)"
        if intensity == "minmax"
        else f"the window {intensity} (modality units, HU for CT) mapped to [0, 1]"
    )
    torchscript = (
        "`ckpt_export` (scripting) works: "
        f"`python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt "
        f"--meta_file configs/metadata.json --config_file {configs}` (bundle root on PYTHONPATH)."
        if scripts
        else "the network does not compile with `torch.jit.script` (the zoo's `ckpt_export` check), so the bundle "
        "goes on the zoo's TorchScript exclusion list (`exclude_verify_torchscript_list` in its pull request)"
        + (
            '; `ckpt_export ... --use_trace True --input_shape "[1, 1, 64, 64]"` traces it, and '
            "`configs/inference_onnx.json` runs it with ONNX Runtime."
            if not method.stochastic
            else "; it samples with a loop, so use `configs/inference_onnx.json` (its denoiser in ONNX Runtime)."
        )
    )
    tiles = ": overlapping tiles are blended, seeded" if method.stochastic else " with the result of a whole-image pass"
    sampling = (
        "\nThe method is stochastic (diffusion): `--seed N` fixes the result, `--samples N` writes the mean of N "
        "draws with a per-pixel standard deviation map and an LR-consistency map beside it, `--steps` and "
        "`--sampler` choose the sampler. The DPM-Solver samplers come from diffusers (`pip install diffusers`; "
        "not pinned in the metadata: 0.42, the version tested, needs Python 3.11, and the zoo's CI runs 3.10).\n"
        if method.stochastic
        else ""
    )
    return f"""# {TITLES[method.modality]} super-resolution x{method.scale}: {method.name}

### **Authors**
{authors}

### **Tags**
{tags}

## **Model Description**
Single-image super-resolution (x{method.scale}) of single-channel {phrase} images: {method_row(method)}.
The network takes the low-resolution (LR) image and returns it enlarged {method.scale}x; the output keeps the
input's geometry with the spacing divided by the scale. Images are tiled with the context the network needs,
so any size runs in bounded memory{tiles}.{sampling}

This research model is not a medical device: SR images can invent or remove fine structure and must not be
used for diagnosis. A DICOM input gives a derived series marked as AI-generated.

## **Data**
{record.get("data", "see models/weights.json")}.
The data is not part of the bundle; its licence and citation are in `docs/data_license.txt`.

#### **Preprocessing**
Images are read to float32 in [0, 1] ({reading}; DICOM: modality LUT applied, MONOCHROME1 inverted), and
written back in the input's units. Training LR images are made from the HR images by the degradation
`{degradation}` at x{method.scale} (`configs/degradations/`).

## **Performance**
Test split of the data above (HR = the images, LR = their x{method.scale} degradation), over images:

{table}

The means are `eval_metrics` in `configs/metadata.json`. They come from the monai-sr repository's
`{scores["command"]}`; this bundle's evaluate config computes the metrics per image on a datalist:

```
{run} "['{configs}','configs/evaluate.json']" --dataset_dir <nih_cxr14 folder>
```

## **Additional Usage Steps**
Inference (a file or a folder of PNG, JPEG, DICOM, NIfTI, NRRD or MHA images; DICOM gives a derived series):

```
{run} {configs} --dataset_dir <folder or file> --output_dir sr_output
```

ONNX Runtime: `{run} "['{configs}','configs/inference_onnx.json']"` (exports `models/model.onnx` on first use).
TensorRT (GPU): `{run} "['{configs}','configs/inference_trt.json']"`.

Training (the shipped file's exact command, epochs and data split are in `models/weights.json`; a latent
method trains its autoencoder first):

```
{training}
```

On N GPUs of one machine, add `'configs/multi_gpu_train.json'` last to a stage's list (and
`'configs/multi_gpu_evaluate.json'` after `configs/evaluate.json`) and launch with
`torchrun --standalone --nnodes=1 --nproc_per_node=N -m monai.bundle run --config_file "[...]" ...`: one
process per GPU (NCCL; gloo on a CPU), `--batch_size` per process.

TorchScript: {torchscript}

## **System Configuration**
The shipped weights were trained on 2 CPU cores without a GPU, sized for that (patches, reduced widths and
depths); the same configs run unchanged on a GPU (`device` picks CUDA when present). Inference runs on CPU
or GPU; large images are tiled (`--tile_size`).

## **Limitations**
Trained on synthetic LR versions (degradation `{degradation}`) of {phrase} images at x{method.scale};
real low-resolution acquisitions, other scales and other body parts differ from that and are not validated.
Compare SR images with the original before trusting detail. Research use only; not cleared by any regulator.

## **Citation Info**
Cite the data as `docs/data_license.txt` asks, and the method's paper (References).

## **References**
- The network: {method_row(method)}.
- The data: {NIH_CITATION if method.modality == "cxr" else "see docs/data_license.txt"}
"""


def scriptable(bundle: str | os.PathLike) -> bool:
    """Whether the bundle's network compiles with ``torch.jit.script``, asked as the zoo's CI asks it: MONAI's
    ``ckpt_export`` of the bundle's ``network_def`` with its weights, the bundle's own code on ``PYTHONPATH``.
    The others go on the zoo's TorchScript exclusion list (a sampler's loop or MONAI's attention blocks do not
    script) and export by tracing or to ONNX instead."""
    import subprocess
    import sys

    bundle = Path(bundle).resolve()
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", f"{work}/m.ts"]
        command += ["--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json"]
        command += ["--config_file", "configs/inference.json", "--bundle_root", str(bundle)]
        env = safe_env({**os.environ, "PYTHONPATH": str(bundle)})
        return (
            subprocess.run(command, cwd=bundle if bundle.is_dir() else work, capture_output=True, env=env).returncode
            == 0
        )
