"""Datalists of the large public chest X-ray sets, read from the folder layouts they are distributed in, for the
train and evaluate configs' ``--datalist_file``: ``training`` / ``validation`` / ``test`` items with ``label``
(the image's absolute path), ``patient_id`` and, where the set has them, ``boxes`` in the image's own pixels.

Splits are the sets' own where they publish one (NIH's ``train_val_list.txt`` / ``test_list.txt``, MIMIC's split
file, CheXpert's ``valid.csv``, VinDr's ``test/``); where a validation set is missing it is carved out by patient
(:func:`held_out`), so no patient is in two splits. Only frontal views (PA, AP) are listed where a set says the
view: the methods are trained and scored on frontal radiographs."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from monai_sr_bundle.errors import InputError

logger = logging.getLogger(__name__)

#: the share of a set's training patients held out for validation where the set publishes no validation split
VAL_FRACTION = 0.05


def held_out(patient_id: str, fraction: float = VAL_FRACTION) -> bool:
    """Whether ``patient_id`` goes to validation: a hash of the id, so the split is the same on every machine,
    in any file order, and a patient's images stay together."""
    digest = int(hashlib.sha256(str(patient_id).encode()).hexdigest()[:8], 16)
    return digest / 0x100000000 < fraction


def _need(root: Path, *parts: str, what: str) -> Path:
    """The path ``root/parts`` of the layout, or one sentence saying which layout was expected."""
    path = root.joinpath(*parts)
    if not path.exists():
        raise InputError(f"{root}: no {'/'.join(parts)} here; {what}")
    return path


def _rows(path: Path) -> Iterable[dict]:
    """The rows of a CSV file, gzipped or not."""
    raw = path.read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8-sig")
    return csv.DictReader(io.StringIO(text))


def present(items: list[dict]) -> tuple[list[dict], list[str]]:
    """``items`` whose ``label`` exists (a file, or a DICOM series folder), and the paths of those that do not."""
    missing = [d["label"] for d in items if not os.path.exists(d["label"])]
    if not missing:
        return items, []
    gone = set(missing)
    return [d for d in items if d["label"] not in gone], missing


def _split(items: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    val = [d for d in items if held_out(d["patient_id"], fraction)]
    return [d for d in items if not held_out(d["patient_id"], fraction)], val


NIH_LAYOUT = (
    "expected NIH ChestX-ray14 as distributed: Data_Entry_2017*.csv, train_val_list.txt, test_list.txt and the "
    "PNGs in images/ or images_001/images/ ... images_012/images/ (BBox_List_2017.csv optional)."
)


def nih_cxr14(root: Path, fraction: float = VAL_FRACTION) -> dict[str, list[dict]]:
    """NIH ChestX-ray14 (112,120 PNGs): the official train+val / test lists; validation carved out of train+val by
    patient; the official boxes (1024 px originals) on the images that have them."""
    entries = sorted(root.glob("Data_Entry_2017*.csv"))
    if not entries:
        raise InputError(f"{root}: no Data_Entry_2017.csv here; {NIH_LAYOUT}")
    patients = {row["Image Index"]: row["Patient ID"] for row in _rows(entries[-1])}
    found = {p.name: p for folder in sorted(root.glob("images*")) for p in folder.rglob("*.png")}
    boxes = defaultdict(list)
    if (root / "BBox_List_2017.csv").is_file():
        for row in csv.reader(io.StringIO((root / "BBox_List_2017.csv").read_text()), skipinitialspace=True):
            if len(row) >= 6 and row[0] != "Image Index":
                x, y, w, h = (float(v) for v in row[2:6])
                boxes[row[0]].append([x, y, x + w, y + h])
    splits = {}
    for key, listing in (("training", "train_val_list.txt"), ("test", "test_list.txt")):
        names = _need(root, listing, what=NIH_LAYOUT).read_text().split()
        splits[key] = [
            {"label": str(found.get(n, root / "images" / n)), "patient_id": patients.get(n, n.split("_")[0]),
             "boxes": boxes[n]}
            for n in names
        ]  # fmt: skip
    splits["training"], splits["validation"] = _split(splits["training"], fraction)
    return splits


CHEXPERT_LAYOUT = (
    "expected CheXpert as distributed (CheXpert-v1.0 or -small): train.csv and valid.csv whose Path column names "
    "<root name>/train/patientNNNNN/studyN/viewN_frontal.jpg (test.csv optional)."
)


def chexpert(root: Path, fraction: float = VAL_FRACTION) -> dict[str, list[dict]]:
    """CheXpert (224,316 JPEGs): ``train.csv`` for training, the official ``valid.csv`` (radiologist-labelled)
    for validation, ``test.csv`` for test when present; frontal views only."""
    splits = {}
    for key, table in (("training", "train.csv"), ("validation", "valid.csv"), ("test", "test.csv")):
        if key == "test" and not (root / table).is_file():
            continue
        items = []
        for row in _rows(_need(root, table, what=CHEXPERT_LAYOUT)):
            if "Path" not in row:
                raise InputError(f"{root / table}: no Path column; {CHEXPERT_LAYOUT}")
            view = row.get("Frontal/Lateral") or ("Lateral" if "lateral" in Path(row["Path"]).name else "Frontal")
            if view != "Frontal":  # test.csv has no view column: its file names say it
                continue
            parts = Path(row["Path"]).parts
            start = next((i for i, p in enumerate(parts) if p in ("train", "valid", "test")), None)
            if start is None or start + 1 >= len(parts):
                raise InputError(
                    f"{root / table}: path {row['Path']!r} is not <set>/patientNNNNN/...; {CHEXPERT_LAYOUT}"
                )
            items.append({"label": str(root.joinpath(*parts[start:])), "patient_id": parts[start + 1], "boxes": []})
        splits[key] = items
    return splits


MIMIC_LAYOUT = (
    "expected MIMIC-CXR-JPG as distributed: mimic-cxr-2.0.0-split.csv(.gz), mimic-cxr-2.0.0-metadata.csv(.gz) and "
    "files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg."
)


def mimic_cxr_jpg(root: Path, fraction: float = VAL_FRACTION) -> dict[str, list[dict]]:
    """MIMIC-CXR-JPG (377,110 JPEGs): the official patient-level split (train / validate / test); frontal views
    (``ViewPosition`` PA or AP in the metadata file) only."""

    def table(stem: str) -> Path:
        for name in (f"{stem}.csv.gz", f"{stem}.csv"):
            if (root / name).is_file():
                return root / name
        raise InputError(f"{root}: no {stem}.csv.gz here; {MIMIC_LAYOUT}")

    frontal = {r["dicom_id"] for r in _rows(table("mimic-cxr-2.0.0-metadata")) if r.get("ViewPosition") in ("PA", "AP")}
    keys = {"train": "training", "validate": "validation", "test": "test"}
    splits: dict[str, list[dict]] = {k: [] for k in keys.values()}
    for row in _rows(table("mimic-cxr-2.0.0-split")):
        if row["dicom_id"] not in frontal or row["split"] not in keys:
            continue
        subject = row["subject_id"]
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{row['study_id']}" / f"{row['dicom_id']}.jpg"
        splits[keys[row["split"]]].append({"label": str(path), "patient_id": subject, "boxes": []})
    return splits


VINDR_LAYOUT = (
    "expected VinDr-CXR as distributed: train/ and test/ of IMAGE_ID.dicom, annotations/annotations_train.csv and "
    "annotations/annotations_test.csv (image_id, class_name, x_min, y_min, x_max, y_max)."
)


def vindr_cxr(root: Path, fraction: float = VAL_FRACTION) -> dict[str, list[dict]]:
    """VinDr-CXR (18,000 DICOMs): ``train/`` (validation carved out by image: the set names no patients, each
    image is its own study) and ``test/``; the radiologists' boxes of every finding, in the image's pixels."""
    splits = {}
    for key, folder in (("training", "train"), ("test", "test")):
        boxes = defaultdict(list)
        for row in _rows(_need(root, "annotations", f"annotations_{folder}.csv", what=VINDR_LAYOUT)):
            try:
                boxes[row["image_id"]].append([float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")])
            except (KeyError, TypeError, ValueError):  # "No finding" rows have no box
                continue
        images = sorted(_need(root, folder, what=VINDR_LAYOUT).glob("*.dicom"))
        splits[key] = [{"label": str(p), "patient_id": p.stem, "boxes": boxes[p.stem]} for p in images]
    splits["training"], splits["validation"] = _split(splits["training"], fraction)
    return splits


#: dataset name -> builder; the names of ``monai-sr datalist``
BUILDERS: dict[str, Callable[[Path, float], dict[str, list[dict]]]] = {
    "nih_cxr14": nih_cxr14,
    "chexpert": chexpert,
    "mimic_cxr_jpg": mimic_cxr_jpg,
    "vindr_cxr": vindr_cxr,
}


def build_datalist(dataset: str, root: str | os.PathLike, fraction: float = VAL_FRACTION) -> dict:
    """``dataset``'s datalist from its folder ``root``, in the form ``--datalist_file`` reads; the images the
    set's tables name but the folder lacks (a partial download) are left out and listed under ``missing``."""
    if dataset not in BUILDERS:
        raise InputError(f"unknown dataset {dataset!r}; available: {', '.join(BUILDERS)}.")
    if not 0 <= fraction < 1:
        raise InputError(f"the validation fraction must be at least 0 and below 1, got {fraction!r}.")
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; give the folder the {dataset} download was unpacked into.")
    splits = BUILDERS[dataset](root, fraction)
    datalist: dict = {"dataset": dataset, "root": str(root), "missing": {}}
    for key, items in splits.items():
        datalist[key], missing = present(items)
        if missing:
            datalist["missing"][key] = missing
            logger.warning(f"{key}: {len(missing)} of {len(items)} images are not in {root} (first: {missing[0]})")
    if not datalist["training"]:
        raise InputError(f"{root}: no training image of {dataset} found there; check the folder is the set's root.")
    return datalist
