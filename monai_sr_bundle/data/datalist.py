"""Datalists: the NIH ChestX-ray14 subset with its fixed patient-level split and its official boxes, and
datalist files in MONAI's decathlon form for anyone else's data (e.g. a MONAI Label datastore)."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

from monai.data import load_decathlon_datalist

from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.data.public import present
from monai_sr_bundle.data.readers import expand_inputs
from monai_sr_bundle.errors import InputError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: boxes.csv is in the NIH originals' 1024-pixel coordinates
NIH_BOX_RESOLUTION = 1024


BOX_COLUMNS = ("image", "label", "x", "y", "w", "h")


def read_boxes_csv(path: str | os.PathLike) -> dict[str, list[tuple[str, list[float]]]]:
    """Boxes of a CSV in the NIH ``boxes.csv`` form (``image,label,x,y,w,h``) as ``{image: [(finding,
    [x0, y0, x1, y1]), ...]}`` in the CSV's own pixels; a missing column or a non-number is refused with its line."""
    rows: dict[str, list] = defaultdict(list)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(BOX_COLUMNS)}.")
        for n, row in enumerate(reader, start=2):
            try:
                x, y, w, h = (float(row[k]) for k in "xywh")
            except (TypeError, ValueError) as e:
                raise InputError(f"{path} line {n}: x, y, w, h must be numbers ({e}).") from e
            rows[row["image"]].append((row["label"], [x, y, x + w, y + h]))
    return rows


def nih_datalist(
    split: str = "train", data_dir: str | os.PathLike | None = None, resolution: int = 512, limit: int | None = None
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
    table_boxes = read_boxes_csv(root / "boxes.csv") if (root / "boxes.csv").is_file() else {}
    boxes = defaultdict(list, {k: [[v * factor for v in b] for _, b in rows] for k, rows in table_boxes.items()})
    findings = defaultdict(list, {k: [f for f, _ in rows] for k, rows in table_boxes.items()})
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


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    limit: int | None = None,
    base_dir: str | os.PathLike | None = None,
    skip_missing: bool = True,
) -> list[dict]:
    """Items of a decathlon-style datalist JSON (``{"training": [{"label": <HR image>, "boxes": [[x0, y0, x1,
    y1], ...]}, ...], "validation": [...]}``); relative paths are taken from ``base_dir`` (default: the file's
    folder) and a missing ``boxes`` means no boxes, so the train config treats these items as it treats
    ``nih_datalist``'s. Items whose image is missing are skipped, counted and named in a warning (an archive
    changes under a datalist), none left is an error; ``skip_missing=False`` keeps them for a caller that
    refuses them itself (a federated site)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: datalist file not found.")
    try:
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key, base_dir=base_dir)
    except (ValueError, KeyError, TypeError) as e:  # MONAI's messages for a missing key or a bad file
        raise InputError(f"{path}: not a datalist with a {key!r} list of items ({e}).") from e
    if not items or not all(isinstance(d, dict) and isinstance(d.get("label"), str) for d in items):
        raise InputError(f"{path}: the {key!r} list must hold items with a 'label' image path.")
    items = [{"boxes": [], **d} for d in (items[:limit] if limit is not None else items)]
    if not skip_missing:
        return items
    items, missing = present(items)
    if missing:
        logger.warning(
            f"{path}: {len(missing)} {key} item(s) skipped, their image is missing: "
            + ", ".join(missing[:10])
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )
    if not items:
        raise InputError(f"{path}: none of the {key!r} images exists (first missing: {missing[0]}).")
    return items


def split_items(
    split: str,
    data_dir: str | os.PathLike | None = None,
    datalist_file: str | os.PathLike | None = None,
    key: str | None = None,
    limit: int | None = None,
    base_dir: str | os.PathLike | None = None,
    images: str | os.PathLike | list | None = None,
) -> list[dict]:
    """The items a config's ``split`` reads: ``images`` of one's own when given (:func:`image_datalist`), else
    the ``key`` list (default: ``split``) of ``datalist_file`` (its relative paths under ``base_dir``), else
    NIH ChestX-ray14's ``split`` in ``data_dir``; the first ``limit`` of them."""
    if images is not None:
        return image_datalist(images, limit)
    if datalist_file is None:
        return nih_datalist(split, data_dir, limit=limit)
    return load_datalist(datalist_file, key or split, limit=limit, base_dir=base_dir)


def image_datalist(inputs: str | os.PathLike | list, limit: int | None = None) -> list[dict]:
    """HR images of one's own (files, or folders of them) as evaluation items without boxes: how a site
    scores a model on its own data (``evaluate.json --input``)."""
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise InputError(f"{missing[0]}: no such file or folder; give HR images (files or a folder) to score.")
    items = [{"label": f, "boxes": []} for f in expand_inputs(paths)]
    return items[:limit] if limit is not None else items


def write_nih_resized(out_dir: str | os.PathLike, size: int, data_dir: str | os.PathLike | None = None) -> Path:
    """The NIH splits at ``size`` instead of 512 (a protocol set at another HR size, e.g. the anomaly-focused
    paper's 256 -> 64 at x4): ``images_512`` resized with Lanczos antialiasing, as ``images_512`` was made from
    the originals, into ``out_dir/<key>/``, their boxes scaled alike, and ``out_dir/datalist.json`` with the
    ``training`` / ``validation`` / ``test`` keys that train and evaluate read (``--datalist_file``). Scaling
    the images once, as data, keeps every box, mask and metric at the size it is used at. Returns the
    datalist path."""
    from PIL import Image

    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 512:
        raise InputError(f"size must be a whole number of pixels from 8 to 512 (images_512 is resized), got {size!r}.")
    factor = size / 512
    out_dir = Path(out_dir)
    datalist: dict = {"size": size}
    for split, key in zip(SPLITS, ("training", "validation", "test")):
        items = []
        for item in nih_datalist(split, data_dir):
            with Image.open(item["label"]) as img:
                resized = img.resize((round(img.width * factor), round(img.height * factor)), Image.LANCZOS)
            target = out_dir / key / Path(item["label"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            resized.save(target)
            boxes = [[v * factor for v in box] for box in item["boxes"]]
            items.append({**item, "label": str(target.resolve()), "boxes": boxes})
        datalist[key] = items
    return write_datalist(out_dir, datalist)


def write_datalist(out_dir: str | os.PathLike, datalist: dict, name: str = "datalist.json") -> Path:
    """Write ``out_dir/name`` atomically (a reader never sees half a list); returns its path."""
    target = Path(out_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(datalist, indent=1) + "\n")
    os.replace(tmp, target)
    return target
