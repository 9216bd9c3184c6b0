"""A pip-installed monai-sr (a federated site, a MONAI Label server) carries the bundle, not only the code."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from monai_sr_bundle.methods import BUNDLE_ROOT

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_configs_weights_and_model_card(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    names = set(zipfile.ZipFile(next(tmp_path.glob("monai_sr-*.whl"))).namelist())
    folders = ("configs", "methods", "degradations", "models", "docs")
    bundle_files = [p for p in BUNDLE_ROOT.rglob("*") if p.is_file() and p.parent.name in folders]
    expected = {
        "monai_sr_bundle/" + str(p.relative_to(BUNDLE_ROOT))
        for p in bundle_files
        if p.suffix in (".json", ".conf", ".pt", ".md")
    }
    assert {
        "monai_sr_bundle/configs/train.json",
        "monai_sr_bundle/models/srcnn_cxr_x4.pt",
        "monai_sr_bundle/configs/methods/vdsr.json",
        "monai_sr_bundle/configs/degradations/realistic_x4.json",
    } <= expected
    assert expected <= names, sorted(expected - names)
