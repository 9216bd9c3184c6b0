"""Faults injected into a federated job on NVFlare's POC mode, and the checks of what it then published: a
poisoned site's client, a copied site kit, a server killed and restarted mid-job. The fault table
(``python -m benchmarks.federated_faults``) and the federated tests' POC fixture drive the same ones."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
from nvflare.fuel.flare_api.api_spec import JobNotFound

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated.controller import REPORT_NAME
from monai_sr_bundle.federated.poc import LocalPoc

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
