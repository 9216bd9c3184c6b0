"""Zoo bundles (``monai-sr export-zoo``): each passes the MONAI model zoo's own CI (its scripts, run from
``../shared/tools/model-zoo-ci`` in a scratch zoo tree by ``tools/zoo_ci.py``) and reproduces the development
bundle's output with no monai-sr importable. The sweep over every method is ``python -m benchmarks.zoo``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bundle import monai_bundle

from monai_sr_bundle import methods, zoo
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.errors import InputError
from tools import zoo_ci

ZOO_CI = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "model-zoo-ci"
NIH = shared_data_dir() / "nih_cxr14"
WEIGHTS = shared_data_dir() / "weights"


@pytest.fixture(scope="module")
def zoo_inputs(tmp_path_factory):
    if not (ZOO_CI / "ci" / "verify_bundle.py").is_file() or not (NIH / "images.csv").is_file():
        pytest.skip(f"needs the model zoo's CI ({ZOO_CI}) and the NIH data ({NIH})")
    return zoo_ci.workflow_data(NIH, tmp_path_factory.mktemp("zoo_inputs"))


@pytest.mark.parametrize("method, modality", [("vdsr", "cxr"), ("ldm", "cxr")])
@pytest.mark.slow
def test_exported_bundle_passes_the_zoo_ci_and_matches_the_dev_bundle(method, modality, zoo_inputs, tmp_path):
    image, nih = zoo_inputs
    bundle = zoo.export(method, tmp_path / "dist", modality=modality)
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "docs" / "data_license.txt").is_file()
    passed = zoo_ci.check(bundle, ZOO_CI, tmp_path / "ci")
    assert passed[0] == "verify_bundle (full)" and passed[-3:] == ["isort", "black", "flake8"]
    assert {"pretty-format-json", "end-of-file-fixer", "check-added-large-files"} <= set(passed)
    stages = zoo_ci.check_workflows(bundle, ZOO_CI, image, nih, tmp_path / "run", weights_dir=WEIGHTS)
    assert stages[:2] == ["infer inference.json", "infer inference.json+evaluate.json"]
    assert any(s.startswith("train") for s in stages)
    # the development bundle's inference in this process (benchmarks.zoo runs it as a process)
    dev_method = methods.get(method, modality=modality)
    dev = monai_bundle(
        *zoo_ci.dev_inference_args(dev_method, image, tmp_path / "dev", 2 if dev_method.stochastic else None)
    )
    assert dev.returncode == 0, dev.stdout[-3000:]
    ours = np.asarray(Image.open(tmp_path / "dev" / f"{image.stem}_sr.png"))
    theirs = np.asarray(Image.open(tmp_path / "run" / "infer" / f"{image.stem}_sr.png"))
    assert ours.shape == (4 * 96, 4 * 96) and np.array_equal(ours, theirs)
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())
    assert summary["images"] == 2 and "lpips" in summary["summary"][method]


@pytest.mark.slow
def test_exported_metadata_is_the_methods_own(tmp_path):
    bundle = zoo.export("runet", tmp_path, modality="ct")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert bundle.name == "chest_ct_sr_runet_x4" and inference["method"] == "runet"
    assert inference["intensity"] == [-1000, 400]  # the HU window the CT weights were trained in
    assert all(isinstance(v, float) for v in meta["eval_metrics"].values()) and "psnr" in meta["eval_metrics"]
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "ct"
    assert (bundle / "large_files.yml").is_file() == ((bundle / "models" / "model.pt").stat().st_size > 2**20)
    assert "TCIA" in (bundle / "docs" / "data_license.txt").read_text()
    assert "monai_sr_bundle" not in "".join(p.read_text() for p in (bundle / "configs").rglob("*.json"))
    assert "monai_sr_bundle" not in "".join(p.read_text() for p in (bundle / "scripts").rglob("*.py"))
    multi_gpu = json.loads((bundle / "configs" / "multi_gpu_train.json").read_text())  # the zoo's convention
    assert multi_gpu["+initialize"][1]["_target_"] == "scripts.distributed.setup"
    assert (bundle / "scripts" / "distributed.py").is_file()
    assert (bundle / "configs" / "multi_gpu_evaluate.json").is_file()
    card = (bundle / "docs" / "README.md").read_text()
    for heading in ("### **Authors**", "### **Tags**", "## **Performance**", "## **System Configuration**"):
        assert heading in card
    assert f"{meta['eval_metrics']['psnr']:g}" in card


def test_export_refusals(tmp_path):
    with pytest.raises(InputError, match="no cxr x4 weights"):
        zoo.export("bicubic", tmp_path)
    with pytest.raises(InputError, match="unknown method"):
        zoo.export("nope", tmp_path)
    (tmp_path / "chest_xray_sr_srcnn_x4").mkdir()
    with pytest.raises(InputError, match="exists"):
        zoo.export("srcnn", tmp_path)
    scores = tmp_path / "quality.json"
    scores.write_text(json.dumps({"benchmark": "quality", "tables": {"main": {"vdsr": {"psnr": [35.0, 1.0]}}}}))
    with pytest.raises(InputError, match="no row for 'srcnn'"):
        zoo.export("srcnn", tmp_path / "other", results_file=scores)
    with pytest.raises(InputError, match="not found"):
        zoo.export("srcnn", tmp_path / "other", results_file=tmp_path / "missing.json")
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
    with pytest.raises(InputError, match="not the model zoo's CI"):
        zoo_ci.check(tmp_path / "chest_xray_sr_srcnn_x4", tmp_path, tmp_path / "ci")
    assert zoo_ci.main([str(tmp_path / "chest_xray_sr_srcnn_x4"), str(tmp_path)]) == 2  # python -m tools.zoo_ci


@pytest.fixture(scope="module")
def zoo_requirements(tmp_path_factory) -> Path:
    """The requirements file the zoo's premerge writes from the bundle's pins with ci/get_bundle_requirements.py
    (``ALLOW_MONAI_RC`` as it sets it); once for the Pythons it is resolved on."""
    if not (ZOO_CI / "ci").is_dir():
        pytest.skip(f"needs the model zoo's CI at {ZOO_CI}")
    tree = tmp_path_factory.mktemp("zoo")
    (tree / "models" / "b" / "configs").mkdir(parents=True)
    shutil.copyfile(BUNDLE_ROOT / "configs" / "metadata.json", tree / "models" / "b" / "configs" / "metadata.json")
    done = subprocess.run(
        [sys.executable, str(ZOO_CI / "ci" / "get_bundle_requirements.py"), "-b", "b", "-p", "models"],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"ALLOW_MONAI_RC": "true", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return tree / done.stdout.strip()


@pytest.mark.parametrize("python", ["3.10", "3.11"])
@pytest.mark.slow
def test_metadata_pins_install_on_the_zoo_pythons(python, zoo_requirements, tmp_path):
    """The zoo's premerge installs the bundle's pins on Python 3.10; they must resolve there and on 3.11."""
    resolved = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:", "--pre"]
        + ["--python-version", python, "--target", str(tmp_path / "t"), "-r", str(zoo_requirements)],
        capture_output=True,
        text=True,
    )
    assert resolved.returncode == 0, resolved.stderr[-2000:]
