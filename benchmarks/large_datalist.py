"""Training over a datalist of public-set size: the first 500 iterations of srresnet over 20,000 entries (the
577 NIH training images repeated, as a large set's would be listed), with the train config's default cache
(``cache_images``: the first 1000 decoded once, the rest read when drawn) and with the whole set cached as
the config did before (``--cache_images 20000``). Reports, per setting, the seconds from launch to the 20th
iteration's log line, the wall time of 500 iterations and the process's peak RSS; the whole-set cache is
stopped once it holds more than the 4 GB bar. Writes the large-datalist block of docs/benchmarks.md.

Run: .venv/bin/python -m benchmarks.large_datalist
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks import harness
from benchmarks.harness import REPO, write_block
from monai_sr_bundle.data.datalist import nih_datalist

BUNDLE = REPO / "monai_sr_bundle"
DOC = REPO / "docs" / "benchmarks.md"
MARKERS = ("<!-- large-datalist: start -->", "<!-- large-datalist: end -->")
ENTRIES, ITERATIONS, RSS_BAR_GB, START_BAR_S = 20_000, 500, 4.0, 60.0


def run(datalist: Path, work: Path, cache_images: int) -> dict:
    """Train until ``ITERATIONS`` iterations are done or RSS passes the bar: start and wall seconds, peak RSS."""
    files = "['configs/inference.json','configs/train.json','configs/methods/srresnet.json']"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--method", "srresnet"]
    command += ["--datalist_file", str(datalist), "--cache_images", str(cache_images), "--max_epochs", "1"]
    command += ["--train#trainer#epoch_length", str(ITERATIONS), "--validate_in_training", "false"]
    command += ["--progress_bar", "false", "--run_dir", str(work / "run"), "--ckpt_path", str(work / "w.pt")]
    log = work / f"log_{cache_images}.txt"
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=BUNDLE, stdout=out, stderr=subprocess.STDOUT)
    process, peak, first, stopped = psutil.Process(proc.pid), 0, None, False
    while proc.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if first is None and f"Iter: 20/{ITERATIONS}" in log.read_text():
            first = time.perf_counter() - started
        if peak > RSS_BAR_GB * 1024**3 and first is None:
            proc.kill()
            stopped = True
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if proc.wait() != 0 and not stopped:
        raise SystemExit(f"training failed:\n{log.read_text()[-3000:]}")
    return {"start": first, "wall": None if stopped else wall, "rss": peak / 1024**3, "stopped_after": wall}


def main(argv: list[str] | None = None) -> int:
    args = harness.parse(harness.parser(__file__, __doc__, work=False), argv)
    images = [item["label"] for item in nih_datalist("train")]
    rows, begun = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        entries = [{"label": images[i % len(images)]} for i in range(ENTRIES)]
        datalist = work / "datalist.json"
        datalist.write_text(json.dumps({"training": entries, "validation": entries[:1]}))
        for cache in (1000, ENTRIES):
            rows[cache] = run(datalist, work, cache)
            print(cache, rows[cache], flush=True)
    data = f"a {ENTRIES}-entry datalist of the {len(images)} NIH training images (512 px), repeated"
    measured = {f"cache_images {cache}": r for cache, r in rows.items()}
    harness.record(args, data, [], {"main": measured}, (time.perf_counter() - begun) / 60, iterations=ITERATIONS)
    lines = [
        "| cache_images | start: launch to iteration 20 (s) | 500 iterations (s) | peak RSS (GB) |",
        "|---|---|---|---|",
    ]
    for cache, r in rows.items():
        stopped = f"not reached (stopped after {r['stopped_after']:.0f} s)"
        start = f"{r['start']:.0f}" if r["start"] is not None else stopped
        wall = f"{r['wall']:.0f}" if r["wall"] is not None else f"stopped above {RSS_BAR_GB:g} GB"
        lines.append(f"| {cache} | {start} | {wall} | {r['rss']:.2f} |")
    default = rows[1000]
    met = default["start"] is not None and default["start"] <= START_BAR_S and default["rss"] < RSS_BAR_GB
    bar = (
        f"- {ENTRIES} entries, default cache: iteration 20 after {default['start']:.0f} s (bar: within "
        f"{START_BAR_S:.0f} s), peak RSS {default['rss']:.2f} GB (bar: < {RSS_BAR_GB:g} GB) -> "
        + ("met" if met else "NOT met")
    )
    block = (
        f"{MARKERS[0]}\n## Training over a large datalist (issue 40)\n\nProduced by "
        f"`.venv/bin/{args.command}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU "
        f"cores): srresnet's train config over a {ENTRIES}-entry datalist (the 577 NIH training images at 512 px, "
        f"repeated), {ITERATIONS} iterations of batch 4 x 4 patches, no validation, `num_workers` 0. The train "
        "config decodes the first `cache_images` items once (`CacheDataset`'s `cache_num`) and reads the others "
        "when drawn: a set of 100k images is never held decoded in memory, and one that fits stays cached.\n\n"
        + "\n".join(lines)
        + f"\n\n{bar}\n{MARKERS[1]}"
    )
    write_block(DOC, MARKERS, block)
    print("\n".join(lines) + "\n\n" + bar)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
