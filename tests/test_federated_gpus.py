"""Federated sites with several GPUs: a site's rounds trained by torchrun processes (gloo on this CPU). Apart
from tests/test_federated.py, whose tests share a module fixture and so run one after another in one worker."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import needs_data
from test_federated import NIH, _report, job_file, make_site, nih_items

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated.client import SiteWorker, parse_args
from monai_sr_bundle.federated.controller import FAILED_AT_SITE
from monai_sr_bundle.federated.job import load_job_config, run_simulation

pytestmark = [needs_data(NIH), pytest.mark.federated]


def test_a_site_with_two_gpus_trains_its_rounds_in_two_torchrun_processes(tmp_path):
    """NVFlare's multi-GPU client pattern, simulated with gloo: site-a's config asks for 2 processes, site-b
    trains in one. Each round site-a's 4 images are split between its 2 processes (batch 2 each: 1 step, where
    site-b's 4 images in one process take 2). One of site-a's processes is SIGKILLed in round 0: that round
    fails at site-a, saying so, and round 1 starts its processes again and trains."""
    import psutil

    a = make_site(tmp_path / "a", "site-a", nih_items("train", 0, 4), nih_items("val", 0, 2))
    a.write_text(json.dumps({**json.loads(a.read_text()), "processes": 2}))
    b = make_site(tmp_path / "b", "site-b", nih_items("train", 200, 4), nih_items("val", 30, 1))
    config = load_job_config(
        job_file(tmp_path, "gpus", {"site-a": str(a), "site-b": str(b)}, min_clients=1, batch_size=2)
    )
    killed = []

    def kill_a_rank() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            for pid_file in (tmp_path / "ws").rglob("site-a/worker.pid"):
                try:
                    ranks = psutil.Process(int(pid_file.read_text())).children()
                except (ValueError, psutil.NoSuchProcess):
                    continue
                if len(ranks) == 2:
                    ranks[-1].kill()
                    killed.append(ranks[-1].pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_rank, daemon=True)
    killer.start()
    app = run_simulation(config, tmp_path / "ws")
    killer.join()
    assert killed
    first, second = _report(app)["rounds"]
    assert first["failed"] == {"site-a": FAILED_AT_SITE} and set(first["sites"]) == {"site-b"}
    assert set(second["sites"]) == {"site-a", "site-b"} and not second["failed"]
    assert second["sites"]["site-a"]["steps"] == 1 and second["sites"]["site-b"]["steps"] == 2
    log = (tmp_path / "ws" / "gpus" / "site-a" / "log.txt").read_text()
    assert log.count("site site-a: training in 2 processes (torchrun)") == 2
    assert "site-a round 0 failed: site site-a: its torchrun worker processes ended" in log


def test_a_torchrun_sites_refusal_reaches_the_relay_as_its_sentence(tmp_path):
    """A site config asking for more processes than it has validation images: the torchrun processes refuse
    it, and the relay's round fails with that sentence (not an exit code); nothing is left running."""
    site = make_site(tmp_path, "s", nih_items("train", 0, 2), nih_items("val", 0, 1))
    site.write_text(json.dumps({**json.loads(site.read_text()), "processes": 2}))
    argv = ["--method", "srcnn", "--site_config", str(site), "--threads", "1"]
    worker = SiteWorker("s", parse_args(argv), 1, tmp_path / "runs", argv)
    with pytest.raises(InputError, match=r"^site s: 'processes' 2 in .* but 1 validation image\(s\).*at most 1\.$"):
        worker.run_round({}, 1)
    assert worker.process is None and not (tmp_path / "runs" / "s" / "failure.txt").exists()
