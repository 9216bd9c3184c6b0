"""Federated sites with several GPUs: a site's rounds trained by torchrun processes (gloo on this CPU). The
torchrun site of a real federation is one of the POC ``crash`` job's sites (the session's ``federated_poc``
fixture, run once for its readers here and in tests/test_federated.py)."""

from __future__ import annotations

import json

import pytest
from conftest import needs_data
from test_federated import NIH, _report, make_site, nih_items

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated.client import SiteWorker, parse_args
from monai_sr_bundle.federated.controller import FAILED_AT_SITE

pytestmark = [needs_data(NIH), pytest.mark.federated]


def test_a_site_with_two_gpus_trains_its_rounds_in_two_torchrun_processes(federated_poc):
    """NVFlare's multi-GPU client pattern, simulated with gloo, in the POC ``crash`` job (batch 2; see
    ``poc_deployment`` in tests/test_federated.py): site-g's config asks for 2 processes, the other sites train
    in one. Each round site-g's 4 images are split between its 2 processes (batch 2 each: 1 step, where site-a's
    4 images in one process take 2). One of site-g's processes is SIGKILLed in round 0: that round fails at
    site-g, saying so, while the others carry it, and round 1 starts its processes again and trains."""
    assert federated_poc.killed_rank
    first, second = _report(federated_poc.crash)["rounds"]
    assert first["failed"]["site-g"] == FAILED_AT_SITE and "site-g" not in first["sites"] and first["sites"]
    assert "site-g" in second["sites"] and "site-g" not in second["failed"]
    assert second["sites"]["site-g"]["steps"] == 1 and second["sites"]["site-a"]["steps"] == 2
    log = federated_poc.crash_logs["site-g"]
    assert log.count("site site-g: training in 2 processes (torchrun)") == 2
    assert "site-g round 0 failed: site site-g: its torchrun worker processes ended" in log


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
