"""NIH ChestX-ray14 datalists: the fixed patient-level split and the official boxes, on the real shared data
and on a tiny synthetic folder of the same layout (so the logic is tested without the data); datalist files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_data
from PIL import Image

from monai_sr_bundle.data.datalist import load_datalist, nih_datalist
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.errors import InputError

NIH = shared_data_dir() / "nih_cxr14"
needs_nih = needs_data(NIH / "images_512")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ real data


@needs_nih
def test_real_split_sizes_and_paths():
    sizes = {split: len(nih_datalist(split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 577, "val": 76, "test": 116}
    everything = nih_datalist("all")
    assert len(everything) == 769
    item = everything[0]
    assert set(item) == {"label", "boxes", "findings", "labels", "patient_id"}
    assert Path(item["label"]).parent == NIH / "images_512" and Path(item["label"]).is_file()
    assert len({d["label"] for d in everything}) == 769


@needs_nih
def test_real_no_patient_in_two_splits():
    patients = {split: {d["patient_id"] for d in nih_datalist(split)} for split in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


@needs_nih
def test_real_boxes_scaled_to_512():
    boxes = _rows(NIH / "boxes.csv")
    by_image = {d["label"].rsplit("/", 1)[-1]: d for d in nih_datalist("all")}
    row = boxes[0]
    x, y, w, h = (float(row[k]) for k in ("x", "y", "w", "h"))
    item = by_image[row["image"]]
    expected = [x * 0.5, y * 0.5, (x + w) * 0.5, (y + h) * 0.5]
    assert item["boxes"][0] == pytest.approx(expected)
    assert item["findings"][0] == row["label"]
    # every box lies inside the 512 image, and the box count matches images.csv's n_boxes
    table = {r["image"]: r for r in _rows(NIH / "images.csv")}
    for name, d in by_image.items():
        assert len(d["boxes"]) == len(d["findings"]) == int(table[name]["n_boxes"])
        for x0, y0, x1, y1 in d["boxes"]:
            assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert sum(len(d["boxes"]) for d in by_image.values()) == len(boxes)


@needs_nih
def test_real_images_without_boxes_are_members():
    empty = [d for d in nih_datalist("all") if not d["boxes"]]
    assert len(empty) == 24  # patients 1-8
    assert all(d["boxes"] == [] and d["findings"] == [] for d in empty)
    assert {int(d["patient_id"]) for d in empty} <= set(range(1, 9))
    assert any(d["labels"] == ["No Finding"] for d in empty)


@needs_nih
def test_real_resolution_1024_subset_unscaled_boxes():
    full = nih_datalist("all", resolution=1024)
    assert len(full) == 40
    assert all(Path(d["label"]).parent == NIH / "images_1024" for d in full)
    raw = {}
    for r in _rows(NIH / "boxes.csv"):
        x, y, w, h = (float(r[k]) for k in ("x", "y", "w", "h"))
        raw.setdefault(r["image"], []).append([x, y, x + w, y + h])
    boxed = [d for d in full if d["boxes"]]
    assert boxed
    for d in boxed:
        np.testing.assert_allclose(d["boxes"], raw[Path(d["label"]).name], rtol=1e-12)
    split_of = {r["image"]: r["split"] for r in _rows(NIH / "images.csv")}
    for split in ("train", "val", "test"):
        n = sum(split_of[Path(d["label"]).name] == split for d in full)
        if n:
            assert len(nih_datalist(split, resolution=1024)) == n
        else:  # the 40-image subset need not cover every split: an empty selection is an error, not []
            with pytest.raises(InputError, match=f"no images in split '{split}' at resolution 1024"):
                nih_datalist(split, resolution=1024)


@needs_nih
def test_real_limit_keeps_file_order():
    first = nih_datalist("test", limit=5)
    assert len(first) == 5
    assert [d["label"] for d in first] == [d["label"] for d in nih_datalist("test")[:5]]


@needs_nih
def test_real_bad_split_and_resolution():
    with pytest.raises(InputError, match="'validation'"):
        nih_datalist("validation")
    with pytest.raises(InputError) as e:
        nih_datalist("train", resolution=256)
    assert str(NIH / "images_256") in str(e.value)


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError) as e:
        nih_datalist("train", data_dir=missing)
    assert str(missing / "images.csv") in str(e.value) and "MONAI_SR_DATA" in str(e.value)


# ------------------------------------------------------------------------------------ synthetic folder

IMAGES = [
    # image, patient, labels, split, has file at 512, has file at 1024
    ("p1_a.png", "1", "No Finding", "train", True, False),
    ("p1_b.png", "1", "Mass|Nodule", "train", True, True),
    ("p2_a.png", "2", "Effusion", "val", True, False),
    ("p3_a.png", "3", "Cardiomegaly", "test", True, True),
    ("p4_a.png", "4", "Atelectasis", "test", False, False),  # listed, but no file: skipped
]
BOXES = [
    ("p1_b.png", "Mass", 100.0, 200.0, 50.0, 60.0),
    ("p1_b.png", "Nodule", 10.0, 20.0, 30.0, 40.0),
    ("p3_a.png", "Cardiomegaly", 300.0, 400.0, 200.0, 100.0),
]


def _make_nih(root: Path, with_boxes: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "image",
                "patient_id",
                "labels",
                "age",
                "sex",
                "view",
                "original_size",
                "original_spacing_mm",
                "n_boxes",
                "split",
            ]
        )
        for name, pid, labels, split, _, _ in IMAGES:
            n = sum(b[0] == name for b in BOXES)
            w.writerow([name, pid, labels, 50, "F", "PA", "2048x2048", 0.143, n, split])
    if with_boxes:
        with open(root / "boxes.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "label", "x", "y", "w", "h"])
            w.writerows(BOXES)
    for res, col in ((512, 4), (1024, 5)):
        (root / f"images_{res}").mkdir(exist_ok=True)
        for row in IMAGES:
            if row[col]:
                Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / f"images_{res}" / row[0])
    return root


def test_synthetic_splits_and_fields(tmp_path):
    root = _make_nih(tmp_path / "nih_cxr14")
    train = nih_datalist("train", data_dir=root)
    assert [Path(d["label"]).name for d in train] == ["p1_a.png", "p1_b.png"]
    assert train[0]["label"] == str(root / "images_512" / "p1_a.png")
    assert train[0]["boxes"] == [] and train[0]["findings"] == [] and train[0]["labels"] == ["No Finding"]
    assert train[1]["labels"] == ["Mass", "Nodule"] and train[1]["patient_id"] == "1"
    assert train[1]["findings"] == ["Mass", "Nodule"]
    assert train[1]["boxes"] == [[50.0, 100.0, 75.0, 130.0], [5.0, 10.0, 20.0, 30.0]]  # (x0, y0, x1, y1) * 0.5
    assert [Path(d["label"]).name for d in nih_datalist("val", data_dir=str(root))] == ["p2_a.png"]
    test = nih_datalist("test", data_dir=root)
    assert [Path(d["label"]).name for d in test] == ["p3_a.png"]  # p4_a has no file
    assert len(nih_datalist("all", data_dir=root)) == 4


def test_synthetic_resolution_1024(tmp_path):
    root = _make_nih(tmp_path / "nih_cxr14")
    full = nih_datalist("all", data_dir=root, resolution=1024)
    assert [Path(d["label"]).name for d in full] == ["p1_b.png", "p3_a.png"]
    assert full[0]["boxes"] == [[100.0, 200.0, 150.0, 260.0], [10.0, 20.0, 40.0, 60.0]]
    assert full[1]["boxes"] == [[300.0, 400.0, 500.0, 500.0]]
    with pytest.raises(InputError, match="no images in split 'val' at resolution 1024"):
        nih_datalist("val", data_dir=root, resolution=1024)


def test_synthetic_limit(tmp_path):
    root = _make_nih(tmp_path / "nih_cxr14")
    assert [Path(d["label"]).name for d in nih_datalist("all", data_dir=root, limit=2)] == ["p1_a.png", "p1_b.png"]
    assert len(nih_datalist("all", data_dir=root, limit=100)) == 4


def test_synthetic_without_boxes_csv(tmp_path):
    root = _make_nih(tmp_path / "nih_cxr14", with_boxes=False)
    items = nih_datalist("all", data_dir=root)
    assert len(items) == 4 and all(d["boxes"] == [] and d["findings"] == [] for d in items)


def test_synthetic_errors_name_the_input(tmp_path):
    root = _make_nih(tmp_path / "nih_cxr14")
    with pytest.raises(InputError, match="unknown split 'Train'"):
        nih_datalist("Train", data_dir=root)
    with pytest.raises(InputError) as e:
        nih_datalist("train", data_dir=root, resolution=2048)
    assert str(root / "images_2048") in str(e.value)
    empty = _make_nih(tmp_path / "empty")
    for png in (empty / "images_512").iterdir():
        png.unlink()
    with pytest.raises(InputError) as e:
        nih_datalist("train", data_dir=empty)
    assert str(empty) in str(e.value) and "'train'" in str(e.value)


def test_default_location_follows_monai_sr_data(tmp_path, monkeypatch):
    _make_nih(tmp_path / "nih_cxr14")
    monkeypatch.setenv("MONAI_SR_DATA", str(tmp_path))
    assert [Path(d["label"]).name for d in nih_datalist("val")] == ["p2_a.png"]
    monkeypatch.setenv("MONAI_SR_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(InputError, match="elsewhere"):
        nih_datalist("val")


# ------------------------------------------------------------------------------------------ datalist files


def test_load_datalist_resolves_paths_and_defaults_boxes(tmp_path):
    absolute = tmp_path / "abs" / "b.png"
    absolute.parent.mkdir()
    for image in (tmp_path / "a.png", absolute):
        image.write_bytes(b"")
    (tmp_path / "list.json").write_text(
        '{"training": [{"label": "a.png", "boxes": [[1, 2, 3, 4]]}, {"label": "%s"}]}' % absolute
    )
    items = load_datalist(tmp_path / "list.json")
    assert items == [{"label": str(tmp_path / "a.png"), "boxes": [[1, 2, 3, 4]]}, {"label": str(absolute), "boxes": []}]
    assert load_datalist(tmp_path / "list.json", limit=1) == items[:1]


@pytest.mark.parametrize(
    "text, message",
    [(None, "not found"), ("{oops", "not a datalist"), ('{"validation": []}', "not a datalist"),
     ('{"training": []}', "'label' image path"), ('{"training": [{"image": "a.png"}]}', "'label' image path")],
)  # fmt: skip
def test_load_datalist_refuses_bad_files(tmp_path, text, message):
    path = tmp_path / "list.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_datalist(path)


def test_nih_resized_writes_images_boxes_and_a_datalist_that_train_reads(tmp_path):
    from monai_sr_bundle.cli import main as cli

    root = _make_nih(tmp_path / "nih_cxr14")
    assert cli(["nih-resize", "--size", "256", "-o", str(tmp_path / "out"), "--data-dir", str(root)]) == 0
    datalist = tmp_path / "out" / "datalist.json"
    training = load_datalist(datalist, "training")
    assert [Path(d["label"]).name for d in training] == ["p1_a.png", "p1_b.png"]
    assert Image.open(training[0]["label"]).size == (4, 4)  # the 8x8 stand-ins at half size
    assert training[1]["boxes"] == [[25.0, 50.0, 37.5, 65.0], [2.5, 5.0, 10.0, 15.0]]  # 512-px boxes * 0.5
    assert [Path(d["label"]).name for d in load_datalist(datalist, "test")] == ["p3_a.png"]
    assert cli(["nih-resize", "--size", "1024", "-o", str(tmp_path / "big"), "--data-dir", str(root)]) == 2
    assert not (tmp_path / "big").exists()
