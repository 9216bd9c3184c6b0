"""Datalists of the large public chest X-ray sets, read from the folder layouts they are distributed in, for the
train and evaluate configs' ``--datalist_file``: ``training`` / ``validation`` / ``test`` items with ``label``
(the image's absolute path), ``patient_id`` and, where the set has them, ``boxes`` in the image's own pixels.

Splits are the sets' own where they publish one (NIH's ``train_val_list.txt`` / ``test_list.txt``, MIMIC's split
file, CheXpert's ``valid.csv``, VinDr's ``test/``); where a validation set is missing it is carved out by patient
(:func:`held_out`), so no patient is in two splits. Only frontal views (PA, AP) are listed where a set says the
view: the methods are trained and scored on frontal radiographs.

A set's tables are input, not code: they are read within bounds and checked (:func:`_lines`, :func:`_rows`), and
every file they list must stay inside the set's folder (:class:`_Inside`); anything else is one sentence."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import math
import os
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

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


#: Bounds on one table of a set (a CSV, gzipped or not, or a list of names), far above the largest real one
#: (MIMIC-CXR's metadata, 377,110 rows; no row is over a few hundred bytes) and far below what exhausts memory:
#: a 1 MB ``.csv.gz`` can inflate to gigabytes, so a table is streamed and refused at the first bound it passes.
MAX_TABLE_ROWS = 2_000_000
MAX_TABLE_BYTES = 256 * 2**20  # unpacked
MAX_LINE_BYTES = 64 * 2**10
DAMAGED = "the file is damaged or not the set's table; download it again"


def _lines(path: Path) -> Iterator[str]:
    """The lines of the table ``path``, gzipped or not, streamed a MiB at a time and refused at the first bound
    above it passes (so at most a MiB and a line are held); a BOM (Excel's "CSV UTF-8") is dropped, and bytes
    that are not UTF-8 are refused naming the line."""
    if not path.is_file():
        raise InputError(f"{path}: not a file; {DAMAGED}.")
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            rows, total, rest = 0, 0, b""
            while chunk := stream.read(2**20):
                total += len(chunk)
                if total > MAX_TABLE_BYTES:
                    raise InputError(f"{path}: more than {MAX_TABLE_BYTES:,} bytes unpacked; {DAMAGED}.")
                block = rest + chunk
                end = block.rfind(b"\n") + 1  # whole lines only: a character never straddles a newline
                block, rest = block[:end], block[end:]
                if block:
                    yield from _decoded(path, block, rows)
                    rows += block.count(b"\n")
                if len(rest) > MAX_LINE_BYTES:
                    raise InputError(f"{path}: line {rows + 1} is longer than {MAX_LINE_BYTES:,} bytes; {DAMAGED}.")
            if rest:
                yield from _decoded(path, rest, rows)
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a truncated or corrupt gzip
        raise InputError(f"{path}: cannot be read ({e}); {DAMAGED}.") from None


def _decoded(path: Path, block: bytes, before: int) -> io.StringIO:
    """The lines of ``block``, whose first is line ``before + 1`` of ``path``, as text; refused past the row or
    line bound, or at the first line that is not UTF-8."""
    if before + block.count(b"\n") + (not block.endswith(b"\n")) > MAX_TABLE_ROWS:
        raise InputError(f"{path}: more than {MAX_TABLE_ROWS:,} rows; {DAMAGED}.")
    if max(map(len, block.split(b"\n"))) > MAX_LINE_BYTES:
        line = before + next(i for i, n in enumerate(map(len, block.split(b"\n")), 1) if n > MAX_LINE_BYTES)
        raise InputError(f"{path}: line {line} is longer than {MAX_LINE_BYTES:,} bytes; {DAMAGED}.")
    if not before and block.startswith(b"\xef\xbb\xbf"):  # line 1's BOM, as Excel writes it
        block = block[3:]
    try:
        return io.StringIO(block.decode("utf-8"), newline="\n")
    except UnicodeDecodeError as e:
        line = before + block.count(b"\n", 0, e.start) + 1
        raise InputError(
            f'{path}: line {line} is not UTF-8; save the table as UTF-8 (Excel: "CSV UTF-8"), or download it '
            "again if it is damaged."
        ) from None


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """The CSV records of ``path``, each with the line it ends on (a quoted field may span lines)."""
    reader = csv.reader(_lines(path), skipinitialspace=True)
    try:
        for record in reader:
            yield reader.line_num, record
    except csv.Error as e:
        raise InputError(f"{path}: line {reader.line_num} is not CSV ({e}); {DAMAGED}.") from None


def _rows(
    path: Path, columns: tuple[str, ...], what: str, optional: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict]]:
    """The rows of the CSV table ``path`` by column name, each with its line. The header must hold ``columns``
    and ``optional``, checked before any row so that a wrong file is one sentence listing what is missing and
    what is there; every row must fill ``columns`` (its keys: ids and paths)."""
    records = _records(path)
    _, header = next(records, (0, []))
    missing = [c for c in (*columns, *optional) if c not in header]
    if missing:
        there = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "") if header else "none"
        plural = "s" if len(missing) > 1 else ""
        raise InputError(f"{path}: no {', '.join(missing)} column{plural} (its columns: {there}); {what}")
    for line, record in records:
        if not record:  # a blank line
            continue
        row = dict(zip(header, record))
        if not all(map(row.get, columns)):
            raise InputError(f"{path}, line {line}: no {', '.join(c for c in columns if not row.get(c))}; {what}")
        yield line, row


def _names(path: Path) -> Iterator[tuple[int, str]]:
    """The whitespace-separated names of a list file (NIH's splits), each with its line."""
    for number, text in enumerate(_lines(path), 1):
        for name in text.split():
            yield number, name


def _number(path: Path, line: int, column: str, text: str) -> float:
    """A box coordinate of ``path``: a finite number (NaN or infinity would reach the datalist and the box mask)."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(
            f"{path}, line {line}: {column} is {text!r}, not a number; a box is four pixel values."
        ) from None
    if not math.isfinite(value):
        raise InputError(
            f"{path}, line {line}: {column} is {text!r}, not a finite number; a box is four finite pixel values."
        )
    return value


class _Inside:
    """The one rule for every file a datalist lists: a relative path of plain names (no absolute path, ``..``,
    ``.`` or empty name) under the dataset folder ``root`` that stays inside it once links are followed;
    otherwise a table could list ``/etc/passwd`` or another study's folder as training data. Links within the
    folder are fine. Strings, not pathlib, and each folder's answer kept: MIMIC's 377,110 files cost one
    ``lstat`` each and one per folder, not a ``realpath`` each."""

    def __init__(self, root: Path):
        self.root = str(root)
        self.real = os.path.realpath(root)
        self.links_out: dict[str, str | None] = {self.root: None}  # folder -> the link on its way that leaves

    def label(self, where: str, *parts: str) -> str:
        """``root/parts``, or an error naming ``where`` (the table and line, or the folder) that listed it."""
        relative = "/".join(parts)
        names = relative.split("/")  # an absolute part makes an empty name
        if "" in names or "." in names or ".." in names or "\0" in relative:
            raise InputError(
                f"{where}: {relative!r} leaves the dataset folder {self.root} or is not a plain relative path "
                f"(absolute, or with '..', '.' or an empty name); {DAMAGED}."
            )
        path = f"{self.root}/{relative}"
        out = self._link_out(path)
        if out is not None:
            raise InputError(
                f"{where}: {out} links to {os.path.realpath(out)}, outside the dataset folder {self.root}; move the "
                "files into it (links within it are fine)."
            )
        return path

    def _leaves(self, path: str) -> bool:
        return os.path.islink(path) and os.path.commonpath([self.real, os.path.realpath(path)]) != self.real

    def _link_out(self, path: str) -> str | None:
        """The first link on the way from the root to ``path`` (lexically under it) that leads out of it."""
        chain, folder = [], path.rpartition("/")[0]
        while folder not in self.links_out:
            chain.append(folder)
            folder = folder.rpartition("/")[0]
        out = self.links_out[folder]
        for folder in reversed(chain):
            out = out or (folder if self._leaves(folder) else None)
            self.links_out[folder] = out
        return out or (path if self._leaves(path) else None)


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


NIH_COLUMNS = ("Image Index", "Patient ID")


def nih_cxr14(root: Path, fraction: float = VAL_FRACTION) -> dict[str, list[dict]]:
    """NIH ChestX-ray14 (112,120 PNGs): the official train+val / test lists; validation carved out of train+val by
    patient; the official boxes (1024 px originals) on the images that have them."""
    entries = sorted(root.glob("Data_Entry_2017*.csv"))
    if not entries:
        raise InputError(f"{root}: no Data_Entry_2017.csv here; {NIH_LAYOUT}")
    patients = {row["Image Index"]: row["Patient ID"] for _, row in _rows(entries[-1], NIH_COLUMNS, NIH_LAYOUT)}
    found = {
        p.name: p.relative_to(root).parts for folder in sorted(root.glob("images*")) for p in folder.rglob("*.png")
    }
    boxes = defaultdict(list)
    table = root / "BBox_List_2017.csv"
    if table.is_file():
        for line, record in _records(table):  # its header names the box "Bbox [x,y,w,h]": columns by position
            if not record or record[0] == "Image Index":
                continue
            if len(record) < 6:
                fields = f"{len(record)} fields, a box row has 6 (name, label, x, y, w, h)"
                raise InputError(f"{table}, line {line}: {fields}; {NIH_LAYOUT}")
            x, y, w, h = (_number(table, line, k, v) for k, v in zip("xywh", record[2:6]))
            boxes[record[0]].append([x, y, x + w, y + h])
    inside, splits = _Inside(root), {}
    for key, listing in (("training", "train_val_list.txt"), ("test", "test_list.txt")):
        path = _need(root, listing, what=NIH_LAYOUT)
        splits[key] = [
            {"label": inside.label(f"{path}, line {line}", *found.get(n, ("images", n))),
             "patient_id": patients.get(n, n.split("_")[0]), "boxes": boxes[n]}
            for line, n in _names(path)
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
    inside, splits = _Inside(root), {}
    for key, table in (("training", "train.csv"), ("validation", "valid.csv"), ("test", "test.csv")):
        if key == "test" and not (root / table).is_file():
            continue
        items, path = [], _need(root, table, what=CHEXPERT_LAYOUT)
        for line, row in _rows(path, ("Path",), CHEXPERT_LAYOUT):
            view = row.get("Frontal/Lateral") or ("Lateral" if "lateral" in Path(row["Path"]).name else "Frontal")
            if view != "Frontal":  # test.csv has no view column: its file names say it
                continue
            parts = PurePosixPath(row["Path"]).parts
            start = next((i for i, p in enumerate(parts) if p in ("train", "valid", "test")), None)
            if start is None or start + 1 >= len(parts):
                raise InputError(
                    f"{path}, line {line}: path {row['Path']!r} is not <set>/patientNNNNN/...; {CHEXPERT_LAYOUT}"
                )
            label = inside.label(f"{path}, line {line}", *parts[start:])
            items.append({"label": label, "patient_id": parts[start + 1], "boxes": []})
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

    meta = _rows(table("mimic-cxr-2.0.0-metadata"), ("dicom_id",), MIMIC_LAYOUT, optional=("ViewPosition",))
    frontal = {row["dicom_id"] for _, row in meta if row.get("ViewPosition") in ("PA", "AP")}
    keys = {"train": "training", "validate": "validation", "test": "test"}
    splits: dict[str, list[dict]] = {k: [] for k in keys.values()}
    inside, split = _Inside(root), table("mimic-cxr-2.0.0-split")
    for line, row in _rows(split, ("dicom_id", "study_id", "subject_id", "split"), MIMIC_LAYOUT):
        if row["dicom_id"] not in frontal or row["split"] not in keys:
            continue
        subject = row["subject_id"]
        parts = ("files", f"p{subject[:2]}", f"p{subject}", f"s{row['study_id']}", f"{row['dicom_id']}.jpg")
        label = inside.label(f"{split}, line {line}", *parts)
        splits[keys[row["split"]]].append({"label": label, "patient_id": subject, "boxes": []})
    return splits


VINDR_LAYOUT = (
    "expected VinDr-CXR as distributed: train/ and test/ of IMAGE_ID.dicom, annotations/annotations_train.csv and "
    "annotations/annotations_test.csv (image_id, class_name, x_min, y_min, x_max, y_max)."
)


VINDR_BOX = ("x_min", "y_min", "x_max", "y_max")


def vindr_cxr(root: Path, fraction: float = VAL_FRACTION) -> dict[str, list[dict]]:
    """VinDr-CXR (18,000 DICOMs): ``train/`` (validation carved out by image: the set names no patients, each
    image is its own study) and ``test/``; the radiologists' boxes of every finding, in the image's pixels."""
    inside, splits = _Inside(root), {}
    for key, folder in (("training", "train"), ("test", "test")):
        boxes = defaultdict(list)
        table = _need(root, "annotations", f"annotations_{folder}.csv", what=VINDR_LAYOUT)
        for line, row in _rows(table, ("image_id",), VINDR_LAYOUT, optional=VINDR_BOX):
            values = [row.get(k, "") for k in VINDR_BOX]
            if any(v.strip() for v in values):  # "No finding" rows have no box
                boxes[row["image_id"]].append([_number(table, line, k, v) for k, v in zip(VINDR_BOX, values)])
        images = sorted(_need(root, folder, what=VINDR_LAYOUT).glob("*.dicom"))
        splits[key] = [
            {"label": inside.label(str(root / folder), folder, p.name), "patient_id": p.stem,
             "boxes": boxes[p.stem]}
            for p in images
        ]  # fmt: skip
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
