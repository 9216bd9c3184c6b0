"""Evaluation (LR synthesis -> SR -> metrics, tables, figures) and the command line (``monai-sr sr|demo``),
on tiny synthetic PNGs and on pydicom's CT slice, with the bicubic baseline (no weights needed)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, USER_PYTHON, needs_data
from PIL import Image

from monai_sr_bundle import methods
from monai_sr_bundle.cli import demo_datalist, main
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.evaluation import _outputs, _sr_path, evaluate, input_labels
from monai_sr_bundle.networks.bicubic import upsample
from monai_sr_bundle.report import PANEL, TITLE
from monai_sr_bundle.transforms.degradation import downsample

BOX = [20.0, 30.0, 70.0, 90.0]  # (x0, y0, x1, y1): x along columns, y along rows


def _png(path: Path, rows: int = 128, cols: int = 128, seed: int = 0) -> Path:
    """A smooth, non-constant 8-bit image: gradients, a bright disc and mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    img = 0.3 + 0.3 * xx / cols + 0.2 * np.sin(yy / (5 + seed))
    img += 0.3 * (((xx - cols * 0.4) ** 2 + (yy - rows * 0.6) ** 2) < (rows / 6) ** 2)
    img += 0.03 * rng.standard_normal((rows, cols))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img.clip(0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def _hr(path: Path) -> torch.Tensor:
    """(1, X, Y) in [0, 1], as the reader loads it: x along columns."""
    return torch.from_numpy(np.asarray(Image.open(path)).T.astype(np.float32) / np.float32(255.0))[None]


def _bicubic_sr(hr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Independent of evaluate(): the default degradation, then bicubic upsampling clamped to [0, 1]."""
    lr = downsample(hr, scale)
    return upsample(lr[None], scale, "bicubic").clamp(0, 1)[0]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = np.mean((a.numpy().astype(np.float64) - b.numpy().astype(np.float64)) ** 2)
    return float(10 * np.log10(1.0 / mse))


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def bicubic():
    return methods.get("bicubic", 4).predictor()


# ------------------------------------------------------------------------------------------- evaluate


def test_evaluate_writes_everything_and_scores_match_numpy(tmp_path, bicubic, caplog):
    a, b = _png(tmp_path / "in" / "a.png", seed=0), _png(tmp_path / "in" / "b.png", seed=1)
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    small = _png(tmp_path / "in" / "tiny.png", rows=16, cols=16)  # LR would be 4x4: refused by the inferer
    datalist = [
        {"label": str(a), "boxes": [BOX]},
        {"label": str(bad)},
        {"label": str(b), "boxes": []},
        {"label": str(small)},
    ]
    out = tmp_path / "out"
    summary = evaluate(datalist, {"bicubic": bicubic}, out, lpips=False, save_images=True, figures=3, progress=False)

    # outputs
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "bicubic", "figure_a.png", "figure_b.png", "metrics.csv", "report", "report.html", "summary.json", "summary.md"
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "bicubic").iterdir()) == ["a_sr.png", "b_sr.png"]  # nothing for the bad ones

    # the bad inputs are reported by name and skipped
    info = json.loads((out / "summary.json").read_text())
    assert info["images"] == 2 and len(info["failures"]) == 2
    assert str(bad) in info["failures"][0] and str(small) in info["failures"][1]
    assert str(bad) in caplog.text and str(small) in caplog.text

    # metrics.csv: one row per image and method, PSNR equal to an independent computation
    rows = _read_csv(out / "metrics.csv")
    assert [r["image"] for r in rows] == ["a.png", "b.png"] and {r["method"] for r in rows} == {"bicubic"}
    assert {"psnr", "ssim", "ms_ssim", "uqi", "inbox_psnr", "inbox_ssim"} <= set(rows[0])
    assert "lpips" not in rows[0]
    srs = {}
    for row, path in zip(rows, (a, b)):
        hr = _hr(path)
        sr = srs[path.name] = _bicubic_sr(hr)
        assert float(row["psnr"]) == pytest.approx(_psnr(sr, hr), abs=1e-3)
        assert 15 < float(row["psnr"]) < 60 and 0 < float(row["ssim"]) <= 1
        assert math.isnan(float(row["ms_ssim"]))  # 128 px is too small for 5-scale MS-SSIM: missing, not a score
        # the written SR image is the in-memory SR, quantised to the input's 8 bits
        written = np.asarray(Image.open(out / "bicubic" / f"{path.stem}_sr.png")).T.astype(np.float64) / 255
        assert written.shape == (128, 128)
        np.testing.assert_allclose(written, sr[0].numpy(), atol=0.5 / 255 + 1e-6)

    # in-box metrics: the box crop for the boxed image, NaN for the image without boxes
    x0, y0, x1, y1 = (int(v) for v in BOX)
    sr_a, hr_a = srs["a.png"], _hr(a)
    inbox = _psnr(sr_a[:, x0:x1, y0:y1], hr_a[:, x0:x1, y0:y1])
    assert float(rows[0]["inbox_psnr"]) == pytest.approx(inbox, abs=1e-3)
    assert float(rows[0]["inbox_psnr"]) != pytest.approx(float(rows[0]["psnr"]), abs=1e-3)
    assert math.isnan(float(rows[1]["inbox_psnr"])) and math.isnan(float(rows[1]["inbox_ssim"]))

    # summary: mean ± sd over images; in-box over the boxed image only
    psnrs = [float(r["psnr"]) for r in rows]
    mean, sd = summary["bicubic"]["psnr"]
    assert mean == pytest.approx(np.mean(psnrs)) and sd == pytest.approx(np.std(psnrs, ddof=1))
    assert summary["bicubic"]["inbox_psnr"][0] == pytest.approx(inbox, abs=1e-3)
    assert math.isnan(summary["bicubic"]["inbox_psnr"][1])  # one value: no sd
    assert info["summary"]["bicubic"]["psnr"] == pytest.approx([mean, sd])
    md = (out / "summary.md").read_text()
    assert md.startswith("| method | images | PSNR (dB) ↑") and "| bicubic | 2 | " in md and "2 images" in md
    assert "nan" not in md  # MS-SSIM missing -> n/a; in-box over one image -> the mean alone

    # figures: LR | bicubic | HR, each its whole image, the zoom (the box; without one, where the error is) and
    # the error there (tests/test_report.py checks the panels)
    fig_a, fig_b = Image.open(out / "figure_a.png"), Image.open(out / "figure_b.png")
    assert fig_a.size == fig_b.size == (3 * PANEL, TITLE + 3 * PANEL)
    assert sorted(p.name for p in (out / "report" / "a").iterdir()) == ["0.png", "1.png", "2.png"]
    side = max(x1 - x0, y1 - y0)
    assert Image.open(out / "report" / "a" / "0.png").size == (side, side)  # the box, squared


def test_a_method_that_fails_on_one_image_leaves_the_rest_and_says_why(tmp_path, bicubic):
    """A method refusing one image (here a network that takes only 128 px wide inputs): the other method and
    the other image are scored; metrics.csv has no row for the pair, summary.json and report.html say why, and
    that image's figure shows the methods that did run."""
    from monai_sr_bundle.inference import Predictor
    from monai_sr_bundle.networks.bicubic import Bicubic

    class Picky(Bicubic):
        def forward(self, x):
            if x.shape[-2] != 32:
                raise InputError(f"takes 32 px LR images, not {x.shape[-2]}")
            return super().forward(x)

    picky = Predictor(methods.get("bicubic", 4), Picky(4))
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", rows=160, cols=160)
    out = tmp_path / "out"
    evaluate([{"label": str(a)}, {"label": str(b)}], {"bicubic": bicubic, "picky": picky}, out, lpips=False,
             figures=2, progress=False)  # fmt: skip
    rows = _read_csv(out / "metrics.csv")
    assert [(r["image"], r["method"]) for r in rows] == [("a.png", "bicubic"), ("a.png", "picky"), ("b.png", "bicubic")]
    (failure,) = json.loads((out / "summary.json").read_text())["failures"]
    assert failure == f"picky on {b}: takes 32 px LR images, not 40"
    assert (
        "picky on" in (out / "report.html").read_text()
        and "takes 32 px LR images, not 40" in (out / "report.html").read_text()
    )
    assert (
        Image.open(out / "figure_a.png").size[0] == 4 * PANEL and Image.open(out / "figure_b.png").size[0] == 3 * PANEL
    )


def test_evaluate_figures_limit_and_no_images(tmp_path, bicubic):
    a = _png(tmp_path / "a.png")
    evaluate([{"label": str(a)}], {"bicubic": bicubic}, tmp_path / "o", lpips=False, figures=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "metrics.csv",
        "report.html",
        "summary.json",
        "summary.md",
    ]


def test_evaluate_degradation_preset_and_predictors(tmp_path, bicubic, monkeypatch):
    """A preset name is the same LR synthesis as the default; a preset for another scale, methods of two
    scales and methods that read images differently are refused; each predictor is the one called."""
    a = _png(tmp_path / "a.png")
    quiet = {"lpips": False, "figures": 0, "progress": False}
    by_name = evaluate([{"label": str(a)}], {"bicubic": bicubic}, tmp_path / "n", degradation="bicubic", **quiet)
    default = evaluate([{"label": str(a)}], {"bicubic": bicubic}, tmp_path / "d", **quiet)
    assert by_name["bicubic"]["psnr"][0] == pytest.approx(default["bicubic"]["psnr"][0], abs=1e-6)
    x2 = methods.get("bicubic", 2).predictor()
    with pytest.raises(InputError, match="made for x4, not x2"):
        evaluate([{"label": str(a)}], {"bicubic": x2}, tmp_path / "x2", degradation="area_x4", **quiet)
    with pytest.raises(InputError, match="must share one scale, got x2, x4"):
        evaluate([{"label": str(a)}], {"a": bicubic, "b": x2}, tmp_path / "mixed", **quiet)
    ct = methods.get("bicubic", 4, "ct").predictor()
    with pytest.raises(InputError, match=r"read images differently \(a: \"minmax\"; b: \[-1000.0, 400.0\]\)"):
        evaluate([{"label": str(a)}], {"a": bicubic, "b": ct}, tmp_path / "modalities", **quiet)
    assert not any((tmp_path / d).exists() for d in ("x2", "mixed", "modalities"))
    calls = []
    spy = methods.get("bicubic", 4).predictor()
    monkeypatch.setattr(spy, "network", lambda x: calls.append(tuple(x.shape)) or bicubic.network(x))
    evaluate([{"label": str(a)}], {"bicubic": spy}, tmp_path / "s", **quiet)
    assert calls == [(1, 1, 32, 32)]


def test_evaluate_scores_the_artifact_region_where_artifacts_are_drawn(tmp_path, bicubic):
    """With an artifact preset, the PSNR inside the drawn artifacts is reported (NaN where none was drawn):
    bicubic keeps the burnt-in marks, so it is far below its whole-image PSNR there."""
    images = [{"label": str(_png(tmp_path / f"{i}.png"))} for i in range(4)]
    quiet = {"lpips": False, "figures": 0, "progress": False}
    evaluate(images, {"bicubic": bicubic}, tmp_path / "art", degradation="adsr_artifacts_x4", **quiet)
    rows = _read_csv(tmp_path / "art" / "metrics.csv")
    scored = [r for r in rows if not math.isnan(float(r["artifact_psnr"]))]
    assert scored, "the preset draws artifacts on half the images: some of 4 have them"
    assert all(float(r["artifact_psnr"]) < float(r["psnr"]) - 3 for r in scored)
    assert "artifact-region PSNR" in (tmp_path / "art" / "summary.md").read_text()
    evaluate(images[:1], {"bicubic": bicubic}, tmp_path / "plain", **quiet)
    assert "artifact_psnr" not in _read_csv(tmp_path / "plain" / "metrics.csv")[0]


def test_evaluate_all_bad_raises_and_names_them(tmp_path, bicubic):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match="no image could be evaluated") as e:
        evaluate(
            [{"label": str(bad)}, {"label": str(missing)}],
            {"bicubic": bicubic},
            tmp_path / "o",
            lpips=False,
            progress=False,
        )
    assert str(bad) in str(e.value) and str(missing) in str(e.value)
    assert not (tmp_path / "o" / "metrics.csv").exists()


def test_evaluate_scores_ct_in_its_hu_window(tmp_path, bicubic):
    """A CT slice is scored in the window of the CT predictors, so an air or metal outlier outside it changes
    nothing; under min-max (``intensity``) the same outlier would squash the image's contrast."""
    import SimpleITK as sitk

    lo, hi = -1000, 400
    hu = np.random.default_rng(0).integers(lo, hi, (160, 160)).astype(np.int16)
    hu[0, 0], hu[0, 1] = lo, hi
    outlier = hu.copy()
    outlier[5, 5] = -3000

    def nifti(name: str, arr: np.ndarray) -> dict:
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name))
        return {"label": str(tmp_path / name)}

    ct = {"bicubic": methods.get("bicubic", 4, "ct").predictor()}  # the CT modality's window: [-1000, 400]
    windowed = evaluate([nifti("o.nii.gz", outlier)], ct, tmp_path / "w", lpips=False)
    clipped = evaluate([nifti("c.nii.gz", hu)], {"bicubic": bicubic}, tmp_path / "c", lpips=False)  # min-max = window
    squashed = evaluate([nifti("s.nii.gz", outlier)], ct, tmp_path / "s", lpips=False, intensity="minmax")
    assert windowed["bicubic"]["psnr"][0] == pytest.approx(clipped["bicubic"]["psnr"][0], abs=0.05)
    assert abs(squashed["bicubic"]["psnr"][0] - clipped["bicubic"]["psnr"][0]) > 1.0


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_demo_on_own_files(tmp_path, capsys):
    _png(tmp_path / "in" / "a.png", seed=0)
    _png(tmp_path / "in" / "b.png", seed=2)
    out = tmp_path / "out"
    assert main(["demo", "--input", str(tmp_path / "in"), "-o", str(out), "--methods", "bicubic", "--no-lpips"]) == 0
    stdout = capsys.readouterr().out
    assert "your files" in stdout and "| bicubic |" in stdout
    assert len(_read_csv(out / "metrics.csv")) == 2
    assert sorted(p.name for p in (out / "bicubic").iterdir()) == ["a_sr.png", "b_sr.png"]
    assert (out / "summary.md").is_file() and (out / "figure_a.png").is_file() and (out / "figure_b.png").is_file()


def test_cli_demo_with_an_artifact_preset_scores_the_artifact_region(tmp_path, capsys):
    _png(tmp_path / "a.png", seed=0)
    out = tmp_path / "out"
    args = ["demo", "--input", str(tmp_path / "a.png"), "-o", str(out), "--methods", "bicubic", "--no-lpips"]
    assert main([*args, "--degradation", "adsr_artifacts_x4"]) == 0
    assert "degradation preset adsr_artifacts_x4" in capsys.readouterr().out
    assert "artifact_psnr" in _read_csv(out / "metrics.csv")[0]
    assert main([*args, "-o", str(tmp_path / "o2"), "--degradation", "no_such_preset"]) == 2
    assert "Degradation preset 'no_such_preset' not found" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_cli_demo_no_method_loads(tmp_path, capsys, caplog):
    _png(tmp_path / "a.png")
    assert (
        main(["demo", "--input", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--methods", "nope", "--no-lpips"])
        == 2
    )
    err = capsys.readouterr().err
    assert "none of the methods 'nope'" in err and "unknown method 'nope'" in caplog.text


def test_cli_sr_writes_4x_png(tmp_path, capsys):
    src = _png(tmp_path / "x.png", rows=64, cols=48)
    out = tmp_path / "out"
    assert main(["sr", str(src), "-o", str(out), "-m", "bicubic"]) == 0
    assert "wrote 1 image(s)" in capsys.readouterr().out
    written = Image.open(out / "x_sr.png")
    assert written.size == (4 * 48, 4 * 64) and written.mode == "L"
    sr = np.asarray(written).T.astype(np.float64) / 255
    ref = upsample(_hr(src)[None], 4, "bicubic").clamp(0, 1)[0, 0].numpy()
    np.testing.assert_allclose(sr, ref, atol=0.5 / 255 + 1e-6)


def test_cli_sr_never_overwrites_input(tmp_path):
    src = _png(tmp_path / "x.png", rows=32, cols=32)
    before = src.read_bytes()
    assert main(["sr", str(src), "-o", str(tmp_path), "-m", "bicubic"]) == 0
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png", "x_sr.png"]
    assert Image.open(tmp_path / "x_sr.png").size == (128, 128)


def test_cli_sr_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert main(["sr", str(missing), "-o", str(tmp_path / "o"), "-m", "bicubic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(missing) in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_sr_unknown_method(tmp_path, capsys):
    src = _png(tmp_path / "x.png", rows=32, cols=32)
    assert main(["sr", str(src), "-o", str(tmp_path / "o"), "-m", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nosuch'" in err and "bicubic" in err  # lists what is available
    assert not (tmp_path / "o").exists()


def _files(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_demo_replaces_only_its_own_files_and_refuses_a_users(tmp_path, capsys):
    """``monai-sr demo -o DIR`` keeps a user's ``report_final.html``; a rerun replaces its own outputs; a user's
    file at a name it writes (tables, summaries, report page, figure, SR image) is refused in one sentence before
    anything is written, nothing lost."""
    src = _png(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report_final.html").write_text("<p>my report</p>")
    demo = ["demo", "--input", str(src), "-o", str(out), "--methods", "bicubic", "--no-lpips", "--figures", "1"]
    assert main(demo) == 0
    assert main(demo) == 0  # a rerun replaces its own
    assert (out / "report_final.html").read_text() == "<p>my report</p>"
    capsys.readouterr()
    for name in ["metrics.csv", "summary.json", "summary.md", "report.html", "figure_a.png", "bicubic/a_sr.png"]:
        (out / name).unlink()
        (out / name).write_bytes(b"mine")
        before = _files(out)
        assert main(demo) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"error: {out / name}: already exists and was not written by monai-sr; move it or give another output "
            "folder (nothing was written)."
        ]
        assert _files(out) == before, name
        (out / name).unlink()


def test_cli_demo_keeps_apart_two_inputs_of_one_file_name(tmp_path, capsys):
    """Issue 56, finding 8: ``a/x.png`` and ``b/x.png`` each get their own rows, figure, crops and SR images, named by
    their shortest distinguishing path (``a/x.png``, ``a_x``), and the report links both; a unique name keeps its
    usual outputs, and what is written is exactly what the ownership check was asked about."""
    a = _png(tmp_path / "in" / "a" / "x.png", seed=0)
    b = _png(tmp_path / "in" / "b" / "x.png", seed=1)
    c = _png(tmp_path / "in" / "c" / "y.png", seed=2)
    out = tmp_path / "out"
    methods_ = ["bicubic", "srcnn"]
    demo = ["demo", "--input", str(a), str(b), str(c), "-o", str(out), "--methods", ",".join(methods_), "--no-lpips",
            "--figures", "3"]  # fmt: skip
    assert main(demo) == 0
    capsys.readouterr()

    rows = _read_csv(out / "metrics.csv")
    images = ["a/x.png", "b/x.png", "y.png"]
    assert [(r["image"], r["method"]) for r in rows] == [(i, m) for i in images for m in methods_]
    for row, path in zip(rows[::2], (a, b, c)):  # each row scores its own image
        assert float(row["psnr"]) == pytest.approx(_psnr(_bicubic_sr(_hr(path)), _hr(path)), abs=1e-3)
    assert json.loads((out / "summary.json").read_text())["images"] == 3
    assert "3 images" in (out / "summary.md").read_text()

    stems = ["a_x", "b_x", "y"]
    for method in methods_:
        assert sorted(p.name for p in (out / method).iterdir()) == [f"{s}_sr.png" for s in stems]
    for stem, path in zip(stems, (a, b, c)):
        written = np.asarray(Image.open(out / "bicubic" / f"{stem}_sr.png")).T.astype(np.float64) / 255
        np.testing.assert_allclose(written, _bicubic_sr(_hr(path))[0].numpy(), atol=0.5 / 255 + 1e-6)
    assert sorted(p.name for p in out.glob("figure_*")) == [f"figure_{s}.png" for s in stems]
    assert sorted(p.name for p in (out / "report").iterdir()) == stems
    page = (out / "report.html").read_text()
    for stem in stems:
        assert f"<h3>{stem}</h3>" in page and f'src="figure_{stem}.png"' in page and f'"report/{stem}/0.png"' in page

    labels = input_labels([str(a), str(b), str(c)], 1 + len(methods_))
    listed = set(_outputs([{"label": str(p)} for p in (a, b, c)], labels, methods_, out, True, 3))
    assert {p for p in out.rglob("*") if p.is_file()} == listed
    (out / "srcnn" / "b_x_sr.png").unlink()
    (out / "srcnn" / "b_x_sr.png").write_bytes(b"mine")  # a user's file at one of the new names is refused
    before = _files(out)
    assert main(demo) == 2 and "b_x_sr.png: already exists and was not written by monai-sr" in capsys.readouterr().err
    assert _files(out) == before


def test_input_labels_tell_inputs_apart_and_leave_unique_names_alone(tmp_path):
    """The file name while it is unique; else the shortest trailing path that tells the inputs apart; a number
    where none does (the same file twice; folders alike once made safe; one stem on a case-insensitive disk; a
    figure's second page). Saved SR images follow the label."""

    def labels(*paths: str, columns: int = 2) -> list[tuple[str, str]]:
        return [(lab.image, lab.stem) for lab in input_labels([str(tmp_path / p) for p in paths], columns)]

    assert labels("in/x.png", "in/y.nii.gz") == [("x.png", "x"), ("y.nii.gz", "y.nii")]  # as they always were
    assert labels("a/x.png", "b/x.png", "c/y.png") == [("a/x.png", "a_x"), ("b/x.png", "b_x"), ("y.png", "y")]
    assert labels("r/a/x.png", "s/a/x.png") == [("r/a/x.png", "r_a_x"), ("s/a/x.png", "s_a_x")]
    assert labels("a/x.nii.gz", "b/x.dcm") == [("a/x.nii.gz", "a_x.nii"), ("b/x.dcm", "b_x")]  # both SR x_sr.nii.gz
    assert labels("d/x.png", "d/x.png") == [("x.png", "x"), ("x.png (2)", "x_2")]
    assert labels("a b/x.png", "a_b/x.png") == [("a b/x.png", "a_b_x"), ("a_b/x.png (2)", "a_b_x_2")]
    assert labels("d/x.png", "d/X.jpg") == [("x.png", "x"), ("X.jpg (2)", "X_2")]
    assert labels("d/x.png", "d/x_2.png") == [("x.png", "x"), ("x_2.png", "x_2")]
    assert labels("d/x.png", "d/x_2.png", columns=8) == [("x.png", "x"), ("x_2.png (2)", "x_2_2")]  # figure_x_2.png

    a, b = input_labels([str(tmp_path / "a" / "x.png"), str(tmp_path / "a" / "x.png")], 2)
    assert _sr_path(str(tmp_path / "a" / "x.png"), tmp_path / "m", "png", a) == tmp_path / "m" / "x_sr.png"
    assert _sr_path(str(tmp_path / "a" / "x.png"), tmp_path / "m", "png", b) == tmp_path / "m" / "x_2_sr.png"
    (ct,) = input_labels([str(tmp_path / "ct.dcm")], 2)
    assert _sr_path(str(tmp_path / "ct.dcm"), tmp_path / "m", "dicom", ct) == tmp_path / "m" / "ct_sr.nii.gz"


def test_metrics_csv_cells_cannot_run_as_spreadsheet_formulas(tmp_path, bicubic):
    """An image named like a formula gets a leading ``'`` in metrics.csv (the numbers stay numbers)."""
    src = _png(tmp_path / "in" / "=1+2.png")
    evaluate([{"label": str(src)}], {"bicubic": bicubic}, tmp_path / "out", lpips=False, progress=False)
    (row,) = _read_csv(tmp_path / "out" / "metrics.csv")
    assert row["image"] == "'=1+2.png" and float(row["psnr"]) > 15 and row["software"].startswith("monai-sr ")


def test_cli_demo_fallback_without_shared_data(tmp_path, monkeypatch, capsys, caplog):
    pytest.importorskip("pydicom")
    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv("MONAI_SR_DATA", str(empty))
    datalist, source = demo_datalist(None, 8)
    assert len(datalist) == 1 and Path(datalist[0]["label"]).name == "CT_small.dcm" and "CT_small" in source
    out = tmp_path / "out"
    assert main(["demo", "-o", str(out), "--methods", "bicubic"]) == 0
    assert "LPIPS skipped" in caplog.text and str(empty) in caplog.text
    rows = _read_csv(out / "metrics.csv")
    assert len(rows) == 1 and rows[0]["image"] == "CT_small.dcm" and "lpips" not in rows[0]
    assert float(rows[0]["psnr"]) > 15
    assert (out / "bicubic" / "CT_small_sr.nii.gz").is_file() and (out / "figure_CT_small.png").is_file()
    assert "CT_small" in capsys.readouterr().out


@pytest.mark.slow
@needs_data(DATA / "nih_cxr14")
def test_cli_demo_default_uses_nih_test_images_and_shipped_weights(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo", "-o", str(out), "--limit", "2", "--figures", "1", "--methods", "bicubic,srcnn", "--no-lpips"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "NIH ChestX-ray14 test images" in printed and "| srcnn |" in printed
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2
    assert len(list((out / "srcnn").glob("*_sr.png"))) == 2 and len(list(out.glob("figure_*.png"))) == 1


@pytest.mark.slow
@needs_data(DATA / "nih_cxr14")
def test_the_demos_default_command_shows_progress_on_a_terminal_from_start_to_end(tmp_path):
    """Issue 54, as a newcomer runs it: ``monai-sr demo -o DIR`` (``make demo``'s command, every default kept)
    under a pseudo-terminal. It says what it loads at once, its first line comes within 30 s, the bar never
    stays still for more than 10 s (+5 s of slack for a loaded machine) once it is up, and the table it ends
    with has every shipped method with the images each was scored on (the diffusion methods on fewer).
    End to end because the demo's default is what is tested: this is the demo's whole run, 37 s alone here
    (3 images, the diffusion methods on 1; 1.5-1.8 min on the slower machine of earlier sessions) and 56-98 s in
    the suite, where it gets one thread beside the other worker."""
    import os
    import pty
    import select
    import subprocess
    import time

    from monai_sr_bundle.cli import DEMO_LIMIT, DEMO_SAMPLED

    terminal, side = pty.openpty()
    command = [USER_PYTHON, "-m", "monai_sr_bundle.cli", "demo", "-o", str(tmp_path / "demo")]
    start = time.monotonic()
    process = subprocess.Popen(command, stdin=side, stdout=side, stderr=side, close_fds=True)
    os.close(side)
    chunks = []  # (seconds since the start, what came)
    while True:
        ready, _, _ = select.select([terminal], [], [], 1.0)
        if ready:
            try:
                data = os.read(terminal, 65536)
            except OSError:  # EIO: the demo ended and closed its side
                break
            if not data:
                break
            chunks.append((time.monotonic() - start, data.decode(errors="replace")))
    os.close(terminal)
    assert process.wait(60) == 0, "".join(text for _, text in chunks)[-3000:]
    text = "".join(t for _, t in chunks)
    assert chunks[0][0] < 30 and "loading" in chunks[0][1], chunks[:2]
    bar = next(i for i, (_, t) in enumerate(chunks) if "evaluating" in t)
    times = [when for when, _ in chunks[bar:]]
    assert max(b - a for a, b in zip(times, times[1:])) < 15, "the bar stood still for 15 s or more"
    assert "the diffusion methods on the first " in text  # how many: the table's images column below
    for name in methods.names():
        stochastic = methods.get(name).stochastic
        assert f"| {name} | {DEMO_SAMPLED if stochastic else DEMO_LIMIT} |" in text, name


def test_the_cli_takes_as_many_torch_threads_as_other_programs_leave_cores(monkeypatch, capsys, torch_threads):
    """While the libraries loaded (10 s), other programs used 1 core of CPU time each second: one thread fewer,
    said once; nothing changes where OMP_NUM_THREADS chose, or on an idle machine."""
    import os

    import torch

    from monai_sr_bundle import cli

    threads, cores = torch_threads, len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: there is no thread to give up")
    start, end = (100.0, 500.0, 1.0), (110.0, 519.5, 10.5)  # 19.5 CPU s in 10 s, 9.5 of them this process's
    monkeypatch.setattr(cli, "_cpu_use", lambda: end)
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    cli._fit_threads(start)
    assert torch.get_num_threads() == threads and not capsys.readouterr().err
    monkeypatch.delenv("OMP_NUM_THREADS")
    cli._fit_threads((100.0, 510.0, 1.0))  # only this process used CPU: every core free
    assert torch.get_num_threads() == threads and not capsys.readouterr().err
    torch.set_num_threads(cores)
    cli._fit_threads(start)
    assert torch.get_num_threads() == max(1, cores - 1)
    assert f"running on {max(1, cores - 1)} thread(s)" in capsys.readouterr().err
