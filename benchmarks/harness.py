"""The one harness of the benchmarks: where the repository and the data are, the options every benchmark
takes, timing, the pages it writes, and the results file (``docs/results/<benchmark>.json``: what ran, on
what data, with which weights, by which command, its tables) that its Markdown tables are rendered from and
the model card reads. A benchmark is a module of this package: ``python -m benchmarks.<name>``, run from the
repository root; it keeps only what it measures."""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from monai_sr_bundle import methods, results
from monai_sr_bundle.data.paths import REPO_ROOT
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.weights import weights_record

REPO = REPO_ROOT
DOCS = REPO / "docs"
REPEATS = 5


def parser(script: str, doc: str, work: bool = True, methods: bool = False) -> argparse.ArgumentParser:
    """The command line of the benchmark in file ``script``: its docstring's first paragraph as description,
    ``--data`` (the data root); with ``work``, ``--work`` (its scratch folder, ``out/benchmark_<name>``); with
    ``methods``, ``--methods`` (a comma-separated choice, None for all)."""
    name = Path(script).stem
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="the data root (default: $MONAI_SR_DATA or ../shared/data)")
    if work:
        parser.add_argument("--work", default=str(REPO / "out" / f"benchmark_{name}"), help="scratch folder")
    if methods:
        parser.add_argument("--methods", default=None, help="comma-separated methods (default: all with weights)")
    parser.set_defaults(benchmark=name)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and point the package at ``--data``; ``args.command`` is the command as the docs and the
    results file write it."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.command = " ".join([f"python -m benchmarks.{args.benchmark}", *map(shlex.quote, argv)])
    if args.data:
        os.environ["MONAI_SR_DATA"] = str(Path(args.data).resolve())
    return args


def main(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: list[str] | None = None
) -> int:
    """:func:`parse` and ``run``; bad input is one sentence and exit status 2."""
    try:
        return run(parse(parser, argv))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def median_seconds(fn, x, repeats: int = REPEATS, warm_up: bool = True) -> float:
    """Median wall time of ``fn(x)`` over ``repeats`` runs, after one warm-up run unless ``warm_up`` is off
    (a diffusion sample takes seconds: its first run's overhead is lost in the median of a few)."""
    import torch

    with torch.inference_mode():
        if warm_up:
            fn(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_process(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one command; its stderr on failure. The peak is the process's own
    high-water mark (``VmHWM``, sampled every 50 ms): wait4's ``ru_maxrss`` also counts the parent's resident
    memory at the fork (Linux keeps the old address space's peak at exec), so a benchmark that holds models
    read 11.8 GB for a 2.7 GB process."""
    import subprocess

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kb = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                peak_kb = max([peak_kb] + [int(line.split()[1]) for line in f if line.startswith("VmHWM:")])
        except OSError:  # it ended between poll and open
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return wall, peak_kb / 1024**2


def weights(used: Iterable[methods.Method]) -> dict[str, str]:
    """The weights file (relative to the repository) -> its sha256, of each method that loads one."""
    from monai_sr_bundle.hashing import sha256

    found = {}
    for method in used:
        if method.trainable and method.weights_available:
            path = Path(method.weights_path)
            found[path.relative_to(REPO).as_posix()] = weights_record(path).get("sha256") or sha256(path)
    return found


def record(
    args: argparse.Namespace,
    data: str,
    used: Iterable[methods.Method],
    tables: Mapping[str, Mapping],
    minutes: float,
    **facts,
) -> Path:
    """Write the benchmark's results file: its command, ``data`` (what it ran on, in words), the ``used``
    methods' weights, its ``tables`` (:mod:`monai_sr_bundle.results`), its minutes and any other ``facts``."""
    content = {"benchmark": args.benchmark, "command": args.command, "data": data, "weights": weights(used)}
    content |= {"minutes": round(minutes, 1), **facts, "tables": tables}
    return results.write(content, results.path(args.benchmark))


def run_parts(args: argparse.Namespace, parts: Mapping[str, Callable[[], dict]], data: str, used) -> dict:
    """For a benchmark of parts (each minutes to hours): run ``args.part`` (a part's name, ``all``, or ``doc``
    for none) and keep each part's result in the results file as soon as it is measured, under ``parts`` with
    the command that measured it and its minutes; the parts measured by earlier runs stay. Returns them all."""
    path = results.path(args.benchmark)
    record = {"benchmark": args.benchmark, "parts": {}} | (results.read(path) if path.is_file() else {})
    for name in parts if args.part == "all" else [] if args.part == "doc" else [args.part]:
        start = time.perf_counter()
        found = parts[name]()
        record |= {"data": data, "weights": weights(used)}
        record["parts"][name] = {"command": args.command, "minutes": round((time.perf_counter() - start) / 60, 1)}
        record["parts"][name]["result"] = found
        results.write(record, path)
    return record["parts"]


def render_parts(parts: Mapping[str, dict], sections: Mapping[str, tuple]) -> tuple[list[str], list[str]]:
    """The page's sections of a benchmark of parts (title, the command that measured the part, its text;
    "Not measured yet." for a part without a result), from ``sections``: part -> (title, render), where
    ``render(result)`` gives the text and the bars it judges."""
    out, bars = [], []
    for name, (title, render) in sections.items():
        out += [f"## {title}", ""]
        if name not in parts:
            out += ["Not measured yet.", ""]
            continue
        text, found = render(parts[name]["result"])
        out += [f"    .venv/bin/{parts[name]['command']}", "", *text, ""]
        bars += found
    return out, bars


def docs_figure(source: Path, target: Path, colours: int = 128) -> None:
    """Store a benchmark's figure in docs/ with a palette of ``colours``: a comparison page of grey panels loses
    nothing a reader sees, and the tracked tree keeps room for a GPU call's pack (tests/test_gpu_train.py)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.convert("RGB").quantize(colours).save(target, optimize=True)


def write_block(path: Path, markers: tuple[str, str], block: str) -> None:
    """Put ``block`` (which starts and ends with ``markers``) in the page at ``path``: in place of the one
    there, or at its end; :func:`publish` keeps such blocks when it rewrites a page."""
    doc = path.read_text()
    if markers[0] in doc:
        doc = doc[: doc.index(markers[0])] + block + doc[doc.index(markers[1]) + len(markers[1]) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def publish(path: Path, doc: str, lines: list[str], bars: list[str], issue: int) -> None:
    """Write a benchmark page (``doc`` followed by the issue's bars, then the blocks other benchmarks keep
    there, e.g. benchmarks/full_size.py's) and print its table and bars."""
    old = path.read_text() if path.exists() else ""
    kept = old[old.index("<!-- ") :] if "<!-- " in old else ""
    path.write_text(f"{doc}\nBars of issue {issue}:\n" + "\n".join(bars) + "\n" + (f"\n{kept}" if kept else ""))
    print("\n".join(lines + [""] + bars))
