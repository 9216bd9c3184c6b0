"""Datalists for the NIH ChestX-ray14 subset: its fixed patient-level split and its official boxes."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.errors import InputError

SPLITS = ("train", "val", "test")
#: boxes.csv is in the NIH originals' 1024-pixel coordinates
NIH_BOX_RESOLUTION = 1024


def nih_datalist(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    resolution: int = 512,
    limit: int | None = None,
) -> list[dict]:
    """One dict per image of ``split``: ``label`` (the HR path), ``boxes`` ((x0, y0, x1, y1) at ``resolution``),
    ``findings`` (box labels), ``labels`` (image-level NIH labels), ``patient_id``.

    Images without boxes are normal members with ``boxes == []``.

    Args:
        split: ``train``, ``val``, ``test`` or ``all``.
        data_dir: the ``nih_cxr14`` folder; default ``<shared data>/nih_cxr14``.
        resolution: 512 (``images_512``) or 1024 (``images_1024``, a 40-image subset).
        limit: keep the first ``limit`` images (for quick runs), in file order.
    """
    root = Path(data_dir) if data_dir else shared_data_dir() / "nih_cxr14"
    table = root / "images.csv"
    if not table.is_file():
        raise InputError(f"{table}: NIH images.csv not found; set MONAI_SR_DATA or pass data_dir.")
    if split not in SPLITS + ("all",):
        raise InputError(f"unknown split {split!r}; use one of {SPLITS + ('all',)}.")
    image_dir = root / f"images_{resolution}"
    if not image_dir.is_dir():
        raise InputError(f"{image_dir}: no images at resolution {resolution}; use 512 or 1024.")
    factor = resolution / NIH_BOX_RESOLUTION
    boxes, findings = defaultdict(list), defaultdict(list)
    boxes_csv = root / "boxes.csv"
    if boxes_csv.is_file():
        with open(boxes_csv, newline="") as f:
            for row in csv.DictReader(f):
                x, y, w, h = (float(row[k]) * factor for k in ("x", "y", "w", "h"))
                boxes[row["image"]].append([x, y, x + w, y + h])
                findings[row["image"]].append(row["label"])
    items = []
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            if split != "all" and row["split"] != split:
                continue
            path = image_dir / row["image"]
            if not path.is_file():
                continue  # images_1024 holds a subset
            items.append(
                {
                    "label": str(path),
                    "boxes": boxes[row["image"]],
                    "findings": findings[row["image"]],
                    "labels": row["labels"].split("|"),
                    "patient_id": row["patient_id"],
                }
            )
    if limit is not None:
        items = items[:limit]
    if not items:
        raise InputError(f"{root}: no images in split {split!r} at resolution {resolution}.")
    return items

