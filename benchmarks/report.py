"""The HTML report of `monai-sr demo` as a person opens it: its size on disk (the page and every file it
shows), the time headless Chromium takes to load it with every image, console errors and images that did
not load, and a screenshot for the README (docs/figures/report.png). Writes the report block of
docs/benchmarks.md.

Run: .venv/bin/python -m benchmarks.report [--report out/report8] (made first, if missing, by
     .venv/bin/monai-sr demo --limit 8 --figures 8 --all -o out/report8: 8 NIH test images, every shipped
     method on each)
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import REPO, write_block
from tools.browser import Browser

DOC = REPO / "docs" / "benchmarks.md"
MARKERS = ("<!-- report: start -->", "<!-- report: end -->")
FIGURE = REPO / "docs" / "figures" / "report.png"


def main(argv=None) -> int:
    parser = harness.parser(__file__, __doc__, work=False)
    parser.add_argument("--report", default=str(REPO / "out" / "report8"))
    args = harness.parse(parser, argv)
    folder, begun = Path(args.report), time.perf_counter()
    if not (folder / "report.html").is_file():
        demo = [
            sys.executable,
            "-m",
            "monai_sr_bundle.cli",
            "demo",
            "--limit",
            "8",
            "--figures",
            "8",
            "--all",
            "-o",
            str(folder),
        ]
        subprocess.run(demo, check=True)
    page = (folder / "report.html").read_text()
    shown = set(re.findall(r'src="([^"]+)"', page))
    size = (folder / "report.html").stat().st_size + sum((folder / s).stat().st_size for s in shown)
    methods = len(re.findall(r"<tr><td>", page.split("<h2>Against")[0]))
    images = len(re.findall(r'<section class="compare">', page))
    loads = []
    with Browser(1920, 1080) as browser:
        for _ in range(3):
            loads.append(browser.open((folder / "report.html").as_uri()))
        missing = browser.evaluate("[...document.images].filter(i => !i.complete || !i.naturalWidth).length")
        widths = browser.evaluate("[...document.images].map(i => i.getBoundingClientRect().width)")
        errors = list(browser.errors)
        browser.evaluate("window.scrollTo(0, 0)")
        browser.screenshot(FIGURE)
    measured = {"methods": methods, "figure_images": images, "size_mb": size / 2**20, "load_s": loads}
    measured |= {"console_errors": errors, "images_missing": missing, "narrowest_image_px": min(widths)}
    data = "report.html of monai-sr demo --limit 8 --figures 8 --all, in headless Chromium at 1920 x 1080"
    harness.record(args, data, [], {"main": {folder.name: measured}}, (time.perf_counter() - begun) / 60)
    table = "\n".join(
        [
            "| report | methods | figure images | size (MB) | load in Chromium (s, median of 3) | console errors "
            "| images missing |",
            "|---|---|---|---|---|---|---|",
            f"| {folder.name} | {methods} | {images} | {size / 2**20:.1f} | {statistics.median(loads):.2f} | "
            f"{len(errors)} | {missing} |",
        ]
    )
    block = (
        f"{MARKERS[0]}\n## The HTML report (issue 41)\n\nProduced by `.venv/bin/{args.command}` "
        f"({time.strftime('%Y-%m-%d')}): `report.html` of `monai-sr demo --limit 8 --figures 8` (every shipped "
        f"method), its size with every file it shows, loaded by headless Chromium at 1920 x 1080 with every image "
        f"(bars: under 25 MB, under 3 s, no console error, no missing image). The narrowest image on the page is "
        f"{min(widths):.0f} px wide at 100 %. Screenshot: [figures/report.png](figures/report.png).\n\n{table}\n"
        f"{MARKERS[1]}"
    )
    write_block(DOC, MARKERS, block)
    print(table, errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
