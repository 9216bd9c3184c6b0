"""What a training run publishes: the best checkpoint as a plain, hashed state dict under ``models/``
(:func:`~monai_sr_bundle.weights.write_weights`), with the provenance the train config assembles: the command
that reruns it, the data it trained on, the files it built on, how long it took."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import torch

from monai_sr_bundle import methods
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.distributed import is_main_process
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.training.loop import TRAIN_SECONDS
from monai_sr_bundle.weights import write_weights


def training_data(datalist_file: str | os.PathLike | None, dataset_dir: str | None, hr_only: bool = False) -> str:
    """What a run trains and selects on, as ``weights.json`` records it: NIH ChestX-ray14's patient-level
    train split (its size counted) or the datalist file's items. ``hr_only``: a stage that sees only the HR
    patches (the autoencoder reconstructs them)."""
    if datalist_file is None:
        from monai_sr_bundle.data.datalist import nih_datalist

        count = len(nih_datalist("train", dataset_dir))
        use = ": HR patches only (the autoencoder reconstructs them)" if hr_only else ""
        return (
            "NIH ChestX-ray14 (../shared/data/nih_cxr14 or $MONAI_SR_DATA): images_512, split=train of images.csv "
            f"({count} images, patient-level){use}; first val_limit images of split=val for model selection"
        )
    items = "HR patches of its training items" if hr_only else "its training items"
    return f"datalist file {datalist_file}: {items}; the first val_limit validation items for model selection"


def file_record(path: str | os.PathLike | None) -> dict | None:
    """A weights file a run builds on, as its provenance names it: file name and sha256 (None: no file)."""
    return None if path is None else {"weights": os.path.basename(path), "sha256": sha256(path)}


def train_command(config_files: list[str], method: methods.Method, settings: dict) -> str:
    """The bundle command that reruns a training, as ``weights.json`` records it: the stages, the method and
    each stage setting (``None``: left at its default, omitted); a setting equal to the method's overlay is
    left to the overlay, any other is written out, so overrides given on the command line are kept."""
    stages = ",".join(f"'{f}'" for f in config_files)
    parts = [f"cd {BUNDLE_ROOT.name} && python -m monai.bundle run --config_file", f'"[{stages}]"']
    parts += ["--method", method.name]
    for key, value in settings.items():
        if value is None or method.config.get(key, object()) == value:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        if not re.fullmatch(r"[\w./:-]+", text):  # a dict's JSON has double quotes: single-quote it instead
            text = f'"{text}"' if '"' not in text else shlex.quote(text)
        parts += [f"--{key}", text]
    return " ".join(parts)


def publish_weights(
    best_ckpt: str | os.PathLike,
    weights_path: str | os.PathLike,
    provenance: dict,
    key_metric: str = "val_psnr",
    lower_is_better: bool = False,
) -> str | None:
    """Save the network state dict of ``best_ckpt`` to ``weights_path`` (atomically) and record its sha256
    and ``provenance`` (training command, data split, best ``key_metric``, and the training time that
    :func:`~monai_sr_bundle.training.loop.track_train_time` kept beside the checkpoint) in ``models/weights.json``.

    ``lower_is_better`` says that the saver ranked checkpoints by the negated metric (the GAN stage selects
    by LPIPS), so the recorded value is the metric itself. Returns the sha256; None in the other processes of
    a distributed run, which write nothing."""
    best_ckpt, weights_path = Path(best_ckpt), Path(weights_path)
    if not is_main_process():
        return None
    if not best_ckpt.is_file():
        raise InputError(f"{best_ckpt}: no best checkpoint was saved; did validation run at least once?")
    state = torch.load(best_ckpt, map_location="cpu", weights_only=True)
    # a key-metric checkpoint holds the network's state dict plus the saver's own bookkeeping, whose
    # "_saved" list holds (priority, name): the best validation score, negated for a lower-is-better metric
    saved = (state.get("checkpointer") or {}).get("_saved") or []
    if saved:
        best = max(p for p, _ in saved)
        provenance = {**provenance, f"best_{key_metric}": round(float(-best if lower_is_better else best), 4)}
    timing = best_ckpt.parent / TRAIN_SECONDS
    if timing.is_file():
        took = json.loads(timing.read_text())
        provenance = {**provenance, "train_minutes": round(took["seconds"] / 60, 2), "train_device": took["device"]}
        if "epochs" in took and took["epochs"] != provenance.get("epochs"):
            provenance["epochs_run"] = took["epochs"]  # a time limit or a stop ended it early
    return write_weights({k: v for k, v in state.items() if k != "checkpointer"}, weights_path, provenance)
