"""MONAI Label app benchmark: SR round trip of a 512x512 radiograph through the real server vs the same
inference in-process, 8 concurrent infer requests, and how fast ``/info/`` answers during a VDSR infer.
Writes docs/monailabel_benchmark.md.

Run: .venv/bin/python -m benchmarks.monailabel [--method NAME]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from benchmarks import harness
from benchmarks.harness import REPEATS, REPO, median_seconds, publish
from monai_sr_bundle import methods
from monai_sr_bundle.batch import run_inference
from monai_sr_bundle.data.datalist import nih_datalist
from tools.label_server import label_server

CONCURRENT = 8
INFO_PROBES = 20


def info_during_infer(url: str, image_id: str) -> tuple[list[float], float]:
    """Latencies of INFO_PROBES ``/info/`` requests sent while one VDSR infer of ``image_id`` runs (paced to
    spread over it, from a first infer's duration), and that infer's seconds."""

    def sr() -> float:
        start = time.perf_counter()
        r = requests.post(
            f"{url}/infer/super_resolution",
            params={"image": image_id},
            data={"params": '{"method": "vdsr"}'},
            timeout=600,
        )
        r.raise_for_status()
        return time.perf_counter() - start

    pace = sr() / (INFO_PROBES + 2)
    result: dict[str, float] = {}
    thread = threading.Thread(target=lambda: result.update(infer=sr()))
    thread.start()
    latencies = []
    for _ in range(INFO_PROBES):
        time.sleep(pace)
        start = time.perf_counter()
        requests.get(f"{url}/info/", timeout=60).raise_for_status()
        latencies.append(time.perf_counter() - start)
    busy = thread.is_alive()
    thread.join()
    if not busy:
        raise RuntimeError("the infer ended before the last /info/ probe; the probes did not all overlap it")
    return latencies, result["infer"]


def main() -> int:
    parser = harness.parser(__file__, __doc__, work=False)
    parser.add_argument("--method", default=methods.default_name())
    args = harness.parse(parser)
    image = Path(nih_datalist("test", limit=1)[0]["label"])
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        studies = tmp / "studies"
        studies.mkdir()
        shutil.copy(image, studies)
        predictor = methods.get(args.method, 4).predictor()
        local = median_seconds(
            lambda _: run_inference(str(studies / image.name), predictor, tmp / "local", progress=False), None
        )
        with label_server(tmp, studies, {"method": args.method, "model_dir": tmp / "model"}) as url:

            def call() -> requests.Response:
                r = requests.post(
                    f"{url}/infer/super_resolution", params={"image": image.stem, "output": "image"}, timeout=600
                )
                r.raise_for_status()
                return r

            served = median_seconds(lambda _: call(), None)
            expected = call().content
            start = time.perf_counter()
            with ThreadPoolExecutor(CONCURRENT) as pool:
                results = list(
                    pool.map(
                        lambda _: requests.post(
                            f"{url}/infer/super_resolution",
                            params={"image": image.stem, "output": "image"},
                            timeout=600,
                        ),
                        range(CONCURRENT),
                    )
                )
            wall = time.perf_counter() - start
            latencies, vdsr_seconds = info_during_infer(url, image.stem)
    errors = sum(r.status_code != 200 for r in results)
    different = sum(r.status_code == 200 and r.content != expected for r in results)
    overhead = served - local
    measured = {"local_s": local, "served_s": served, "concurrent_wall_s": wall, "concurrent_errors": errors}
    measured |= {"concurrent_differing": different, "vdsr_infer_s": vdsr_seconds, "info_latencies_s": latencies}
    data = f"{image.name} (512 px NIH test radiograph), x4"
    minutes = (time.perf_counter() - begun) / 60
    harness.record(args, data, [methods.get(args.method, 4)], {"main": {args.method: measured}}, minutes)
    lines = [
        "| what | seconds |",
        "|---|---|",
        f"| in-process `run_inference` (read, SR, write PNG) | {local:.2f} |",
        f"| through the server (upload-free infer by image id, PNG download) | {served:.2f} |",
        f"| server overhead | {overhead:+.2f} |",
        f"| {CONCURRENT} concurrent requests, wall time | {wall:.2f} |",
        f"| one `vdsr` infer, during which `/info/` was probed | {vdsr_seconds:.2f} |",
        f"| `/info/` during that infer, median of {INFO_PROBES} | {statistics.median(latencies):.3f} |",
        f"| `/info/` during that infer, slowest of {INFO_PROBES} | {max(latencies):.3f} |",
    ]
    bars = [
        f"- round trip at most 1 s slower than in-process: {overhead:+.2f} s -> "
        f"{'met' if overhead <= 1 else 'NOT met'}",
        f"- {CONCURRENT} concurrent requests: {errors} errors, {different} results differing from the sequential one "
        f"-> {'met' if errors == 0 and different == 0 else 'NOT met'}",
        f"- issue 11: {INFO_PROBES} `/info/` requests during one VDSR infer of a 512x512 radiograph all under 1 s: "
        f"slowest {max(latencies):.3f} s -> {'met' if max(latencies) < 1 else 'NOT met'}",
    ]
    doc = f"""# MONAI Label app: server round trip

Machine: {os.cpu_count()} CPU cores. Produced by (from the repository root):

    .venv/bin/{args.command}

Input: `{image.name}` (512x512 NIH test radiograph) stored in the studies folder; x4 with `{args.method}`
(2048x2048 PNG out). Median of {REPEATS} runs after a warm-up. The server is the real MONAI Label server on
127.0.0.1 running `monailabel_app` through its launcher `monailabel_app/serve.py` (see docs/monailabel.md).
The `/info/` probes are spread over a second `vdsr` infer of the same image, each timed alone.

{chr(10).join(lines)}
"""
    publish(REPO / "docs" / "monailabel_benchmark.md", doc, lines, bars, issue=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
