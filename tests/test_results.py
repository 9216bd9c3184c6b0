"""Benchmark results as data: the one table renderer, the results files' round trip, and the docs tables that
are renderings of the committed results files."""

from __future__ import annotations

import math

import pytest

from monai_sr_bundle import results
from monai_sr_bundle.data.paths import REPO_ROOT
from monai_sr_bundle.errors import InputError


def test_format_table():
    summary = {
        "bicubic": {
            "psnr": (30.123, 1.234),
            "ssim": (0.9, 0.01),
            "lpips": (0.25, 0.05),
            "inbox_psnr": (math.nan, math.nan),
        },
        "vdsr": {"psnr": (32.0, 1.0), "ssim": (0.95, 0.02)},
        "one": {"psnr": (28.0, math.nan), "ssim": (0.5, math.nan), "inbox_psnr": (math.inf, math.nan)},
    }
    lines = results.format_table(summary).splitlines()
    assert lines == [
        "| method | PSNR (dB) ↑ | SSIM ↑ | LPIPS ↓ | in-box PSNR (dB) ↑ |",
        "|---|---|---|---|---|",
        "| bicubic | 30.12 ± 1.23 | 0.9000 ± 0.0100 | 0.2500 ± 0.0500 | n/a |",
        "| vdsr | 32.00 ± 1.00 | 0.9500 ± 0.0200 | n/a | n/a |",
        "| one | 28.00 | 0.5000 | n/a | inf |",  # a single image: no "± nan"
    ]


def test_interval_cells_say_so_in_their_heading_and_nan_survives_the_json_round_trip(tmp_path):
    table = {"runet": {"psnr": [36.154, 35.81, 36.5], "lpips": [math.nan, None]}}
    written = results.write({"benchmark": "b", "tables": {"main": table}}, tmp_path / "b.json")
    assert "NaN" not in written.read_text()
    back = results.read(written)
    assert results.format_table(back["tables"]["main"]).splitlines() == [
        "| method | PSNR (dB) ↑ mean [68% CI] | LPIPS ↓ |",
        "|---|---|---|",
        "| runet | 36.15 [35.81, 36.50] | n/a |",
    ]
    assert results.means(back, "runet")["psnr"] == 36.154 and math.isnan(results.means(back, "runet")["lpips"])
    with pytest.raises(InputError, match="no row for 'vdsr'"):
        results.means(back, "vdsr")


@pytest.mark.parametrize("benchmark, page", [("quality", "results.md"), ("ct_quality", "results_ct.md")])
def test_the_docs_tables_are_renderings_of_the_committed_results(benchmark, page):
    """What the model card reads (the results file) and what a reader of the docs sees (the page) agree."""
    record = results.read(results.path(benchmark))
    assert record["command"] and record["data"] and record["weights"]
    assert results.format_table(record["tables"]["main"]) in (REPO_ROOT / "docs" / page).read_text()
