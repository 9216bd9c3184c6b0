"""What a federated job does under each fault a hospital deployment meets, on NVFlare's POC mode (the
server and every site as their own processes on this machine, kits from ``federated.deploy``, jobs
submitted through the admin API). SRCNN x4, 4 training images per site, 2 rounds, ``min_clients`` 1; also a
server restart in the middle of a job and a copied site kit.

Each row: the fault, the job's final status, what ``fl_report.json`` lists as failed, whether a model was
published, and whether that is what is intended (for a poisoned update also: the published model loads and is
finite, a site's weight is capped, the report is strict JSON; for runet, the published BatchNorm statistics
are round 0's). Writes the table into docs/federated.md (between its
``faults`` markers) and prints it.
Run: .venv/bin/python -m benchmarks.federated_faults   (about 20 min on a 2-core CPU: NVFlare declares a
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

from benchmarks import harness
from benchmarks.harness import REPO, write_block
from monai_sr_bundle import methods
from monai_sr_bundle.data.datalist import nih_datalist
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated.controller import REPORT_NAME
from monai_sr_bundle.federated.job import export_job, load_job_config
from monai_sr_bundle.federated.poc import LocalPoc
from tools.poc_faults import POISONS, copied_kit, finite_model, poison, server_restart, strict_json

DOC = REPO / "docs" / "federated.md"
MARKERS = ("<!-- faults: start -->", "<!-- faults: end -->")
WAIT_AFTER_MIN_S = 60


def shipped_statistics(app: Path) -> bool:
    """The published runet's BatchNorm running means are the shipped weights' (round 0's): no site sent its own."""
    runet = methods.get("runet")
    shipped = runet.network(runet.weights_path).state_dict()
    published = torch.load(app / "models" / runet.weights_name, weights_only=True)
    return all(torch.equal(v, shipped[k]) for k, v in published.items() if k.endswith("running_mean"))


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


def main(argv: list[str] | None = None) -> int:
    args = harness.parse(harness.parser(__file__, __doc__, work=False), argv)
    begun = time.perf_counter()
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
        "site-p": site(work / "site-p", "site-p", train[300:304], 50),  # the poisoned site
        "site-n": None,  # never started
    }

    def job_config(name: str, job_sites: list[str], **extra) -> dict:
        config = {"name": name, "method": "srcnn", "num_rounds": 2, "min_clients": 1, "round_timeout_s": 900}
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

        def run(fault, job_sites, expect_model, expect_failed, killer=None, prepare=None, check=None, **extra):
            """One job: ``prepare(job folder)`` after export, ``check(app folder, report)`` for what else the
            row must hold."""
            config = job_config(f"job{len(rows)}", job_sites, **extra)
            job = export_job(config, work / "jobs")
            if prepare:
                prepare(job)
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
            report = strict_json(app / REPORT_NAME) if (app / REPORT_NAME).is_file() else {"rounds": []}
            failed = sorted(
                {f"{s} (round {r['round']}: {why})" for r in report["rounds"] for s, why in r["failed"].items()}
            )
            model = any((app / "models").glob("*.pt")) if (app / "models").is_dir() else False
            failed_sites = {s for r in report["rounds"] for s in r["failed"]}
            ok = model == expect_model and failed_sites == set(expect_failed) and (check is None or check(app, report))
            rows.append((fault, f"{status} ({minutes:.1f} min)", "; ".join(failed) or "none", "yes" if model else "no",
                         "yes" if ok else "no"))  # fmt: skip

        killed = []
        run("crashed worker (site-b's, SIGKILL in round 0)", ["site-a", "site-b"], True, ["site-b"],
            killer=lambda: kill_when_training(poc, "site-b", False, killed))  # fmt: skip
        run("corrupt image (site-c)", ["site-a", "site-c"], True, ["site-c"])
        run("site never connects (site-n)", ["site-a", "site-n"], True, ["site-n"])
        run("every site failing (site-c, site-d: corrupt images)", ["site-c", "site-d"], False, ["site-c", "site-d"])
        for mode, what in POISONS.items():  # issue 39, rows 1, 2, 4 and 7: poisoned updates at the server
            claims = mode == "claims"
            run(f"poisoned update (site-p: {what})", ["site-a", "site-p"], True, [] if claims else ["site-p"],
                prepare=lambda job, mode=mode: poison(job, "site-p", mode), num_rounds=1,
                check=lambda app, report, claims=claims: finite_model(app) and (
                    not claims or report["rounds"][0]["sites"]["site-p"]["weight"] <= 4 * 4))  # fmt: skip
        run(
            "BatchNorm statistics (runet; they would reveal a site's mean intensity)",
            ["site-a", "site-b"],
            True,
            [],
            num_rounds=1,
            method="runet",
            initial_weights="shipped",
            check=lambda app, _: shipped_statistics(app),
        )
        restart_job = export_job(job_config("restart", ["site-a", "site-b"], num_rounds=3), work / "jobs")
        restarted = server_restart(poc, restart_job)
        kept = f"round {restarted['rounds']}" + (" (downloaded; job deleted)" if restarted["deleted"] else "")
        intended = restarted["status"] == "FINISHED:ABANDONED" and restarted["rounds"] == [0]
        intended = intended and restarted["model"] and restarted["deleted"]
        rows.append(("server killed and restarted in round 1 of 3", restarted["status"], "-", kept,
                     "yes" if intended else "no"))  # fmt: skip
        copied = copied_kit(poc, "site-a")
        said = (
            f"site-a named and disabled after {copied['reported_s']:.0f} s" if copied["reported_s"] else "not reported"
        )
        rows.append((
            "two clients with one site name (site-a's kit copied)",
            said,
            "-",
            "-",
            "yes" if copied["reported_s"] and copied["disabled"] and copied["back"] else "no",
        ))  # fmt: skip
        gone = []
        run("vanished site (site-v's whole client SIGKILLed in round 0)", ["site-a", "site-v"], True, ["site-v"],
            killer=lambda: kill_when_training(poc, "site-v", True, gone))  # fmt: skip

    table = "| fault | job status | report: failed | model published | as intended |\n|---|---|---|---|---|\n"
    table += "\n".join("| " + " | ".join(row) + " |" for row in rows)
    keys = ("job_status", "report_failed", "model_published", "as_intended")
    faults = {fault: dict(zip(keys, rest)) for fault, *rest in rows}
    data = "SRCNN x4 from the shipped weights, 4 NIH training images per site, NVFlare POC on this machine"
    harness.record(args, data, [methods.get("srcnn", 4)], {"main": faults}, (time.perf_counter() - begun) / 60)
    command = f".venv/bin/{args.command}"
    block = f"{MARKERS[0]}\nProduced by `{command}` ({time.strftime('%Y-%m-%d')}, 2-core CPU):\n\n{table}\n{MARKERS[1]}"
    write_block(DOC, MARKERS, block)
    print(table)
    return 0 if all(row[-1] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
