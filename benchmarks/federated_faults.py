"""What a federated job does under each fault a hospital deployment meets, on NVFlare's POC mode (the
server and every site as their own processes on this machine, kits from ``federated.deploy``, jobs
submitted through the admin API). SRCNN x4, 4 training images per site, 2 rounds, ``min_clients`` 1.

Each row: the fault, the job's final status, what ``fl_report.json`` lists as failed, whether a model was
published, and whether that is what is intended. Writes the table into docs/federated.md (between its
``faults`` markers) and prints it.
Run: .venv/bin/python benchmarks/federated_faults.py   (about 20 min on a 2-core CPU: NVFlare declares a
vanished site dead only after its 600 s heartbeat timeout)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from speed import write_block

from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated.controller import REPORT_NAME
from monai_sr_bundle.federated.job import export_job, load_job_config
from monai_sr_bundle.federated.poc import LocalPoc

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "federated.md"
MARKERS = ("<!-- faults: start -->", "<!-- faults: end -->")
WAIT_AFTER_MIN_S = 60


def site(folder: Path, name: str, training: list[dict], start: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    validation = [{"label": d["label"]} for d in nih_datalist("val")[start : start + 1]]
    (folder / "list.json").write_text(json.dumps({"training": training, "validation": validation}))
    (folder / "site.json").write_text(json.dumps({"datalist": "list.json"}))
    return str(folder / "site.json")


def kill_when_training(poc: LocalPoc, name: str, whole_site: bool, done: list) -> None:
    """SIGKILL ``name``'s worker (or its whole client, every process of it) once its worker has started."""
    deadline = time.monotonic() + 600
    while not done and time.monotonic() < deadline:
        for pid_file in (poc.kits / name).glob(f"monai_sr_runs/*/{name}/worker.pid"):
            time.sleep(2)  # into the round's work
            if whole_site:
                poc.stop(name)
            else:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            done.append(name)
            return
        time.sleep(0.2)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="monai_sr_faults_"))
    train = [{"label": d["label"]} for d in nih_datalist("train")]
    corrupt = work / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 64)
    sites = {
        "site-a": site(work / "site-a", "site-a", train[0:4], 0),
        "site-b": site(work / "site-b", "site-b", train[100:104], 10),
        "site-c": site(work / "site-c", "site-c", [{"label": str(corrupt)}], 20),
        "site-d": site(work / "site-d", "site-d", [{"label": str(corrupt)}], 30),
        "site-v": site(work / "site-v", "site-v", train[200:204], 40),
        "site-n": None,  # never started
    }

    def job_config(name: str, job_sites: list[str], **extra) -> dict:
        config = {"name": name, "method": "srcnn", "num_rounds": 2, "min_clients": 1}
        config |= {"wait_after_min_s": WAIT_AFTER_MIN_S, "sites": dict.fromkeys(job_sites), **extra}
        path = work / f"{name}.json"
        path.write_text(json.dumps(config))
        return load_job_config(path)

    rows = []

    def refused(fault: str, intended: str, **extra) -> None:
        try:
            export_job(job_config("refused", ["site-a"], **extra), work / "jobs")
            rows.append((fault, "exported (not refused)", "-", "-", "no"))
        except InputError as e:
            message = str(e).split(": ", 1)[1]
            rows.append((fault, f"refused at export: {message}", "-", "no job", "yes" if intended in message else "no"))

    wrong = work / "vdsr_weights.pt"
    torch.save(methods.get("vdsr").network().state_dict(), wrong)
    refused("initial model of the wrong shape", "do not fit", initial_weights=str(wrong))
    refused('bad job key (`intensity: "foo"`)', "intensity must be", intensity="foo")
    refused('bad job key (`modality: "mri"`)', "unknown modality", modality="mri")

    poc_config = job_config("poc", list(sites)) | {"sites": sites}
    with LocalPoc(poc_config, work / "poc") as poc:
        for name in ["server", *(s for s, c in sites.items() if c)]:
            poc.start(name)
        poc.connect([s for s, c in sites.items() if c], timeout=300)

        def run(fault, job_sites, expect_model, expect_failed, killer=None, **extra):
            config = job_config(fault.split(" ")[0].lower().strip("`"), job_sites, **extra)
            job = export_job(config, work / "jobs")
            thread = threading.Thread(target=killer, daemon=True) if killer else None
            if thread:
                thread.start()
            started = time.monotonic()
            try:
                status, out = poc.run_job(job, timeout=1500)
            except InputError as e:
                rows.append((fault, str(e), "-", "-", "no"))
                return
            minutes = (time.monotonic() - started) / 60
            app = out / "workspace" / "app_server"
            report = json.loads((app / REPORT_NAME).read_text()) if (app / REPORT_NAME).is_file() else {"rounds": []}
            failed = sorted(
                {f"{s} (round {r['round']}: {why})" for r in report["rounds"] for s, why in r["failed"].items()}
            )
            model = (app / "models" / "srcnn_cxr_x4.pt").is_file()
            failed_sites = {s for r in report["rounds"] for s in r["failed"]}
            ok = model == expect_model and failed_sites == set(expect_failed)
            rows.append((fault, f"{status} ({minutes:.1f} min)", "; ".join(failed) or "none", "yes" if model else "no",
                         "yes" if ok else "no"))  # fmt: skip

        killed = []
        run("crashed worker (site-b's, SIGKILL in round 0)", ["site-a", "site-b"], True, ["site-b"],
            killer=lambda: kill_when_training(poc, "site-b", False, killed))  # fmt: skip
        run("corrupt image (site-c)", ["site-a", "site-c"], True, ["site-c"])
        run("site never connects (site-n)", ["site-a", "site-n"], True, ["site-n"])
        run("every site failing (site-c, site-d: corrupt images)", ["site-c", "site-d"], False, ["site-c", "site-d"])
        gone = []
        run("vanished site (site-v's whole client SIGKILLed in round 0)", ["site-a", "site-v"], True, ["site-v"],
            killer=lambda: kill_when_training(poc, "site-v", True, gone))  # fmt: skip

    table = "| fault | job status | report: failed | model published | as intended |\n|---|---|---|---|---|\n"
    table += "\n".join("| " + " | ".join(row) + " |" for row in rows)
    command = ".venv/bin/python benchmarks/federated_faults.py"
    block = f"{MARKERS[0]}\nProduced by `{command}` ({time.strftime('%Y-%m-%d')}, 2-core CPU):\n\n{table}\n{MARKERS[1]}"
    write_block(DOC, MARKERS, block)
    print(table)
    return 0 if all(row[-1] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
