"""Several processes (``configs/multi_gpu_train.json``, ``configs/multi_gpu_evaluate.json``) launched by the real
torchrun, with gloo on this CPU as CI has it: every training stage, equivalence with one process, and the
faults (a process killed, one that cannot reach the others, more processes than data)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from conftest import DATA, TINY_GAN, TINY_GAN_OVERLAY, USER_PYTHON, needs_data
from PIL import Image
from test_bundle import BUNDLE, REPO, _configs, run_config, train_files
from test_diffusion import NAME as TINY_DIFFUSION
from test_diffusion import OVERLAY as TINY_DIFFUSION_OVERLAY
from test_ldm import _tiny_overlay

from monai_sr_bundle import methods

NIH = DATA / "nih_cxr14"
MULTI_TRAIN = "'configs/multi_gpu_train.json'"
#: one thread per process, in the one-process baselines too: equal thread counts, equal sums
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
SMALL = ("--val_limit", "2", "--patch_size", "32", "--progress_bar", "false")


def multi(files: str, config: str = MULTI_TRAIN) -> str:
    """A ``--config_file`` list with the multi-GPU overlay last, as the docs write it."""
    return files[:-1] + "," + config + "]"


def bundle_run(files: str, method: str, *args, processes: int = 1, timeout: float = 300, env: dict | None = None):
    """``python -m monai.bundle run`` in a process of its own (``processes`` > 1: under torchrun)."""
    launch = [USER_PYTHON]
    if processes > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launch, "-m", "monai.bundle", "run", "--config_file", files, "--method", method, *map(str, args)]
    return subprocess.run(
        command, cwd=BUNDLE, env={**os.environ, **ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def ok(done: subprocess.CompletedProcess) -> str:
    log = done.stdout + (done.stderr or "")  # run_config (in this process) has it all in stdout
    assert done.returncode == 0, log[-4000:]
    return log


@pytest.fixture
def one_thread(torch_threads):
    """This process with one torch thread, as :data:`ENV` gives each process of a run: the one-process baseline
    runs here, and equal thread counts give equal sums."""
    torch.set_num_threads(1)


@pytest.fixture
def tiny_methods(tmp_path, monkeypatch) -> Path:
    """The tests' tiny GAN, diffusion and latent methods in one overlay folder (``$MONAI_SR_METHODS``)."""
    _tiny_overlay(tmp_path, monkeypatch)  # tiny_ldm, and the folder
    folder = tmp_path / "overlays"
    (folder / f"{TINY_GAN}.json").write_text(json.dumps(TINY_GAN_OVERLAY))
    (folder / f"{TINY_DIFFUSION}.json").write_text(json.dumps(TINY_DIFFUSION_OVERLAY))
    return folder


@needs_data(NIH)
@pytest.mark.slow
@pytest.mark.parametrize(
    "method, stages",
    [
        ("srresnet", ["train"]),
        (TINY_GAN, ["gan"]),
        (TINY_DIFFUSION, ["diffusion"]),
        ("tiny_ldm", ["autoencoder", "diffusion"]),
    ],
)
def test_every_training_stage_runs_in_two_processes(tmp_path, tiny_methods, method, stages):
    """Supervised, GAN, diffusion and the latent method's two stages: two gloo processes train each, one log
    and one set of files is written (the first process's), the weights hold the method's own names, and
    ``weights.json`` says how many processes trained them."""
    root = tmp_path / "bundle"
    for stage in stages:
        files = multi(train_files(method, stage))
        log = ok(
            bundle_run(files, method, *SMALL, "--train_limit", 4, "--max_epochs", 2, "--bundle_root", root, processes=2)
        )
        assert log.count("Epoch[2] Complete") == 2, log[-3000:]  # the trainer's and the evaluator's, rank 0 only
        assert not list(root.rglob("*.tmp"))
    record = json.loads((root / "models" / "weights.json").read_text())
    published = methods.get(method).weights_path.name
    assert record[published]["train_device"].startswith("2 processes, CPU")
    methods.get(method).network(root / "models" / published)  # strict: no DistributedDataParallel "module." names


def _crops(folder: Path, count: int, side: int = 64) -> Path:
    """A datalist of ``count`` HR crops of NIH training images (its own files: the run's data is fixed)."""
    from monai_sr_bundle.data.datalist import nih_datalist

    folder.mkdir()
    items = []
    for i, item in enumerate(nih_datalist("train", limit=count)):
        with Image.open(item["label"]) as im:
            crop = np.asarray(im.convert("L"))[200 : 200 + side, 200 : 200 + side]
        Image.fromarray(crop).save(folder / f"{i}.png")
        items.append({"label": f"{i}.png"})
    (folder / "datalist.json").write_text(json.dumps({"training": items, "validation": items[:2]}))
    return folder / "datalist.json"


@needs_data(NIH)
@pytest.mark.slow
def test_two_processes_with_half_the_batch_reach_the_weights_of_one(tmp_path, one_thread):
    """Same start, same data in the same order, no random crop or flip: two processes with batch 2 each end
    with the weights one process reaches with batch 4 (DistributedDataParallel averages the two halves'
    gradients, which is the whole batch's mean gradient). Measured: 4e-7 apart after 4 Adam steps that moved
    the weights by 3e-3."""
    datalist = _crops(tmp_path / "data", 8)
    fixed, in_order = tmp_path / "fixed.json", tmp_path / "in_order.json"  # whole 64 px crops, not flipped
    fixed.write_text(
        json.dumps(
            {
                "train#augmentation": [{"_target_": "SelectItemsd", "keys": ["image", "label"]}],
                "train#dataloader#shuffle": False,
            }
        )
    )
    in_order.write_text(json.dumps({"train#sampler#shuffle": False}))  # batches in datalist order
    args = ("--datalist_file", datalist, "--max_epochs", 2, "--val_limit", 2, "--progress_bar", "false")
    args += ("--learning_rate", 1e-3, "--validate_in_training", "false", "--init_weights", "models/srcnn_cxr_x4.pt")
    one = train_files("srcnn")[:-1] + f",'{fixed}']"
    # the one process is this one (one_thread): a process of its own cost seconds of imports and proved nothing more
    log = ok(
        run_config(
            one, "srcnn", *args, "--batch_size", 4, "--run_dir", tmp_path / "one", "--ckpt_path", tmp_path / "1.pt"
        )
    )
    # --validate_in_training false: validated once, after the last epoch (the trainer's and the evaluator's
    # Epoch[2]), so the run still has a best checkpoint and publishes
    assert log.count("Epoch[1] Complete") == 1 and log.count("Epoch[2] Complete") == 2, log[-3000:]
    assert (tmp_path / "1.pt").is_file()
    two = multi(train_files("srcnn"))[:-1] + f",'{fixed}','{in_order}']"
    ok(
        bundle_run(
            two,
            "srcnn",
            *args,
            "--batch_size",
            2,
            "--run_dir",
            tmp_path / "two",
            "--ckpt_path",
            tmp_path / "2.pt",
            processes=2,
        )
    )

    start = torch.load(BUNDLE / "models" / "srcnn_cxr_x4.pt", weights_only=True)
    ends = [
        torch.load(tmp_path / run / "checkpoint_epoch=2.pt", weights_only=True)["network"] for run in ("one", "two")
    ]
    moved = max((ends[0][k] - start[k]).abs().max().item() for k in start)
    apart = max((ends[0][k] - ends[1][k]).abs().max().item() for k in start)
    assert moved > 1e-3  # they trained
    assert apart < 1e-5, f"one process and two are {apart:.2e} apart (training moved the weights by {moved:.2e})"


@needs_data(NIH)
@pytest.mark.slow
def test_evaluation_over_two_processes_equals_one_process(tmp_path, one_thread):
    """Three images over two processes (two and one): the same rows in the same order, the same summary,
    byte for byte; no image counted twice or lost."""
    files = _configs("inference.json", "evaluate.json")
    args = ("--limit", 3, "--figures", 1, "--lpips", "false")
    ok(run_config(files, "srcnn", *args, "--output_dir", tmp_path / "one"))  # one process: this one
    ok(
        bundle_run(
            multi(files, "'configs/multi_gpu_evaluate.json'"),
            "srcnn",
            *args,
            "--output_dir",
            tmp_path / "two",
            processes=2,
        )
    )
    for name in ("metrics.csv", "summary.json", "summary.md"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text(), name
    rows = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and len({r.split(",")[0] for r in rows[1:]}) == 3
    assert sorted(p.name for p in (tmp_path / "two").glob("figure_*.png")) == sorted(
        p.name for p in (tmp_path / "one").glob("figure_*.png")
    )


def _workers(launcher: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(launcher.pid).children(recursive=True) if "monai.bundle" in " ".join(p.cmdline())]


@needs_data(NIH)
@pytest.mark.slow
def test_a_killed_process_ends_the_run_and_the_same_command_resumes(tmp_path):
    """One of two processes SIGKILLed once an epoch's checkpoint is there: the run ends with torchrun's report
    naming the process and the signal and one sentence of the first process saying where to resume from,
    ``weights.json`` is untouched (nothing published), the checkpoint is whole; the same command then resumes
    from it and publishes."""
    run, weights = tmp_path / "run", tmp_path / "w.pt"
    args = (*SMALL, "--train_limit", 4, "--batch_size", 2, "--run_dir", run, "--ckpt_path", weights)
    manifest = tmp_path / "weights.json"
    manifest.write_text('{"other.pt": {"sha256": "0"}}\n')
    launch = [USER_PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle"]
    command = [*launch, "run", "--config_file", multi(train_files("srcnn")), "--method", "srcnn", *map(str, args)]
    with open(tmp_path / "log", "w") as log:
        launcher = subprocess.Popen(
            [*command, "--max_epochs", "200"],
            cwd=BUNDLE,
            env={**os.environ, **ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 240
            # any epoch's: each replaces the one before (n_saved=1), and an epoch here can take less than a poll
            while not list(run.glob("checkpoint_epoch=*.pt")) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert list(run.glob("checkpoint_epoch=*.pt")), (tmp_path / "log").read_text()[-3000:]
            victim = max(_workers(launcher), key=lambda p: p.pid)
            victim.send_signal(signal.SIGKILL)
            code = launcher.wait(timeout=120)
        finally:
            if launcher.poll() is None:
                launcher.kill()
    text = (tmp_path / "log").read_text()
    assert code != 0 and "Signal 9 (SIGKILL)" in text, text[-3000:]
    assert text.count("error: process 0 stopped: another process of this run ended") == 1, text[-3000:]
    assert f"the last checkpoint is {run / 'checkpoint_epoch='}" in text and "run the same command again" in text
    assert manifest.read_text() == '{"other.pt": {"sha256": "0"}}\n' and not weights.exists()
    last = max(int(p.stem.split("=")[1]) for p in run.glob("checkpoint_epoch=*.pt"))
    torch.load(run / f"checkpoint_epoch={last}.pt", weights_only=True)  # whole

    resumed = ok(bundle_run(multi(train_files("srcnn")), "srcnn", *args, "--max_epochs", last + 1, processes=2))
    assert f"Restored all variables from {run / f'checkpoint_epoch={last}.pt'}" in resumed
    assert (run / f"checkpoint_epoch={last + 1}.pt").is_file()
    assert set(json.loads(manifest.read_text())) == {"other.pt", "w.pt"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_process_that_cannot_reach_the_others_stops_in_one_sentence(tmp_path):
    """Process 0 of 2 started alone (the other never comes): after --dist_timeout it stops with one sentence
    naming the address, not a hang and not a traceback; nothing is written."""
    alone = {
        "LOCAL_RANK": "0",
        "RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    args = ("--run_dir", tmp_path / "run", "--ckpt_path", tmp_path / "w.pt", "--dist_timeout", 5)
    started = time.monotonic()
    done = bundle_run(multi(train_files("srcnn")), "srcnn", *args, env=alone, timeout=120)
    assert done.returncode != 0 and time.monotonic() - started < 90
    assert f"process 0 of 2 could not reach the others at 127.0.0.1:{alone['MASTER_PORT']} within 5 s" in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())


@needs_data(NIH)
@pytest.mark.slow
def test_more_processes_than_training_images_is_one_sentence(tmp_path):
    done = bundle_run(
        multi(train_files("srcnn")), "srcnn", "--train_limit", 1, "--run_dir", tmp_path / "run", processes=2
    )
    log = done.stdout + done.stderr
    assert done.returncode != 0
    assert "2 processes but 1 training images: every process needs at least one; give --nproc_per_node at most 1" in log
    assert not (tmp_path / "run").exists()


def test_the_multi_gpu_configs_outside_torchrun_are_one_sentence(tmp_path, monkeypatch):
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    proc = run_config(
        multi(train_files("srcnn")), "srcnn", "--run_dir", tmp_path / "run", "--ckpt_path", tmp_path / "w.pt"
    )
    assert proc.returncode != 0 and "the multi-GPU configs run under torchrun" in proc.stdout
    assert not any(tmp_path.iterdir())
    proc = run_config(multi(_configs("inference.json", "evaluate.json"), "'configs/multi_gpu_evaluate.json'"), "srcnn")
    assert proc.returncode != 0 and "the multi-GPU configs run under torchrun" in proc.stdout
