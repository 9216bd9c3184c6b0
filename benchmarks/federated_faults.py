"""What a federated job does under each fault a hospital deployment meets, on NVFlare's POC mode (the
server and every site as their own processes on this machine, kits from ``federated.deploy``, jobs
submitted through the admin API). SRCNN x4, 4 training images per site, 2 rounds, ``min_clients`` 1; also a
server restart in the middle of a job and a copied site kit.

Each row: the fault, the job's final status, what ``fl_report.json`` lists as failed, whether a model was
published, and whether that is what is intended (for a poisoned update also: the published model loads and is
finite, a site's weight is capped, the report is strict JSON; for runet, the published BatchNorm statistics
are round 0's). Writes the table into docs/federated.md (between its
``faults`` markers) and prints it.
Run: .venv/bin/python benchmarks/federated_faults.py   (about 20 min on a 2-core CPU: NVFlare declares a
vanished site dead only after its 600 s heartbeat timeout)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from nvflare.fuel.flare_api.api_spec import JobNotFound
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


#: a site's client that changes its update just before it leaves: the poisoned site of the fault rows (and of
#: tests/test_federated.py); never part of a job the project exports
ATTACKER = """
import sys

import nvflare.client as flare
import torch

from monai_sr_bundle.federated import client
from monai_sr_bundle.federated.aggregation import NUM_SAMPLES

MODES = {modes!r}  # the mode of each round; the last one for the rounds after it
send, receive, current_round = flare.send, flare.receive, [0]


def received(*args, **kwargs):
    model = receive(*args, **kwargs)
    if model is not None:
        current_round[0] = model.current_round or 0
    return model


def poisoned(model, *args, **kwargs):
    mode = MODES[min(current_round[0], len(MODES) - 1)]
    if model.params:
        first = next(k for k, v in model.params.items() if v.is_floating_point())
        if mode == "nan":
            model.params[first] = torch.full_like(model.params[first], float("nan"))
        elif mode == "scaled":
            model.params = {{k: v * 1e6 if v.is_floating_point() else v for k, v in model.params.items()}}
        elif mode == "broadcast":
            model.params[first] = torch.zeros(1)
        elif mode == "extra":
            model.params["evil.weight"] = torch.zeros(3)
        elif mode == "claims":
            model.meta[NUM_SAMPLES] = 1e9
    return send(model, *args, **kwargs)


if __name__ == "__main__":  # the site's worker is spawned and imports this script again
    flare.send, flare.receive = poisoned, received
    client.main(sys.argv[1:])
"""
#: what each attacker mode does, as a fault row names it
POISONS = {
    "nan": "NaN weights",
    "scaled": "weights x 1e6",
    "broadcast": "a (1,) tensor for a layer",
    "extra": "an extra key",
    "claims": "claims 10^9 training images",
}


def poison(job: Path, site: str, mode: str, *later: str) -> None:
    """Give ``site`` the attacker's client in the exported ``job`` folder: ``mode`` in round 0, then each of
    ``later`` in the rounds after it (the last one for the rest), so that one site can try several attacks."""
    (job / f"app_{site}" / "custom" / "client.py").write_text(ATTACKER.format(modes=(mode, *later)))


def finite_model(app: Path, name: str = "srcnn_cxr_x4.pt") -> bool:
    """The published model loads with weights_only and holds only finite numbers."""
    path = app / "models" / name
    return path.is_file() and all(torch.isfinite(v).all() for v in torch.load(path, weights_only=True).values())


def shipped_statistics(app: Path) -> bool:
    """The published runet's BatchNorm running means are the shipped weights' (round 0's): no site sent its own."""
    runet = methods.get("runet")
    shipped = runet.network(runet.weights_path).state_dict()
    published = torch.load(app / "models" / runet.weights_name, weights_only=True)
    return all(torch.equal(v, shipped[k]) for k, v in published.items() if k.endswith("running_mean"))


def strict_json(path: Path) -> dict:
    """``path`` as JSON, refusing the NaN and Infinity literals Python's writer would put there."""

    def refuse(constant: str):
        raise ValueError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def copied_kit(poc: LocalPoc, name: str, within_s: float = 60) -> dict:
    """Start a copy of ``name``'s kit beside it (issue 39, row 6): how long until the server's log names the
    site, and whether the name was then disabled (gone from the connected sites). Afterwards the copy is
    stopped, the admin enables the name again and waits for the site: ``back`` says whether it came."""
    copy = f"{name}-copy"
    shutil.copytree(poc.kits / name, poc.kits / copy, ignore=shutil.ignore_patterns("monai_sr_runs"))
    poc.config = {**poc.config, "sites": {**poc.config["sites"], copy: poc.config["sites"][name]}}
    log, said, started = poc.kits / "server" / "log.txt", f"site {name}: two clients are connected", time.monotonic()
    poc.start(copy)
    reported = None
    while reported is None and time.monotonic() - started < within_s:
        if said in log.read_text():
            reported = time.monotonic() - started
        time.sleep(1)
    session = poc.connect(sites=[])
    deadline = time.monotonic() + 30
    while name in poc.connected() and time.monotonic() < deadline:
        time.sleep(1)
    disabled = name not in poc.connected()
    poc.stop(copy)
    session.enable_client(name)
    try:
        poc.connect([name], timeout=120)
        back = True
    except InputError:
        back = False
    return {"reported_s": reported, "disabled": disabled, "back": back}


def server_restart(poc: LocalPoc, job_dir: Path) -> dict:
    """Submit ``job_dir``, SIGKILL the server once round 0 has published its model, start it again (issue 39,
    row 5): the job's status within a minute, the rounds its downloaded report holds, whether the downloaded
    model is the one its weights.json records (sha256), finite, and whether the job could then be deleted."""
    session = poc.connect(sites=[])
    job_id = session.submit_job(str(job_dir))
    report, deadline = poc.kits / "server" / job_id / "app_server" / REPORT_NAME, time.monotonic() + 300
    while not _published(report) and time.monotonic() < deadline:  # the model, its weights.json, then the report
        time.sleep(0.2)
    poc.stop("server")
    poc.start("server")
    session = poc.connect(timeout=300)
    found = {"status": poc.wait(job_id, 60), "rounds": [], "model": False, "deleted": False}
    if found["status"].startswith("FINISHED"):
        app = Path(session.download_job_result(job_id)) / "workspace" / "app_server"
        report = strict_json(app / REPORT_NAME) if (app / REPORT_NAME).is_file() else {"rounds": []}
        found["rounds"] = [r["round"] for r in report["rounds"] if r.get("global_model")]
        if found["rounds"]:
            model = app / report["rounds"][-1]["global_model"]
            recorded = json.loads((model.parent / "weights.json").read_text())[model.name]
            same = recorded["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
            found["model"] = same and finite_model(app, model.name)
        session.delete_job(job_id)
        try:
            session.get_job_meta(job_id)
        except JobNotFound:
            found["deleted"] = True
    return found


def _published(report: Path) -> bool:
    """The server's report (written atomically) names a published global model."""
    try:
        return any(r.get("global_model") for r in strict_json(report)["rounds"])
    except (OSError, ValueError, KeyError):
        return False


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
    command = ".venv/bin/python benchmarks/federated_faults.py"
    block = f"{MARKERS[0]}\nProduced by `{command}` ({time.strftime('%Y-%m-%d')}, 2-core CPU):\n\n{table}\n{MARKERS[1]}"
    write_block(DOC, MARKERS, block)
    print(table)
    return 0 if all(row[-1] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
