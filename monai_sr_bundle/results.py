"""Benchmark results as data: one JSON file per benchmark (what ran, on what data, with which weights, by which
command, and its tables of scores), and the one Markdown rendering of such a table. The benchmarks write these
files, the docs tables are rendered from them, and the model card reads its scores from them, never from
Markdown.

A table is ``{row: {metric: cell}}``: a row is a method (or an interpolation), a metric a key of
:data:`~monai_sr_bundle.metrics.catalogue.CATALOGUE`, a cell ``[mean, sd]`` or ``[mean, low, high]`` (a 68%
interval of the mean). JSON has no NaN: a missing value is ``null``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai_sr_bundle.data.paths import REPO_ROOT
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.jsonfile import read_json_object
from monai_sr_bundle.metrics.catalogue import CATALOGUE

#: where the repository keeps each benchmark's results, ``<benchmark>.json``, beside the docs they render into
RESULTS_DIR = REPO_ROOT / "docs" / "results"


def path(benchmark: str) -> Path:
    return RESULTS_DIR / f"{benchmark}.json"


def _to_json(value):
    """NaN and infinities as ``null`` (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def write(record: Mapping, target: str | os.PathLike) -> Path:
    """Write a results ``record`` (``benchmark``, ``command``, ``data``, ``weights``, ``tables``, ...) as JSON,
    through a temporary file so that a reader never sees half of it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps(_to_json(record), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(target)
    return target


def read(source: str | os.PathLike) -> dict:
    if not Path(source).is_file():
        raise InputError(f"{source}: results file not found; run the benchmark that writes it.")
    return read_json_object(Path(source), f"the results file {source}")


def means(record: Mapping, row: str, table: str = "main") -> dict[str, float]:
    """The means of ``row`` in ``record``'s ``table``: metric -> value, in the catalogue's order."""
    rows = record.get("tables", {}).get(table, {})
    if row not in rows:
        raise InputError(f"{record.get('benchmark', 'results')}: no row for {row!r} in its {table!r} table.")
    cells = rows[row]
    return {m: math.nan if cells[m][0] is None else float(cells[m][0]) for m in CATALOGUE if m in cells}


def _cell(metric: str, values: Sequence[float | None]) -> str:
    info = CATALOGUE[metric]
    mean, *spread = (math.nan if v is None else float(v) for v in values)
    if len(spread) == 2 and not math.isnan(mean):
        return f"{mean:.{info.digits}f} [{spread[0]:.{info.digits}f}, {spread[1]:.{info.digits}f}]"
    return info.value(mean, *spread)


def format_table(
    table: Mapping[str, Mapping[str, Sequence[float | None]]], images: Mapping[str, int] | None = None
) -> str:
    """The Markdown table of every docs page and summary: the row's name first, then one column per metric in
    the catalogue's order, headed by its label, unit and direction; cells mean ± sd, or mean [low, high] under
    a heading that says "mean [68% CI]"; "n/a" where a metric has no value, the mean alone where there is one
    value; with ``images`` (row -> images scored) a column that says what each row was computed on."""
    metrics = [m for m in CATALOGUE if any(m in s for s in table.values())]
    interval = {m: all(len(s[m]) == 3 for s in table.values() if m in s) for m in metrics}
    labels = (["images"] if images is not None else []) + [
        CATALOGUE[m].heading + (" mean [68% CI]" if interval[m] else "") for m in metrics
    ]
    lines = ["| method | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, stats in table.items():
        cells = [str(images.get(name, 0))] if images is not None else []
        cells += [_cell(m, stats.get(m, (math.nan, math.nan))) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
