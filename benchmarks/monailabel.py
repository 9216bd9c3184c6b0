"""MONAI Label app benchmark: SR round trip of a 512x512 radiograph through the real server vs the same
inference in-process, and 8 concurrent infer requests. Writes docs/monailabel_benchmark.md.

Run: .venv/bin/python benchmarks/monailabel.py [--method NAME]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from label_server import label_server  # noqa: E402
from speed import REPEATS, median_seconds, publish  # noqa: E402

from monai_sr_bundle import methods  # noqa: E402
from monai_sr_bundle.data.datalist import nih_datalist  # noqa: E402
from monai_sr_bundle.inference import run_inference  # noqa: E402

CONCURRENT = 8


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default=methods.default_name())
    args = parser.parse_args()
    image = Path(nih_datalist("test", limit=1)[0]["label"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        studies = tmp / "studies"
        studies.mkdir()
        shutil.copy(image, studies)
        method = methods.get(args.method, 4)
        network, inferer = method.load(), method.inferer()
        local = median_seconds(
            lambda _: run_inference(str(studies / image.name), network, inferer, tmp / "local", progress=False), None
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
    errors = sum(r.status_code != 200 for r in results)
    different = sum(r.status_code == 200 and r.content != expected for r in results)
    overhead = served - local
    lines = [
        "| what | seconds |",
        "|---|---|",
        f"| in-process `run_inference` (read, SR, write PNG) | {local:.2f} |",
        f"| through the server (upload-free infer by image id, PNG download) | {served:.2f} |",
        f"| server overhead | {overhead:+.2f} |",
        f"| {CONCURRENT} concurrent requests, wall time | {wall:.2f} |",
    ]
    bars = [
        f"- round trip at most 1 s slower than in-process: {overhead:+.2f} s -> "
        f"{'met' if overhead <= 1 else 'NOT met'}",
        f"- {CONCURRENT} concurrent requests: {errors} errors, {different} results differing from the sequential one "
        f"-> {'met' if errors == 0 and different == 0 else 'NOT met'}",
    ]
    doc = f"""# MONAI Label app: server round trip

Machine: {os.cpu_count()} CPU cores. Produced by (from the repository root):

    .venv/bin/python benchmarks/monailabel.py --method {args.method}

Input: `{image.name}` (512x512 NIH test radiograph) stored in the studies folder; x4 with `{args.method}`
(2048x2048 PNG out). Median of {REPEATS} runs after a warm-up. The server is the real MONAI Label server on
127.0.0.1 running `monailabel_app` (see docs/monailabel.md).

{chr(10).join(lines)}
"""
    publish(REPO / "docs" / "monailabel_benchmark.md", doc, lines, bars, issue=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
