"""The GPU training script (``tools/gpu_train.py``) in its CPU dry run, so that it still runs the day a GPU is
lent; and the time-limited schedule it trains with."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import DATA, needs_data

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.training import loop
from tools import gpu_train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@needs_data(DATA / "nih_cxr14")
def test_pack_then_dry_run_writes_scored_weights_with_their_records(tmp_path, monkeypatch, capsys):
    """``pack`` writes the training images as JPEG and the validation images as they are; ``train --dry-run``
    trains every variant on them, and writes each one's weights (loadable with ``weights_only``), its record
    (the bundle command with the time limit, the epochs actually run, the pack) and a score per degradation.
    The script's commands run in this process (its training processes are processes)."""
    pack = tmp_path / "pack"
    assert gpu_train.main(["pack", "--pack", str(pack), "--limit", "2"]) == 0
    rows = list(csv.DictReader(open(pack / "images.csv")))
    assert [r["split"] for r in rows] == ["train", "train", "val"]
    assert sorted(p.suffix for p in (pack / "images").iterdir()) == [".jpg", ".jpg", ".png"]

    out = tmp_path / "out"
    monkeypatch.setenv("MONAI_SR_DATA", str(DATA))  # given back after train points it at its pack
    command = ["train", "--pack", str(pack), "--out", str(out), "--work", str(tmp_path / "work")]
    assert gpu_train.main([*command, "--minutes", "0.001", "--dry-run"]) == 0, capsys.readouterr().out[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert results["failed"] == []
    expected = {(name, d) for name, v in gpu_train.VARIANTS.items() for d in gpu_train.SCORED[v["scale"]]}
    assert {(r["variant"], r["degradation"]) for r in results["rows"]} == expected
    records = json.loads((out / "weights.json").read_text())
    for name, variant in gpu_train.VARIANTS.items():
        weights = out / f"{name}_lrunet_cxr_x{variant['scale']}.pt"
        state = torch.load(weights, map_location="cpu", weights_only=True)
        assert state and all(torch.isfinite(v).all() for v in state.values())
        record = records[name][f"lrunet_cxr_x{variant['scale']}.pt"]
        assert record["sha256"] == sha256(weights)
        assert "--time_limit_minutes 0.001" in record["command"]
        assert record["epochs_run"] == 1  # the time limit ended it after its first epoch (of 2)
        assert "JPEG" in record["data_pack"]
    assert "=== x2" in (out / "train_logs.txt").read_text()


def test_timed_cosine_follows_the_clock_and_resumes(monkeypatch):
    """The learning rate falls along a cosine of the time spent (half-way: the mean of start and floor), stays
    at the floor after the budget, and a resumed scheduler continues from the time already spent."""
    clock = {"now": 0.0}
    monkeypatch.setattr("time.perf_counter", lambda: clock["now"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = loop.lr_schedule(optimizer, epochs=1000, minutes=1.0, eta_min=0.0)
    assert optimizer.param_groups[0]["lr"] == 1.0
    clock["now"] = 30.0
    optimizer.step()
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    state = schedule.state_dict()

    clock["now"] = 1000.0  # another process, later: the time between runs is not training time
    resumed = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    again = loop.lr_schedule(resumed, 1000, 1.0, 0.0)
    again.load_state_dict(state)
    clock["now"] = 1015.0
    resumed.step()
    again.step()
    assert again.get_last_lr()[0] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(0.75 * torch.pi)).item()))
    clock["now"] = 2000.0
    again.step()
    assert again.get_last_lr()[0] == pytest.approx(0.0)

    epochs = loop.lr_schedule(optimizer, epochs=10, minutes=None)
    assert isinstance(epochs, torch.optim.lr_scheduler.CosineAnnealingLR) and epochs.T_max == 10
    with pytest.raises(InputError, match="time_limit_minutes"):
        loop.lr_schedule(optimizer, 10, minutes=0)


def test_the_tracked_tree_leaves_room_for_the_training_pack():
    """A lent GPU receives the tracked tree and the pack a call carries, 64 MiB in all: the tree stays within
    40,000 KiB (``git ls-files -z | xargs -0 du -ck``, issue 53's measure) so that the pack (the training split
    as JPEG, the validation images and the wheels, ~25 MiB) fits beside it. Weights are stored compactly
    (``tools/compact_weights.py``) and benchmark-only weights stay out of git."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked tree is what a GPU call carries")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    du = subprocess.run(["xargs", "-0", "du", "-ck"], cwd=REPO, input=files, capture_output=True, check=True)
    total_kib = int(du.stdout.decode().splitlines()[-1].split()[0])
    assert total_kib <= 40_000, f"the tracked tree is {total_kib} KiB: store weights compactly or keep them out of git"
