"""The benchmarks' harness (the results file, the options, benchmarks of parts), and the robustness and
native-image benchmarks: their measures on small tensors, and their bad input (an external folder without
images, an unusable crop, an unknown method) refused in one sentence before anything is written. Their full
runs are the benchmarks themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA, needs_data

from benchmarks import harness, native
from monai_sr_bundle import methods, results
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.bicubic import upsample
from monai_sr_bundle.weights import weights_record

REPO = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_lung_crop_is_a_native_square_on_the_right_mid_lung_and_never_leaves_the_image():
    image = torch.arange(300 * 200, dtype=torch.float32).reshape(1, 300, 200)
    crop = native.lung_crop(image, 64)
    assert crop.shape == (1, 64, 64)
    x0 = int(crop[0, 0, 0]) // 200
    assert 0.15 * 300 <= x0 + 32 <= 0.40 * 300  # centred within the lung patch along x
    assert native.lung_crop(image, 1000).shape == image.shape  # a crop larger than the image: the image


def test_consistency_tells_an_sr_that_keeps_the_input_from_one_that_moves_it_and_spread_needs_two_draws():
    lr = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    sr = upsample(lr[None], 4, "bicubic")[0].clamp(0, 1)
    kept, maps = native.score(lr, sr[None], 4)
    moved, _ = native.score(lr, sr.roll(3, dims=-1)[None], 4)
    assert kept["consistency_psnr"] > moved["consistency_psnr"] + 3
    assert kept["sd"] is None and maps["sr"].shape == (1, 1, 128, 128)
    two, _ = native.score(lr, torch.stack([sr, (sr + 0.1).clamp(0, 1)]), 4)
    assert 0.03 < two["sd"] <= 0.05


@pytest.mark.slow
@needs_data(DATA / "nih_cxr14")
def test_robustness_refuses_an_external_folder_without_images_and_writes_nothing(tmp_path):
    doc = REPO / "docs" / "results_robustness.md"
    before = doc.read_bytes()
    (tmp_path / "empty").mkdir()
    done = _script("robustness", "--external", str(tmp_path / "empty"), "--work", str(tmp_path / "work"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--external" in done.stderr and "no images" in done.stderr
    assert doc.read_bytes() == before and not (tmp_path / "work").exists()


@needs_data(DATA / "cxr_dicom")
@pytest.mark.parametrize(
    "args, said",
    [
        (["--external", "{empty}"], "no images"),
        (["--crop", "4"], "--crop"),
        (["--samples", "1"], "--samples"),
        (["--sampled-images", "-1"], "--sampled-images"),
        (["--methods", "bicubic,nosuch"], "unknown method 'nosuch'"),
    ],
)
def test_native_refuses_bad_input_in_one_sentence_and_writes_nothing(tmp_path, capsys, args, said):
    """In this process, through the script's ``main`` (the module's own run is robustness's test above)."""
    doc = REPO / "docs" / "results_native.md"
    before = doc.read_bytes() if doc.exists() else None
    (tmp_path / "empty").mkdir()
    external = str(DATA / "external_cxr_mhh" / "images")
    args = [a.format(empty=tmp_path / "empty") for a in args]
    assert native.main([*(["--external", external] if "--external" not in args else []), *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and said in err, err
    assert (doc.read_bytes() if doc.exists() else None) == before


def test_the_harness_records_command_data_and_weights_and_keeps_earlier_parts(tmp_path, monkeypatch, capsys):
    """A benchmark's results file says what ran (its command as typed), on what, with which weights (sha256);
    a benchmark of parts keeps those measured by earlier runs; bad input is one sentence and exit status 2."""
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    monkeypatch.setenv("MONAI_SR_DATA", os.environ.get("MONAI_SR_DATA", str(DATA)))  # restored afterwards
    parser = harness.parser("benchmarks/example.py", "Example.\n\nMore.", methods=True)
    parser.add_argument("--part", default="all")
    used = [methods.get("srcnn", 4), methods.get("bicubic", 4)]

    def run(args):
        if args.methods == "nosuch":
            raise InputError("unknown method 'nosuch'")
        harness.record(args, "words", used, {"main": {"srcnn": {"psnr": [30.0, 1.0]}}}, 0.25, images=3)
        return 0

    assert harness.main(parser, run, ["--methods", "srcnn", "--data", str(tmp_path / "d")]) == 0
    record = results.read(tmp_path / "example.json")
    assert record["command"] == f"python -m benchmarks.example --methods srcnn --data {tmp_path / 'd'}"
    assert os.environ["MONAI_SR_DATA"] == str(tmp_path / "d") and record["images"] == 3
    srcnn = methods.get("srcnn", 4)
    expected = weights_record(srcnn.weights_path)["sha256"]
    assert record["weights"] == {f"monai_sr_bundle/models/{srcnn.weights_name}": expected}  # bicubic has none
    assert harness.main(parser, run, ["--methods", "nosuch"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown method 'nosuch'"

    parts = {"a": lambda: {"x": 1}, "b": lambda: {"y": 2}}
    harness.run_parts(harness.parse(parser, ["--part", "a"]), parts, "words", used)
    found = harness.run_parts(harness.parse(parser, ["--part", "b"]), parts, "words", used)
    assert found["a"]["result"] == {"x": 1} and found["a"]["command"] == "python -m benchmarks.example --part a"
    assert found["b"]["result"] == {"y": 2} and results.read(tmp_path / "example.json")["parts"] == found


@needs_data(DATA / "nih_cxr14")
def test_the_quality_figure_is_made_whatever_limit_and_no_images_is_a_sentence(tmp_path, monkeypatch, capsys):
    """Issue 71, finding 14: ``--figure-only --limit 2`` said ``--nproc_per_node at most 0`` (the limit left out
    the figure's image, and no image at all read as too many processes). The figure is of one image, whatever
    the limit; no images to evaluate says so."""
    from benchmarks import quality

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text(f"# Results\n\ntable\n\n{quality.FIGURE_MARK}made by x -->\n")
    monkeypatch.setattr(quality, "DOCS", docs)
    monkeypatch.setenv("MONAI_SR_DATA", os.environ.get("MONAI_SR_DATA", str(DATA)))  # restored afterwards
    args = ["--methods", "bicubic", "--work", str(tmp_path / "work")]
    assert quality.main(["--figure-only", "--limit", "2", *args]) == 0, capsys.readouterr().err
    assert [p.name for p in (docs / "figures").iterdir()] == ["comparison.png"]
    assert (docs / "results.md").read_text().startswith("# Results\n\ntable\n\n")
    assert "](figures/comparison.png)" in (docs / "results.md").read_text()
    with pytest.raises(InputError, match="^no images to evaluate: give at least one.$"):
        quality.evaluate([], {"bicubic": methods.get("bicubic", 4).predictor()}, tmp_path / "none")


def test_the_envelope_marks_each_method_against_the_best_and_the_router_counts_in_no_best():
    """The envelope's cells: the best in bold, the others with how far behind; a method below the baseline or more
    than ENVELOPE_DB behind anywhere is outside. The router picks each image's specialist by its LR's level."""
    from benchmarks.robustness import ENVELOPE_DB, ROUTED, ROUTER, envelope, routed_gain

    gains = {"clean": {"a": 2.0, "b": 2.0 - ENVELOPE_DB / 2}, "noisy": {"a": -0.1, "b": 1.0}}
    text = envelope(gains, {"clean": 3.0, "noisy": 0.5})
    row = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert "**+2.00**" in row["a"] and "-0.10 (-1.10)" in row["a"] and row["a"].endswith("no (1/2) |")
    assert row["b"].endswith("yes (2/2) |") and "**+1.00**" in row["b"]
    assert "+3.00 (+1.00)" in row[ROUTER] and "+0.50 (-0.50)" in row[ROUTER]  # above the best: not the best
    rows = [
        {"image": f"{i}.png", "method": m, "psnr": str(p)}
        for i, ps in enumerate([(30, 31, 35), (30, 33, 32)])
        for m, p in zip(("bicubic", *ROUTED), ps)
    ]
    items = [{"label": f"/x/{i}.png"} for i in range(2)]
    assert routed_gain(rows, [1.0, 9.0], items, 2.4, "bicubic") == pytest.approx((1 + 2) / 2)
    assert routed_gain(rows, [9.0, 1.0], items, 2.4, "bicubic") == pytest.approx((5 + 3) / 2)
