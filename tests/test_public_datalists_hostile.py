"""``monai-sr datalist`` on hostile or damaged downloads (issue 56, finding 11): tables saved by Excel (a BOM),
without a column, with a box that is no number or not finite, with bytes that are not UTF-8, a gzip bomb, and
tables or links that name files outside the dataset folder. Each is one sentence naming the file (and line),
never a traceback, a 1 GiB read or a path outside the root in the datalist. The trees here are the sets'
layouts with empty image files: the builders only list images, they do not read them."""

from __future__ import annotations

import gzip
import json
import os
import resource
from pathlib import Path

import pytest

from monai_sr_bundle.cli import main
from monai_sr_bundle.data import public
from monai_sr_bundle.data.public import build_datalist
from monai_sr_bundle.errors import InputError

NIH_NAMES = ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png", "00000004_000.png"]
MIMIC = [  # dicom_id, subject, study, split, view
    ("02aa804e-bde0afdd", "10000032", "50414267", "train", "PA"),
    ("2a2277a9-b0ded155", "10000764", "57375967", "train", "AP"),
    ("68b5c4b1-227d0485", "10000898", "50771383", "validate", "PA"),
    ("fffabebf-74fd3a1f", "19999733", "57132437", "test", "PA"),
]
VINDR = ["000434271f63a053c4128a0ba6352c7f", "00053190460d56c53cc3e57321387478", "0005e8e3701dfb1dd93d53e2ff537b6e"]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def nih_tables() -> dict[str, bytes]:
    head = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
    return {
        "Data_Entry_2017_v2020.csv": (head + "".join(f"{n},No Finding,0,{int(n[:8])},50,M,PA\n" for n in NIH_NAMES)),
        "train_val_list.txt": "\n".join(NIH_NAMES[:4]) + "\n",
        "test_list.txt": NIH_NAMES[4] + "\n",
        "BBox_List_2017.csv": f"Image Index,Finding Label,Bbox [x,y,w,h],,,\n{NIH_NAMES[4]},Mass,10,20,30,40\n",
    }


def chexpert_tables() -> dict[str, bytes]:
    head = "Path,Sex,Age,Frontal/Lateral,AP/PA\n"
    row = "CheXpert-v1.0-small/{}/patient{}/study1/view1_frontal.jpg,Male,60,Frontal,PA\n"
    return {
        "train.csv": head + "".join(row.format("train", f"0000{i}") for i in (1, 2, 3)),
        "valid.csv": head + row.format("valid", "64541"),
    }


def mimic_tables() -> dict[str, bytes]:
    split = "dicom_id,study_id,subject_id,split\n" + "".join(f"{d},{st},{su},{sp}\n" for d, su, st, sp, _ in MIMIC)
    meta = "dicom_id,subject_id,study_id,ViewPosition\n" + "".join(f"{d},{su},{st},{v}\n" for d, su, st, _, v in MIMIC)
    return {"mimic-cxr-2.0.0-split.csv.gz": split, "mimic-cxr-2.0.0-metadata.csv.gz": meta}


def vindr_tables() -> dict[str, bytes]:
    head = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
    return {
        "annotations/annotations_train.csv": head
        + f"{VINDR[0]},R8,Nodule/Mass,100.5,120,180,200\n{VINDR[0]},R10,No finding,,,,\n{VINDR[1]},R8,No finding,,,,\n",
        "annotations/annotations_test.csv": head + f"{VINDR[2]},R8,Aortic enlargement,10,10,50,60\n",
    }


TABLES = {
    "nih_cxr14": nih_tables,
    "chexpert": chexpert_tables,
    "mimic_cxr_jpg": mimic_tables,
    "vindr_cxr": vindr_tables,
}


def _images(dataset: str, root: Path) -> None:
    if dataset == "nih_cxr14":
        for i, name in enumerate(NIH_NAMES):
            _touch(root / f"images_00{1 + i % 2}" / "images" / name)
    elif dataset == "chexpert":
        for i in (1, 2, 3):
            _touch(root / f"train/patient0000{i}/study1/view1_frontal.jpg")
        _touch(root / "valid/patient64541/study1/view1_frontal.jpg")
    elif dataset == "mimic_cxr_jpg":
        for d, su, st, _, _ in MIMIC:
            _touch(root / "files" / f"p{su[:2]}" / f"p{su}" / f"s{st}" / f"{d}.jpg")
    else:
        for folder, image_id in (("train", VINDR[0]), ("train", VINDR[1]), ("test", VINDR[2])):
            _touch(root / folder / f"{image_id}.dicom")


def _write(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _key(name: str) -> str:
    """A table's keyword for :func:`tree`: ``mimic-cxr-2.0.0-split.csv.gz`` -> ``mimic_cxr_2_0_0_split_csv_gz``."""
    return name.replace("/", "_").replace(".", "_").replace("-", "_")


def tree(tmp_path: Path, dataset: str, **changes) -> Path:
    """``dataset``'s layout under ``tmp_path``; ``changes`` (keyed by :func:`_key`) replace a table's text (str) or
    its bytes before any gzip (bytes)."""
    root = tmp_path / ("CheXpert-v1.0-small" if dataset == "chexpert" else dataset)
    _images(dataset, root)
    for name, text in TABLES[dataset]().items():
        _write(root / name, changes.pop(_key(name), text))
    assert not changes, f"no table {changes}"
    return root


def _relative(datalist: dict) -> dict:
    """``datalist`` with its labels relative to its root: two trees compare equal."""
    root = datalist["root"]
    text = json.dumps({k: v for k, v in datalist.items() if k != "root"})
    return json.loads(text.replace(root, "<root>"))


def _bom(tables: dict[str, str]) -> dict[str, bytes]:
    return {_key(k): b"\xef\xbb\xbf" + v.encode() for k, v in tables.items()}


@pytest.mark.parametrize("dataset", sorted(TABLES))
def test_tables_saved_with_a_bom_as_excel_saves_csv_read_as_without(tmp_path, dataset):
    plain = build_datalist(dataset, tree(tmp_path / "plain", dataset), 0.0)
    bom = build_datalist(dataset, tree(tmp_path / "bom", dataset, **_bom(TABLES[dataset]())), 0.0)
    assert _relative(bom) == _relative(plain)
    if dataset in ("nih_cxr14", "vindr_cxr"):
        assert any(d["boxes"] for d in bom["test"])


MISSING_COLUMN = [  # dataset, table key, the header line without the column, the column
    ("nih_cxr14", "Data_Entry_2017_v2020_csv", "Patient ID"),
    ("nih_cxr14", "Data_Entry_2017_v2020_csv", "Image Index"),
    ("chexpert", "train_csv", "Path"),
    ("mimic_cxr_jpg", "mimic_cxr_2_0_0_split_csv_gz", "subject_id"),
    ("mimic_cxr_jpg", "mimic_cxr_2_0_0_metadata_csv_gz", "dicom_id"),
    ("vindr_cxr", "annotations_annotations_train_csv", "x_max"),
]


@pytest.mark.parametrize(("dataset", "key", "column"), MISSING_COLUMN)
def test_a_table_without_a_column_says_which_is_missing_and_which_are_there(tmp_path, dataset, key, column):
    tables = {_key(k): v for k, v in TABLES[dataset]().items()}
    head, rest = tables[key].split("\n", 1)
    names = head.split(",")
    at = names.index(column)
    cut = "\n".join(",".join(f for i, f in enumerate(line.split(",")) if i != at) for line in [head, *rest.split("\n")])
    with pytest.raises(InputError, match=rf"no {column} column \(its columns: ") as raised:
        build_datalist(dataset, tree(tmp_path, dataset, **{key: cut}))
    assert names[at - 1 if at else 1] in str(raised.value)


NIH_BOX = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n{},Mass,{},{},{},{}\n"
VINDR_BOX = "image_id,class_name,x_min,y_min,x_max,y_max\n{},Aortic enlargement,{},{},{},{}\n"
BAD_NUMBERS = [  # dataset, table key, the table's text with a bad box, the column named
    ("nih_cxr14", "BBox_List_2017_csv", NIH_BOX.format(NIH_NAMES[4], "ten", 20, 30, 40), "x"),
    ("vindr_cxr", "annotations_annotations_test_csv", VINDR_BOX.format(VINDR[2], 10, "1O", 50, 60), "y_min"),
    ("vindr_cxr", "annotations_annotations_test_csv", VINDR_BOX.format(VINDR[2], 10, 10, "", 60), "x_max"),
]


@pytest.mark.parametrize(("dataset", "key", "text", "column"), BAD_NUMBERS)
def test_a_box_that_is_no_number_names_file_line_and_column(tmp_path, dataset, key, text, column):
    with pytest.raises(InputError, match=rf"line 2: {column} is '.*', not a number") as raised:
        build_datalist(dataset, tree(tmp_path, dataset, **{key: text}))
    assert Path(str(raised.value).split(",")[0]).name in ("BBox_List_2017.csv", "annotations_test.csv")


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e999"])
@pytest.mark.parametrize("dataset", ["nih_cxr14", "vindr_cxr"])
def test_a_box_that_is_not_finite_is_refused_never_written(tmp_path, dataset, value):
    if dataset == "nih_cxr14":
        text = {"BBox_List_2017_csv": NIH_BOX.format(NIH_NAMES[4], 10, 20, value, 40)}
    else:
        text = {"annotations_annotations_train_csv": VINDR_BOX.format(VINDR[0], 10, value, 50, 60)}
    root = tree(tmp_path, dataset, **text)
    with pytest.raises(InputError, match=rf"line 2: \w+ is '{value}', not a finite number"):
        build_datalist(dataset, root)


NOT_UTF8 = [  # dataset, table key, the line holding the bad byte
    ("nih_cxr14", "Data_Entry_2017_v2020_csv", 3),
    ("nih_cxr14", "train_val_list_txt", 2),
    ("nih_cxr14", "BBox_List_2017_csv", 2),
    ("chexpert", "valid_csv", 2),
    ("mimic_cxr_jpg", "mimic_cxr_2_0_0_split_csv_gz", 4),
    ("vindr_cxr", "annotations_annotations_train_csv", 3),
]


@pytest.mark.parametrize(("dataset", "key", "line"), NOT_UTF8)
def test_a_table_that_is_not_utf8_names_the_file_and_line(tmp_path, dataset, key, line):
    tables = {_key(k): v for k, v in TABLES[dataset]().items()}
    lines = tables[key].encode().split(b"\n")
    lines[line - 1] = lines[line - 1][:5] + b"\xff\xfe" + lines[line - 1][5:]  # Latin-1 bytes, as a mis-saved file
    with pytest.raises(InputError, match=rf"line {line} is not UTF-8"):
        build_datalist(dataset, tree(tmp_path, dataset, **{key: b"\n".join(lines)}))


def _bomb(path: Path, head: bytes, row: bytes, size: int) -> None:
    """A ``.gz`` of ``head`` then ``row`` repeated to ``size`` bytes, in a few kB: gzip members concatenate, so
    one compressed MiB of rows written again and again inflates to any size without being built."""
    chunk = row * max(1, 2**20 // len(row))
    member = gzip.compress(chunk, compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(size // len(chunk)):
            f.write(member)


def _refused_in_bounded_memory(root: Path, bound: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=rf"mimic-cxr-2.0.0-split.csv.gz: .*{bound}"):
        build_datalist("mimic_cxr_jpg", root)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # kB: far from 1 GiB


BOMBS = {  # a row repeated to 1 GiB, the bound it meets, that bound lowered so that the test is fast
    "short rows": (b"x,1,1,train\n", "more than 100,000 rows", {"MAX_TABLE_ROWS": 100_000}),
    "long rows": (b"x" * 50_000 + b",1,1,train\n", "more than 16,777,216 bytes", {"MAX_TABLE_BYTES": 2**24}),
    "one endless line": (b"x" * 3_000_000, "line 2 is longer than 65,536 bytes", {}),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_a_gzip_bomb_stops_at_a_bound_without_reading_it_into_memory(tmp_path, monkeypatch, case):
    """1 GiB from a few MB of ``.gz``: refused at the first bound met, never inflated whole (the old reader took
    45 s and gigabytes)."""
    row, bound, lowered = BOMBS[case]
    for name, value in lowered.items():
        monkeypatch.setattr(public, name, value)
    root = tree(tmp_path, "mimic_cxr_jpg")
    _bomb(root / "mimic-cxr-2.0.0-split.csv.gz", b"dicom_id,study_id,subject_id,split\n", row, 2**30)
    assert (root / "mimic-cxr-2.0.0-split.csv.gz").stat().st_size < 8 * 2**20
    _refused_in_bounded_memory(root, bound)


@pytest.mark.slow
def test_a_gzip_bomb_stops_at_the_real_row_bound(tmp_path):
    root = tree(tmp_path, "mimic_cxr_jpg")
    _bomb(root / "mimic-cxr-2.0.0-split.csv.gz", b"dicom_id,study_id,subject_id,split\n", b"x,1,1,train\n", 2**30)
    _refused_in_bounded_memory(root, f"more than {public.MAX_TABLE_ROWS:,} rows")


def test_the_row_and_byte_bounds_are_the_documented_ones(tmp_path, monkeypatch):
    assert public.MAX_TABLE_ROWS >= 5 * 377_110 and public.MAX_TABLE_BYTES >= 128 * 2**20  # MIMIC's metadata
    monkeypatch.setattr(public, "MAX_TABLE_ROWS", 3)
    with pytest.raises(InputError, match="more than 3 rows"):
        build_datalist("mimic_cxr_jpg", tree(tmp_path / "rows", "mimic_cxr_jpg"))
    monkeypatch.setattr(public, "MAX_TABLE_ROWS", 10)
    monkeypatch.setattr(public, "MAX_TABLE_BYTES", 100)
    with pytest.raises(InputError, match=r"train\.csv: .*more than 100 bytes"):
        build_datalist("chexpert", tree(tmp_path / "bytes", "chexpert"))


def test_a_long_line_a_cut_gzip_and_a_row_without_its_id_are_one_sentence(tmp_path):
    long = "Path\nCheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg\n" + "x" * 100_000 + "\n"
    with pytest.raises(InputError, match=r"train\.csv: line 3 is longer than 65,536 bytes"):
        build_datalist("chexpert", tree(tmp_path / "long", "chexpert", train_csv=long))
    root = tree(tmp_path / "cut", "mimic_cxr_jpg")
    table = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    table.write_bytes(table.read_bytes()[:-12])  # an interrupted download
    with pytest.raises(InputError, match=r"metadata\.csv\.gz: cannot be read \(.*\); the file is damaged"):
        build_datalist("mimic_cxr_jpg", root)
    entry = "Image Index,Patient ID\n00000001_000.png,1\n00000001_001.png,\n"
    with pytest.raises(InputError, match=r"Data_Entry_2017_v2020\.csv, line 3: no Patient ID; expected NIH"):
        build_datalist("nih_cxr14", tree(tmp_path / "id", "nih_cxr14", Data_Entry_2017_v2020_csv=entry))


ESCAPES = [  # dataset, table key, the table's text naming a file outside the root
    ("chexpert", "train_csv",
     "Path,Frontal/Lateral\nCheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Frontal\n"
     "CheXpert-v1.0-small/train/../../etc/passwd,Frontal\n"),
    ("chexpert", "train_csv", "Path,Frontal/Lateral\n/train/../../../../../../etc/passwd,Frontal\n"),
    ("nih_cxr14", "train_val_list_txt", f"{NIH_NAMES[0]}\n../../etc/passwd\n"),
    ("nih_cxr14", "train_val_list_txt", f"{NIH_NAMES[0]}\n/etc/passwd\n"),
    ("mimic_cxr_jpg", "mimic_cxr_2_0_0_split_csv_gz",
     f"dicom_id,study_id,subject_id,split\n../../../../../etc/passwd,{MIMIC[0][2]},{MIMIC[0][1]},train\n"),
    ("mimic_cxr_jpg", "mimic_cxr_2_0_0_split_csv_gz",
     f"dicom_id,study_id,subject_id,split\n/etc/passwd,{MIMIC[0][2]},{MIMIC[0][1]},train\n"),
]  # fmt: skip


@pytest.mark.parametrize(("dataset", "key", "text"), ESCAPES)
def test_a_table_naming_a_file_outside_the_root_is_refused(tmp_path, dataset, key, text):
    if dataset == "mimic_cxr_jpg":  # the metadata must call the smuggled id frontal
        dicom = text.split("\n")[1].split(",")[0]
        meta = f"dicom_id,ViewPosition\n{dicom},PA\n"
        root = tree(tmp_path, dataset, **{key: text, "mimic_cxr_2_0_0_metadata_csv_gz": meta})
    else:
        root = tree(tmp_path, dataset, **{key: text})
    with pytest.raises(InputError, match=r"line \d+: .*(leaves|is not inside) the dataset folder"):
        build_datalist(dataset, root)


@pytest.mark.parametrize(
    ("dataset", "link"),
    [("vindr_cxr", f"train/{VINDR[0]}.dicom"), ("nih_cxr14", "images_001"), ("chexpert", "train/patient00002")],
)
def test_a_link_out_of_the_root_is_refused(tmp_path, dataset, link):
    root = tree(tmp_path, dataset)
    outside = tmp_path / "outside"
    target = root / link
    if target.is_dir():
        os.rename(target, outside)
    else:
        outside.write_bytes(b"secret")
        target.unlink()
    target.symlink_to(outside, target_is_directory=outside.is_dir())
    with pytest.raises(InputError, match=r"links to .*outside.*, outside the dataset folder"):
        build_datalist(dataset, root)


def test_a_link_inside_the_root_is_listed(tmp_path):
    root = tree(tmp_path, "vindr_cxr")
    (root / "store").mkdir()
    os.rename(root / "train" / f"{VINDR[1]}.dicom", root / "store" / "b.dicom")
    (root / "train" / f"{VINDR[1]}.dicom").symlink_to(root / "store" / "b.dicom")
    datalist = build_datalist("vindr_cxr", root, 0.0)
    assert sorted(d["patient_id"] for d in datalist["training"]) == VINDR[:2]


CLI_CASES = {
    "not utf-8": ("chexpert", {"train_csv": b"Path\n\xff\xfe\n"}, "line 2 is not UTF-8"),
    "no column": ("mimic_cxr_jpg", {"mimic_cxr_2_0_0_split_csv_gz": "dicom_id,split\nx,train\n"}, "no study_id"),
    "escape": ("nih_cxr14", {"test_list_txt": "../../../etc/passwd\n"}, "leaves the dataset folder"),
    "not finite": (
        "vindr_cxr",
        {"annotations_annotations_test_csv": VINDR_BOX.format(VINDR[2], "nan", 0, 1, 1)},
        "not a finite number",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_the_cli_prints_one_sentence_exits_2_and_writes_nothing(tmp_path, capsys, case):
    dataset, changes, words = CLI_CASES[case]
    root = tree(tmp_path, dataset, **changes)
    assert main(["datalist", dataset, str(root), "-o", str(tmp_path / "out" / "d.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
