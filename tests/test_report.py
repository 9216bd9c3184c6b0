"""Comparison figures and the HTML report: their layout on synthetic images, and the report of a real
evaluation as headless Chromium renders it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data
from PIL import Image

from monai_sr_bundle.cli import main
from monai_sr_bundle.report import PANEL, PER_PAGE, TITLE, comparison_pages, spread_region, square, window
from tools.browser import Browser, chromium


def test_figure_pages_fit_a_screen_zoom_the_region_and_share_one_window(tmp_path):
    """10 columns (LR and 9 methods) at 96 x 80 px: two pages of at most 7 panels of 256 px (1792 px), the HR
    image on each; the zoom row is the region's HR pixels enlarged, in the HR window; HR's error row is black."""
    hr = torch.rand(1, 96, 80) * 0.5 + 0.25
    columns = {"LR (nearest)": hr.clone()} | {f"m{i}": (hr + 0.01 * i).clamp(0, 1) for i in range(9)}
    pages = comparison_pages(columns, hr, [10, 20, 42, 52], tmp_path / "figure_x.png", {"m0": "PSNR 30.00 dB"})
    assert [p.name for p in pages] == ["figure_x.png", "figure_x_2.png"]
    first, second = (np.asarray(Image.open(p)) for p in pages)
    assert first.shape == (TITLE + 3 * PANEL, PER_PAGE * PANEL, 3) and PER_PAGE * PANEL <= 1920
    assert second.shape[1] == 5 * PANEL  # 4 methods and HR
    lo, hi = window(hr)
    hr_gray = ((hr[0].numpy().T - lo) / (hi - lo)).clip(0, 1) * 255 + 0.5
    x0, y0, x1, y1 = square([10, 20, 42, 52], (96, 80))
    zoom = first[TITLE + PANEL : TITLE + 2 * PANEL, 6 * PANEL : 7 * PANEL, 0]  # the HR column, second row
    step = PANEL // (x1 - x0)
    np.testing.assert_array_equal(zoom[::step, ::step], hr_gray.astype(np.uint8)[y0:y1, x0:x1])
    assert first[TITLE + 2 * PANEL :, 6 * PANEL :].max() == 0  # HR against itself: no error
    assert first[TITLE + 2 * PANEL :, 2 * PANEL : 3 * PANEL].max() > 0  # m1 is 0.01 off everywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure_x.png", "figure_x_2.png"]  # no temporaries


def test_the_zoom_without_boxes_goes_where_methods_disagree():
    hr = torch.zeros(1, 128, 128)
    a, b = hr.clone(), hr.clone()
    b[0, 80:100, 20:40] = 0.5
    x0, y0, x1, y1 = spread_region([a, b], hr)
    assert x0 <= 80 and x1 >= 100 and y0 <= 20 and y1 >= 40
    one = spread_region([b], hr)  # a single method: its error
    assert one[0] <= 80 and one[2] >= 100


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (make test installs it)")
@needs_data(DATA / "nih_cxr14")
def test_the_report_renders_in_chromium_with_every_image_and_a_working_viewer(tmp_path):
    """``monai-sr demo`` (bicubic and srcnn, 3 NIH test images, figures for 2): its report.html loads in
    headless Chromium with no console error and every image drawn; its table has a row per method and sorts;
    the viewer's zoom enlarges the view and its split moves."""
    demo = ["demo", "--methods", "bicubic,srcnn", "--limit", "3", "--figures", "2", "--no-lpips", "-o", str(tmp_path)]
    assert main(demo) == 0
    report = tmp_path / "report.html"
    assert report.is_file() and len(list(tmp_path.glob("figure_*.png"))) == 2
    with Browser() as browser:
        seconds = browser.open(report.as_uri())
        assert browser.errors == [], browser.errors
        images = browser.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        # two images, each with the viewer's two crops and one figure page
        assert len(images) == 2 * 3 and all(done and width > 0 for _, done, width in images), images
        assert browser.evaluate("[...document.querySelectorAll('#metrics tbody tr')].length") == 2
        names = "[...document.querySelectorAll('#metrics tbody tr td:first-child')].map(c => c.textContent)"
        before = browser.evaluate(names)
        browser.evaluate("document.querySelector('#metrics th:nth-child(3)').click()")
        browser.evaluate("document.querySelector('#metrics th:nth-child(3)').click()")  # PSNR, highest first
        assert sorted(before) == sorted(browser.evaluate(names)) and browser.evaluate(names)[0] == "srcnn"
        width = "document.querySelector('.viewer img').getBoundingClientRect().width"
        assert browser.evaluate(width) == 2 * PANEL
        move = "(c => {{ c.value = {1}; c.dispatchEvent(new Event('input')) }})(document.querySelector('.{0}'))"
        browser.evaluate(move.format("zoom", 4))
        assert browser.evaluate(width) == 4 * PANEL
        browser.evaluate(move.format("split", 80))
        clip = "getComputedStyle(document.querySelector('.viewer img.top')).clipPath"
        assert browser.evaluate(clip) == "inset(0px 20% 0px 0px)"  # the left method on 80 % of the width
        assert browser.errors == []
    next(tmp_path.glob("report/*/1.png")).unlink()  # bicubic in a viewer: what these checks see when it is gone
    with Browser() as browser:
        browser.open(report.as_uri())
        assert browser.evaluate("[...document.images].filter(i => !i.naturalWidth).length") == 1
        assert browser.errors, "a missing image is a console error"
    assert seconds < 10


def test_many_images_page_the_report_and_every_page_renders(tmp_path):
    """25 figure images: report.html holds the first FIGURES_PER_PAGE viewers and links report_2.html and
    report_3.html, which hold the rest; a shorter report written over it leaves no stale page behind."""
    from monai_sr_bundle.report import FIGURES_PER_PAGE, write_report

    (tmp_path / "c").mkdir()
    for name, value in (("b", 60), ("s", 200), ("f", 120)):
        Image.fromarray(np.full((64, 64), value, np.uint8)).save(tmp_path / "c" / f"{name}.png")
    stems = [f"img{i:02d}" for i in range(25)]
    rows = [{"image": s, "method": m, "psnr": 30.0 + i % 3 + (m == "srcnn")} for i, s in enumerate(stems)
            for m in ("bicubic", "srcnn")]  # fmt: skip
    summary = {m: {"psnr": (30.5, 0.8)} for m in ("bicubic", "srcnn")}
    figures = {s: ({"bicubic": "c/b.png", "srcnn": "c/s.png"}, ["c/f.png"]) for s in stems}
    report = write_report(tmp_path, rows, summary, figures, 4, "bicubic", {"bicubic": None, "srcnn": None})
    pages = [report, tmp_path / "report_2.html", tmp_path / "report_3.html"]
    assert sorted(tmp_path.glob("report*.html")) == sorted(pages)
    with Browser() as browser:
        for number, page in enumerate(pages, start=1):
            browser.open(page.as_uri())
            assert browser.errors == [], (page, browser.errors)
            viewers = browser.evaluate("[...document.querySelectorAll('.compare h3')].map(h => h.textContent)")
            assert viewers == stems[(number - 1) * FIGURES_PER_PAGE : number * FIGURES_PER_PAGE]
            assert browser.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
            links = browser.evaluate("[...document.querySelectorAll('.pages a')].map(a => a.getAttribute('href'))")
            assert links == [p.name for p in pages if p != page]
        assert browser.evaluate("document.querySelectorAll('#metrics').length") == 0  # on report.html only
    write_report(tmp_path, rows[:2], summary, dict(list(figures.items())[:1]), 4, "bicubic", {"bicubic": None})
    assert sorted(tmp_path.glob("report*.html")) == [report] and "Image pages" not in report.read_text()


def test_a_shorter_report_removes_only_its_own_stale_pages_and_refuses_a_users_page(tmp_path):
    """25 figures write report_2.html and report_3.html; a 1-figure report over them removes those two and keeps
    a user's report_final.html and report_7.html; a user's page at a name the report writes is refused before
    any page is written."""
    from monai_sr_bundle.errors import InputError
    from monai_sr_bundle.report import write_report

    stems = [f"img{i:02d}" for i in range(25)]
    rows = [{"image": s, "method": "bicubic", "psnr": 30.0} for s in stems]
    summary = {"bicubic": {"psnr": (30.0, 0.0)}}
    figures = {s: ({"bicubic": "c/b.png"}, ["c/f.png"]) for s in stems}
    write_report(tmp_path, rows, summary, figures, 4, "bicubic", {"bicubic": None})
    for name in ("report_final.html", "report_7.html"):
        (tmp_path / name).write_text("<p>mine</p>")
    write_report(tmp_path, rows[:1], summary, dict(list(figures.items())[:1]), 4, "bicubic", {"bicubic": None})
    assert sorted(p.name for p in tmp_path.glob("report*.html")) == [
        "report.html",
        "report_7.html",
        "report_final.html",
    ]
    assert (tmp_path / "report_final.html").read_text() == (tmp_path / "report_7.html").read_text() == "<p>mine</p>"
    (tmp_path / "report_2.html").write_text("<p>mine too</p>")
    before = (tmp_path / "report.html").read_bytes()
    with pytest.raises(InputError, match="report_2.html: already exists and was not written by monai-sr"):
        write_report(tmp_path, rows, summary, figures, 4, "bicubic", {"bicubic": None})
    assert (tmp_path / "report_2.html").read_text() == "<p>mine too</p>" and not (tmp_path / "report_3.html").exists()
    assert (tmp_path / "report.html").read_bytes() == before


@needs_data(DATA / "nih_cxr14")
def test_several_samples_add_the_diffusion_methods_spread_and_lr_consistency_rows(tmp_path):
    """sr3 (5 steps) with 2 samples beside bicubic on a 128 px NIH crop: sr3 is scored on the mean, and the
    figure gains two rows, sr3's spread and LR-consistency (non-zero), black under bicubic; a bad number of
    samples is one sentence before anything is written."""
    from monai_sr_bundle import methods
    from monai_sr_bundle.data.datalist import nih_datalist
    from monai_sr_bundle.errors import InputError
    from monai_sr_bundle.evaluation import evaluate

    Image.open(nih_datalist("test")[0]["label"]).crop((192, 192, 320, 320)).save(tmp_path / "crop.png")
    predictors = {"bicubic": methods.get("bicubic").predictor(), "sr3": methods.get("sr3").predictor(steps=5, seed=0)}
    out = tmp_path / "out"
    with pytest.raises(InputError, match="samples"):
        evaluate([{"label": str(tmp_path / "crop.png")}], predictors, out, lpips=False, figures=1, samples=0)
    assert not out.exists()
    evaluate(
        [{"label": str(tmp_path / "crop.png")}], predictors, out, lpips=False, figures=1, progress=False, samples=2
    )
    page = np.asarray(Image.open(out / "figure_crop.png"))
    assert page.shape == (TITLE + 5 * PANEL, 4 * PANEL, 3)  # LR, bicubic, sr3, HR; 3 rows + 2 maps
    maps = page[TITLE + 3 * PANEL + 24 :]  # below each map's label
    assert maps[:, 1 * PANEL : 2 * PANEL].max() == 0 and maps[:, 2 * PANEL : 3 * PANEL].max() > 0


@needs_data(DATA / "nih_cxr14")
def test_the_diffusion_methods_on_the_first_images_only_say_so_in_every_table(tmp_path):
    """Issue 54: ``sampled_images=1`` runs sr3 (5 steps) on the first of two 128 px NIH crops only, bicubic on
    both; metrics.csv, summary.json, summary.md and the report's table give each method's count, and the second
    figure has no sr3 column; 0 is one sentence before anything is written."""
    import json

    from monai_sr_bundle import methods
    from monai_sr_bundle.data.datalist import nih_datalist
    from monai_sr_bundle.errors import InputError
    from monai_sr_bundle.evaluation import evaluate

    datalist = []
    for i, item in enumerate(nih_datalist("test")[:2]):
        Image.open(item["label"]).crop((192, 192, 320, 320)).save(tmp_path / f"crop{i}.png")
        datalist.append({"label": str(tmp_path / f"crop{i}.png")})
    predictors = {"bicubic": methods.get("bicubic").predictor(), "sr3": methods.get("sr3").predictor(steps=5, seed=0)}
    out = tmp_path / "out"
    with pytest.raises(InputError, match="sampled_images"):
        evaluate(datalist, predictors, out, lpips=False, sampled_images=0)
    assert not out.exists()
    evaluate(datalist, predictors, out, lpips=False, figures=2, progress=False, sampled_images=1)
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[:2] for r in rows) == [
        ["crop0.png", "bicubic"],
        ["crop0.png", "sr3"],
        ["crop1.png", "bicubic"],
    ]
    assert json.loads((out / "summary.json").read_text())["images_per_method"] == {"bicubic": 2, "sr3": 1}
    table = (out / "summary.md").read_text()
    assert "| method | images | PSNR (dB) ↑" in table and "| bicubic | 2 |" in table and "| sr3 | 1 |" in table
    assert "<th>method</th><th>images</th>" in (out / "report.html").read_text()
    first, second = (np.asarray(Image.open(out / f"figure_crop{i}.png")) for i in range(2))
    assert first.shape[1] == 4 * PANEL and second.shape[1] == 3 * PANEL  # LR, bicubic, (sr3,) HR
