"""What a person looks at after an evaluation: per-image comparison figures that show where methods differ
(methods as columns; the whole image, a zoom on the region that matters and the error there, all in one
window) and ``report.html``, a self-contained page beside ``summary.md`` (no server, no network): the metrics
table, each method against the baseline (bicubic) with intervals, a before/after viewer of the zoomed regions,
the figures, the degradation, the weights and the command that made it; past ``FIGURES_PER_PAGE`` images the
viewers go on further pages (``report_2.html``, ...)."""

from __future__ import annotations

import functools
import html
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.metrics import DISPLAY_VMAX, bootstrap_interval
from monai_sr_bundle.metrics.catalogue import CATALOGUE

#: a panel's edge in screen pixels at 100 %, and the panels of one figure page: 7 x 256 = 1792 px, within a
#: 1920 px screen
PANEL, PER_PAGE = 256, 7
#: the strip above each column: its name and a note (a method's PSNR on the image)
TITLE = 44
#: the column of the LR input, enlarged without interpolation
LR_COLUMN = "LR (nearest)"
#: the zoomed region's edge as a share of the image's shorter side when no box chooses it
SPREAD_SHARE = 0.25


def window(hr: torch.Tensor) -> tuple[float, float]:
    """One display window for every panel of an image: the HR image's 0.5-99.5 percentiles, so a CT slice's
    air or a radiograph's collimation does not flatten the anatomy."""
    lo, hi = np.percentile(np.asarray(hr, dtype=np.float32), [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else (0.0, 1.0)


def spread_region(images: Sequence[torch.Tensor], hr: torch.Tensor, share: float = SPREAD_SHARE) -> list[float]:
    """The square (x0, y0, x1, y1) where the SR ``images`` disagree most (their per-pixel spread; the error
    against ``hr`` for a single one), averaged over a window of ``share`` of the shorter side."""
    stack = torch.stack([torch.as_tensor(i, dtype=torch.float32)[0] for i in images])
    spread = stack.std(dim=0) if len(images) > 1 else (stack[0] - torch.as_tensor(hr, dtype=torch.float32)[0]).abs()
    side = max(8, int(min(spread.shape) * share))
    stride = max(1, side // 4)
    mean = torch.nn.functional.avg_pool2d(spread[None, None], side, stride=stride)[0, 0]
    x, y = divmod(int(mean.argmax()), mean.shape[1])
    return [float(x * stride), float(y * stride), float(x * stride + side), float(y * stride + side)]


def square(box: Sequence[float], shape: Sequence[int], least: int = 32) -> tuple[int, int, int, int]:
    """``box`` (x0, y0, x1, y1) made a square of at least ``least`` pixels inside an image of ``shape`` (X, Y)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    side = min(max(x1 - x0, y1 - y0, least), *shape)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    x0 = min(max(cx - side // 2, 0), shape[0] - side)
    y0 = min(max(cy - side // 2, 0), shape[1] - side)
    return x0, y0, x0 + side, y0 + side


def _gray(img: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    """(1, X, Y) -> (rows, cols) uint8 in the window (lo, hi)."""
    arr = (np.asarray(img[0], dtype=np.float32).T - lo) / (hi - lo)
    return (arr.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def _heat(err: np.ndarray) -> np.ndarray:
    """An absolute error (rows, cols) on 0 .. DISPLAY_VMAX['abs'] -> RGB uint8: black, red, yellow, white."""
    t = (err / DISPLAY_VMAX["abs"]).clip(0, 1)
    rgb = np.stack([(3 * t).clip(0, 1), (3 * t - 1).clip(0, 1), (3 * t - 2).clip(0, 1)], axis=-1)
    return (rgb * 255 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def comparison_pages(
    columns: Mapping[str, torch.Tensor],
    hr: torch.Tensor,
    region: Sequence[float],
    path: str | os.PathLike,
    notes: Mapping[str, str] | None = None,
    maps: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> list[Path]:
    """Figure pages of one image: a column per entry of ``columns`` ((1, X, Y) at the HR size, in [0, 1]) and
    the HR image last, each ``PANEL`` px wide; rows: the whole image with ``region`` outlined, ``region``
    enlarged, and the absolute error there (0 black to ``DISPLAY_VMAX['abs']`` white, the same scale for
    every method). Every panel is shown in the HR image's :func:`window`. ``notes`` add a second title line
    (a method's PSNR). ``maps`` (a stochastic method's ``std`` and ``lr_consistency`` from several samples, at
    the HR size) add a row each, on the error's scale, black for the columns without them. At most
    ``PER_PAGE`` columns a page, the HR image on each (:func:`figure_pages`). Returns the pages written
    (atomically, as this tool's: :func:`~monai_sr_bundle.data.writers.write_figure`)."""
    from PIL import Image, ImageDraw

    from monai_sr_bundle.data.writers import write_figure

    lo, hi = window(hr)
    shape = tuple(hr.shape[1:])
    x0, y0, x1, y1 = square(region, shape)
    fit = PANEL / max(shape)
    whole_size = (max(1, round(shape[0] * fit)), max(1, round(shape[1] * fit)))
    names = [n for n in columns if n != "HR"]
    per_page = PER_PAGE - 1
    pages = [names[i : i + per_page] for i in range(0, max(len(names), 1), per_page)] or [[]]
    targets = figure_pages(path, len(names))
    truth = np.asarray(hr[0], dtype=np.float32).T[y0:y1, x0:x1]
    kinds = list(dict.fromkeys(k for m in (maps or {}).values() for k in m))
    for page, target in zip(pages, targets):
        shown = {n: columns[n] for n in page} | {"HR": hr}
        canvas = Image.new("RGB", (PANEL * len(shown), TITLE + PANEL * (3 + len(kinds))), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        for i, (name, img) in enumerate(shown.items()):
            left = i * PANEL
            draw.text((left + 6, 4), name, fill=(255, 255, 255), font=_font(16))
            note = (notes or {}).get(name) or ("error scale 0-" + f"{DISPLAY_VMAX['abs']:g}" if name == "HR" else "")
            draw.text((left + 6, 24), note, fill=(200, 200, 200), font=_font(13))
            gray = Image.fromarray(_gray(img, lo, hi))
            canvas.paste(gray.resize(whole_size, Image.LANCZOS).convert("RGB"), (left, TITLE))
            outline = (
                left + round(x0 * fit),
                TITLE + round(y0 * fit),
                left + round(x1 * fit) - 1,
                TITLE + round(y1 * fit) - 1,
            )
            draw.rectangle(outline, outline=(255, 200, 0), width=2)
            crop = gray.crop((x0, y0, x1, y1))
            canvas.paste(crop.resize((PANEL, PANEL), Image.NEAREST).convert("RGB"), (left, TITLE + PANEL))
            err = np.abs(np.asarray(img[0], dtype=np.float32).T[y0:y1, x0:x1] - truth)
            heat = Image.fromarray(_heat(err)).resize((PANEL, PANEL), Image.NEAREST)
            canvas.paste(heat, (left, TITLE + 2 * PANEL))
            for row, kind in enumerate(kinds, start=3):
                if kind in (maps or {}).get(name, {}):
                    spread = np.asarray(maps[name][kind][0], dtype=np.float32).T[y0:y1, x0:x1]
                    canvas.paste(
                        Image.fromarray(_heat(spread)).resize((PANEL, PANEL), Image.NEAREST),
                        (left, TITLE + row * PANEL),
                    )
                    draw.text(
                        (left + 6, TITLE + row * PANEL + 4),
                        kind.replace("_", "-"),
                        fill=(255, 255, 255),
                        font=_font(13),
                    )
        write_figure(canvas, target)
    return targets


def figure_pages(path: str | os.PathLike, columns: int) -> list[Path]:
    """The pages of :func:`comparison_pages` for ``columns`` columns besides the HR image: ``path``, then
    ``<stem>_2.png`` and on."""
    path = Path(path)
    count = math.ceil(max(columns, 1) / (PER_PAGE - 1))
    return [path if n == 1 else path.with_name(f"{path.stem}_{n}{path.suffix}") for n in range(1, count + 1)]


def crop_files(folder: str | os.PathLike, columns: int) -> list[Path]:
    """The files of :func:`zoom_crops` for ``columns`` columns besides the HR image (one per column, then the HR's)."""
    return [Path(folder) / f"{i}.png" for i in range(columns + 1)]


def zoom_crops(
    columns: Mapping[str, torch.Tensor], hr: torch.Tensor, region: Sequence[float], folder: str | os.PathLike
) -> dict[str, str]:
    """Each column's zoomed region at its own pixels, in the HR image's window, as ``folder/<i>.png`` for the
    report's before/after viewer (:func:`crop_files`, written as this tool's); returns column name -> file name."""
    from PIL import Image

    from monai_sr_bundle.data.writers import write_figure

    lo, hi = window(hr)
    x0, y0, x1, y1 = square(region, tuple(hr.shape[1:]))
    shown = {**columns, "HR": hr}
    names = {}
    for (name, img), target in zip(shown.items(), crop_files(folder, len(columns))):
        names[name] = write_figure(Image.fromarray(_gray(img, lo, hi)[y0:y1, x0:x1]), target).name
    return names


def invocation() -> str:
    """The command line this process was started with, as a user would type it again."""
    argv = list(sys.argv)
    head = Path(argv[0]) if argv else Path("python")
    if head.name == "__main__.py":  # python -m <package>
        parts = head.with_suffix("").parts
        package = (
            ".".join(parts[parts.index("site-packages") + 1 : -1]) if "site-packages" in parts else head.parent.name
        )
        return shlex.join(["python", "-m", package, *argv[1:]])
    return shlex.join([head.name, *argv[1:]])


def _against(rows: Sequence[Mapping], metric: str, baseline: str) -> dict[str, tuple[float, float, float]]:
    """Per method: the mean over images of (method - baseline) in ``metric`` and its 68 % bootstrap interval."""
    base = {r["image"]: r[metric] for r in rows if r["method"] == baseline and metric in r}
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        diffs = [r[metric] - base[r["image"]] for r in rows if r["method"] == method and r["image"] in base]
        diffs = [d for d in diffs if not math.isnan(d)]
        if method != baseline and diffs:
            out[method] = (float(np.mean(diffs)), *bootstrap_interval(diffs))
    return out


def _chart(label: str, values: dict[str, tuple[float, float, float]], baseline: str, better: str) -> str:
    """An inline SVG: a dot per method at its mean difference, a bar for its interval, zero marked."""
    if not values:
        return ""
    width, row, left, right = 720, 24, 170, 90
    span = max(1e-9, *(abs(v) for triple in values.values() for v in triple))
    x = lambda v: left + (width - left - right) * (v + span) / (2 * span)  # noqa: E731
    height = row * len(values) + 8
    parts = [
        f'<svg class="chart" width="{width}" height="{height + 24}" role="img" aria-label="{html.escape(label)}">',
        f'<line x1="{x(0):.1f}" y1="0" x2="{x(0):.1f}" y2="{height}" stroke="#888"/>',
    ]
    for i, (method, (mean, lo, hi)) in enumerate(values.items()):
        y = 16 + i * row
        parts.append(f'<text x="4" y="{y + 4}">{html.escape(method)}</text>')
        parts.append(f'<line x1="{x(lo):.1f}" y1="{y}" x2="{x(hi):.1f}" y2="{y}" stroke="#4a90d9" stroke-width="6"/>')
        parts.append(f'<circle cx="{x(mean):.1f}" cy="{y}" r="4" fill="#111"/>')
        parts.append(f'<text x="{width - 4}" y="{y + 4}" text-anchor="end">{mean:+.3f}</text>')
    parts.append(
        f'<text x="4" y="{height + 18}">{html.escape(label)} minus {html.escape(baseline)} ({better}); '
        "bar: 68 % bootstrap interval of the mean over images</text></svg>"
    )
    return "".join(parts)


#: image viewers on one report page: more go to ``report_2.html`` and on, linked from each page, so that a
#: large evaluation's report opens as fast as a small one's
FIGURES_PER_PAGE = 10

HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>monai-sr evaluation</title>
<style>
body { font: 14px sans-serif; margin: 16px; color: #111; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { cursor: pointer; background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
code { background: #f4f4f4; padding: 1px 4px; word-break: break-all; }
.viewer { position: relative; display: inline-block; line-height: 0; }
.viewer img { image-rendering: pixelated; width: calc(var(--zoom) * 256px); }
.viewer img.top { position: absolute; left: 0; top: 0; clip-path: inset(0 var(--split) 0 0); }
.figure { display: block; margin: 8px 0; }
.chart text { font: 12px sans-serif; }
</style></head><body>
"""
PAGE = """<h1>monai-sr evaluation</h1>
<p>{images} images, x{scale}; LR made by {degradation}. Command: <code>{command}</code>; {date}.</p>
<h2>Metrics (mean ± sd over images; click a column to sort)</h2>
{table}
{failures}
<h2>Against the baseline</h2>
{charts}
<h2>Weights</h2>
{weights}
<h2>Images</h2>
<p>Each viewer shows the zoomed region of one image, the method on the left of the split against the one on
the right; the figures below it show every method: the whole image, the region enlarged and its absolute error
(black 0 to white {vmax:g}), all in the HR image's window.</p>
{pages}{viewers}
"""
#: a further page of image viewers (``report_<n>.html``)
MORE = """<h1>monai-sr evaluation: images {first} to {last}</h1>
<p>The metrics, charts and weights are on <a href="report.html">report.html</a>.</p>
{pages}{viewers}
"""
SCRIPT = """<script>
document.querySelectorAll("#metrics th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = [...body.rows];
  const up = th.dataset.order !== "up"; th.dataset.order = up ? "up" : "down";
  const key = r => col ? parseFloat(r.cells[col].dataset.value) : r.cells[0].textContent;
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}));
document.querySelectorAll(".compare").forEach(c => {
  const view = c.querySelector(".viewer"), [left, right] = c.querySelectorAll("select");
  const [bottom, top] = view.querySelectorAll("img");
  const show = () => { top.src = left.value; bottom.src = right.value; };
  left.onchange = right.onchange = show;
  c.querySelector(".split").oninput = e => view.style.setProperty("--split", 100 - e.target.value + "%");
  c.querySelector(".zoom").oninput = e => view.style.setProperty("--zoom", e.target.value);
});
</script>
</body></html>
"""


def image_counts(rows: Sequence[Mapping], names: Sequence[str]) -> dict[str, int]:
    """How many images each of the methods ``names`` was scored on (its rows of ``metrics.csv``)."""
    return {name: sum(r["method"] == name for r in rows) for name in names}


def _cell(value: tuple[float, float], metric: str) -> str:
    """A metrics table cell as summary.md writes it, with its mean to sort by."""
    return f'<td data-value="{value[0]}">{CATALOGUE[metric].value(*value)}</td>'


def _baseline() -> str | None:
    """The method the others are charted against, or None where there is none (a zoo bundle's one method)."""
    try:
        return methods.baseline_name()
    except InputError:
        return None


def _viewer(stem: str, crops: Mapping[str, str], pages: Sequence[str]) -> str:
    names = list(crops)
    baseline = _baseline()
    best = next((n for n in names if n not in (LR_COLUMN, baseline, "HR")), names[0])
    base = baseline if baseline in crops else names[0]

    def select(chosen: str) -> str:
        options = "".join(
            f'<option value="{html.escape(crops[n])}"{" selected" if n == chosen else ""}>{html.escape(n)}</option>'
            for n in names
        )
        return f"<select>{options}</select>"

    figures = "".join(f'<img class="figure" src="{html.escape(p)}" alt="{html.escape(p)}">' for p in pages)
    return (
        f'<section class="compare"><h3>{html.escape(stem)}</h3>'
        f"left {select(best)} right {select(base)} "
        '<label>split <input class="split" type="range" min="0" max="100" value="50"></label> '
        '<label>zoom <input class="zoom" type="range" min="1" max="4" step="0.5" value="2"></label><br>'
        f'<div class="viewer" style="--zoom: 2; --split: 50%"><img src="{html.escape(crops[base])}" alt="right">'
        f'<img class="top" src="{html.escape(crops[best])}" alt="left"></div>{figures}</section>'
    )


def write_report(
    out: str | os.PathLike,
    rows: Sequence[Mapping],
    summary: Mapping[str, Mapping[str, tuple[float, float]]],
    figures: Mapping[str, tuple[Mapping[str, str], Sequence[str]]],
    scale: int,
    degradation: str,
    weights: Mapping[str, str | None],
    failures: Sequence[str] = (),
) -> Path:
    """``out/report.html`` from an evaluation's per-image ``rows``, its ``summary`` and ``figures`` (image stem ->
    (its zoom crops by column, its figure pages), paths relative to ``out``); ``weights``: method -> weights file
    (None for an interpolation). Written atomically, as this tool's; a page of a user's at one of its names
    (:func:`page_names`) is refused before any is written, and of an earlier, longer report's pages only
    ours are removed (a user's ``report_final.html`` stays)."""
    from monai_sr_bundle.data.writers import check_replaceable, write_text, written_by_monai_sr
    from monai_sr_bundle.hashing import sha256

    out = Path(out)
    metrics = [m for m in CATALOGUE if any(m in s for s in summary.values())]
    counts = image_counts(rows, list(summary))
    head = "<tr><th>method</th><th>images</th>" + "".join(
        f"<th>{html.escape(CATALOGUE[m].heading)}</th>" for m in metrics
    )
    body = "".join(
        f'<tr><td>{html.escape(name)}</td><td data-value="{counts[name]}">{counts[name]}</td>'
        + "".join(_cell(tuple(stats.get(m, (math.nan, math.nan))), m) for m in metrics)
        + "</tr>"
        for name, stats in summary.items()
    )
    table = f'<table id="metrics"><thead>{head}</tr></thead><tbody>{body}</tbody></table>'
    baseline = _baseline()
    charts = f"<p>(The baseline, {baseline or 'an interpolation'}, was not among the methods.)</p>"
    if baseline is not None and any(r["method"] == baseline for r in rows):
        charts = _chart("PSNR (dB)", _against(rows, "psnr", baseline), baseline, "higher is better")
        if any("lpips" in r for r in rows):
            charts += _chart("LPIPS", _against(rows, "lpips", baseline), baseline, "lower is better")
    weight_rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{html.escape(Path(w).name) if w else 'none (interpolation)'}</td>"
        f"<td><code>{sha256(w) if w and Path(w).is_file() else '-'}</code></td></tr>"
        for m, w in weights.items()
    )
    failed = "".join(f"<li>{html.escape(f)}</li>" for f in failures)
    stems = list(figures)
    chunks = [stems[i : i + FIGURES_PER_PAGE] for i in range(0, len(stems), FIGURES_PER_PAGE)] or [[]]
    names = page_names(len(stems))
    check_replaceable(out / name for name in names)

    def viewers(chunk: list[str]) -> str:
        return "".join(_viewer(stem, *figures[stem]) for stem in chunk)

    def pages(current: str) -> str:
        if len(names) == 1:
            return ""
        links = (
            f"<b>{i}</b>" if name == current else f'<a href="{name}">{i}</a>' for i, name in enumerate(names, start=1)
        )
        return f'<p class="pages">Image pages: {" ".join(links)}</p>\n'

    page = PAGE.format(
        images=len({r["image"] for r in rows}),
        scale=scale,
        degradation=html.escape(degradation),
        command=html.escape(invocation()),
        date=time.strftime("%Y-%m-%d %H:%M"),
        table=table,
        failures=f"<p>Not evaluated:</p><ul>{failed}</ul>" if failed else "",
        charts=charts,
        weights=f"<table><tr><th>method</th><th>weights</th><th>sha256</th></tr>{weight_rows}</table>",
        vmax=DISPLAY_VMAX["abs"],
        pages=pages(names[0]),
        viewers=viewers(chunks[0]) or "<p>No figures (figures 0).</p>",
    )
    texts = [page] + [
        MORE.format(
            first=1 + i * FIGURES_PER_PAGE,
            last=i * FIGURES_PER_PAGE + len(chunk),
            pages=pages(name),
            viewers=viewers(chunk),
        )
        for i, (name, chunk) in enumerate(zip(names, chunks))
        if i
    ]
    for old in out.glob("report_*.html"):  # a previous, longer report's pages
        if re.fullmatch(r"report_\d+\.html", old.name) and old.name not in names and written_by_monai_sr(old):
            old.unlink()
    for name, text in reversed(list(zip(names, texts))):  # report.html last: its links exist once it does
        write_text(out / name, HEAD + text + SCRIPT)
    return out / "report.html"


def page_names(figures: int) -> list[str]:
    """The pages of a report with ``figures`` image viewers: ``report.html``, then ``report_2.html`` and on."""
    count = max(1, math.ceil(figures / FIGURES_PER_PAGE))
    return ["report.html", *(f"report_{n}.html" for n in range(2, count + 1))]
