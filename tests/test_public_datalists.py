"""Datalists of the public chest X-ray sets (``monai-sr datalist``), built from miniature trees that copy each set's
distributed layout with real images of the shared data renamed into place (the sets themselves are not here)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA, needs_data
from PIL import Image
from test_bundle import _ok, run_config, train_files

from monai_sr_bundle.cli import main
from monai_sr_bundle.data.datalist import load_datalist
from monai_sr_bundle.data.public import build_datalist, held_out
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.errors import InputError

NIH = DATA / "nih_cxr14" / "images_512"
CR = DATA / "cxr_dicom"
pytestmark = needs_data(DATA / "nih_cxr14")


def _pngs(count: int) -> list[Path]:
    return sorted(NIH.glob("*.png"))[:count]


def _jpeg(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as im:
        im.convert("L").save(target, quality=90)


def nih_tree(root: Path) -> Path:
    """NIH ChestX-ray14 as the NIH box unpacks: images_001/images/ and images_002/images/, the data-entry table
    (its real header, brackets and all), the official lists, the box table; one listed image not downloaded."""
    names = [p.name for p in _pngs(8)]
    for i, name in enumerate(names[:-1]):
        folder = root / f"images_00{1 + i % 2}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(NIH / name, folder / name)
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    header += "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
    rows = "".join(f"{n},No Finding,0,{int(n[:8])},50,M,PA,2500,2048,0.143,0.143,\n" for n in names)
    (root / "Data_Entry_2017_v2020.csv").write_text(header + rows)
    (root / "train_val_list.txt").write_text("\n".join(names[:6]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[6:]) + "\n")
    (root / "BBox_List_2017.csv").write_text(
        f"Image Index,Finding Label,Bbox [x,y,w,h],,,\n{names[6]},Mass,10,20,30,40\n"
    )
    return root


def chexpert_tree(root: Path) -> Path:
    """CheXpert-v1.0-small: train/, valid/ and test/ of patientNNNNN/studyN/viewN_<view>.jpg, train.csv and
    valid.csv whose paths start with the download's own folder name, test.csv without the view column (as the
    later test release has it); a lateral view in train and in test."""
    pngs = _pngs(6)
    head = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding\n"
    train = [(f"train/patient0000{i // 2 + 1}/study1/view{i % 2 + 1}_frontal.jpg", "Frontal") for i in range(4)]
    train.append(("train/patient00001/study1/view3_lateral.jpg", "Lateral"))
    valid = [("valid/patient64541/study1/view1_frontal.jpg", "Frontal")]
    test = ["test/patient64741/study1/view1_frontal.jpg", "test/patient64741/study1/view2_lateral.jpg"]
    for path, png in zip([p for p, _ in train + valid] + test, pngs + pngs[:2]):
        _jpeg(png, root / path)
    for table, rows in (("train.csv", train), ("valid.csv", valid)):
        text = "".join(f"{root.name}/{p},Male,60,{view},PA,1.0\n" for p, view in rows)
        (root / table).write_text(head + text)
    (root / "test.csv").write_text("Path,No Finding\n" + "".join(f"{p},1.0\n" for p in test))  # no view column
    return root


def mimic_tree(root: Path) -> Path:
    """MIMIC-CXR-JPG 2.0.0: files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg and the gzipped split and metadata tables;
    one lateral view (LL)."""
    records = [  # dicom_id, subject, study, split, view
        ("02aa804e-bde0afdd", "10000032", "50414267", "train", "PA"),
        ("174413ec-4ec4c1f7", "10000032", "50414267", "train", "LL"),
        ("2a2277a9-b0ded155", "10000764", "57375967", "train", "AP"),
        ("68b5c4b1-227d0485", "10000898", "50771383", "validate", "PA"),
        ("fffabebf-74fd3a1f", "19999733", "57132437", "test", "PA"),
    ]
    for (dicom_id, subject, study, _, _), png in zip(records, _pngs(5)):
        _jpeg(png, root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg")
    split = "dicom_id,study_id,subject_id,split\n" + "".join(f"{d},{st},{su},{sp}\n" for d, su, st, sp, _ in records)
    meta = "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
    meta += "".join(f"{d},{su},{st},CHEST (PA AND LAT),{v},3056,2544\n" for d, su, st, _, v in records)
    (root / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(gzip.compress(split.encode()))
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(gzip.compress(meta.encode()))
    return root


def vindr_tree(root: Path) -> Path:
    """VinDr-CXR 1.0.0: train/ and test/ of IMAGE_ID.dicom (the shared CR DICOMs renamed) and the annotation
    tables, three radiologists per training image, "No finding" rows without a box."""
    crs = sorted(CR.glob("*.dcm"))
    ids = ["000434271f63a053c4128a0ba6352c7f", "00053190460d56c53cc3e57321387478", "0005e8e3701dfb1dd93d53e2ff537b6e"]
    for folder, image_id, source in (("train", ids[0], crs[0]), ("train", ids[1], crs[1]), ("test", ids[2], crs[2])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / folder / f"{image_id}.dicom")
    (root / "annotations").mkdir()
    head = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
    train = f"{ids[0]},R8,Nodule/Mass,100.5,120,180,200\n{ids[0]},R9,Nodule/Mass,98,118,183,205\n"
    train += f"{ids[0]},R10,No finding,,,,\n{ids[1]},R8,No finding,,,,\n"
    (root / "annotations" / "annotations_train.csv").write_text(head + train)
    (root / "annotations" / "annotations_test.csv").write_text(
        "image_id,class_name,x_min,y_min,x_max,y_max\n" + f"{ids[2]},Aortic enlargement,10,10,50,60\n"
    )
    return root


TREES = {"nih_cxr14": nih_tree, "chexpert": chexpert_tree, "mimic_cxr_jpg": mimic_tree, "vindr_cxr": vindr_tree}


def _build(tmp_path: Path, dataset: str, fraction: float = 0.5) -> dict:
    folder = tmp_path / ("CheXpert-v1.0-small" if dataset == "chexpert" else dataset)
    folder.mkdir()
    return build_datalist(dataset, TREES[dataset](folder), fraction)


def test_nih_official_lists_patient_split_boxes_and_a_missing_download(tmp_path):
    datalist = _build(tmp_path, "nih_cxr14")
    names = [p.name for p in _pngs(8)]
    train, val, test = (datalist[k] for k in ("training", "validation", "test"))
    assert sorted(Path(d["label"]).name for d in train + val) == names[:6]  # from images_001 and images_002
    assert [Path(d["label"]).name for d in test] == [names[6]]  # names[7] is listed but was not downloaded
    assert datalist["missing"] == {"test": [str(tmp_path / "nih_cxr14" / "images" / names[7])]}
    assert test[0]["boxes"] == [[10.0, 20.0, 40.0, 60.0]]
    assert {d["patient_id"] for d in train}.isdisjoint({d["patient_id"] for d in val})
    assert all(held_out(d["patient_id"], 0.5) for d in val) and val and train


def test_chexpert_frontal_views_and_its_own_validation_set(tmp_path):
    datalist = _build(tmp_path, "chexpert")
    root = tmp_path / "CheXpert-v1.0-small"
    assert [d["label"] for d in datalist["training"]] == [
        str(root / f"train/patient0000{i // 2 + 1}/study1/view{i % 2 + 1}_frontal.jpg") for i in range(4)
    ]  # the lateral view is not listed
    assert [d["patient_id"] for d in datalist["validation"]] == ["patient64541"]
    assert [d["label"] for d in datalist["test"]] == [str(root / "test/patient64741/study1/view1_frontal.jpg")]


def test_mimic_official_split_and_frontal_views(tmp_path):
    datalist = _build(tmp_path, "mimic_cxr_jpg")
    ids = {k: [Path(d["label"]).stem for d in datalist[k]] for k in ("training", "validation", "test")}
    assert ids == {
        "training": ["02aa804e-bde0afdd", "2a2277a9-b0ded155"],
        "validation": ["68b5c4b1-227d0485"],
        "test": ["fffabebf-74fd3a1f"],
    }
    assert datalist["training"][0]["label"].endswith("files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg")


def test_vindr_dicoms_with_every_radiologists_boxes(tmp_path):
    datalist = _build(tmp_path, "vindr_cxr", fraction=0.0)
    train = {d["patient_id"]: d["boxes"] for d in datalist["training"]}
    assert train == {
        "000434271f63a053c4128a0ba6352c7f": [[100.5, 120.0, 180.0, 200.0], [98.0, 118.0, 183.0, 205.0]],
        "00053190460d56c53cc3e57321387478": [],
    }
    assert datalist["validation"] == [] and datalist["test"][0]["boxes"] == [[10.0, 10.0, 50.0, 60.0]]


@pytest.mark.parametrize("dataset", sorted(TREES))
def test_every_listed_image_reads_as_training_reads_it(tmp_path, dataset):
    datalist = _build(tmp_path, dataset, fraction=0.0)
    for key in ("training", "validation", "test"):
        for item in datalist.get(key, []):
            image = read_image(item["label"])
            assert image.ndim == 3 and image.shape[0] == 1 and 0 <= image.min() < image.max() <= 1


@pytest.mark.slow
def test_the_cli_writes_a_datalist_the_train_config_trains_on(tmp_path, capsys):
    """VinDr's DICOMs through ``monai-sr datalist`` and one epoch of the train config on its file."""
    vindr_tree(tmp_path / "vindr")
    assert main(["datalist", "vindr_cxr", str(tmp_path / "vindr"), "-o", str(tmp_path / "v.json")]) == 0
    assert "training 1, validation 1, test 1 images" in capsys.readouterr().out  # the hash holds one image out
    assert len(load_datalist(tmp_path / "v.json", "training")) == 1
    args = ("--datalist_file", tmp_path / "v.json", "--max_epochs", 1, "--patch_size", 32, "--batch_size", 2)
    _ok(
        run_config(
            train_files("srcnn"), "srcnn", *args, "--run_dir", tmp_path / "run", "--ckpt_path", tmp_path / "w.pt"
        )
    )
    assert (tmp_path / "w.pt").is_file()


@pytest.mark.parametrize("dataset", sorted(TREES))
def test_a_folder_of_another_layout_is_one_sentence_naming_what_was_expected(tmp_path, dataset):
    other = "vindr_cxr" if dataset != "vindr_cxr" else "nih_cxr14"
    folder = tmp_path / "other"
    folder.mkdir()
    TREES[other](folder)
    with pytest.raises(InputError, match=r"expected .* as distributed"):
        build_datalist(dataset, folder)


def test_a_datalist_entry_whose_image_is_gone_is_skipped_counted_and_named(tmp_path, caplog):
    datalist = _build(tmp_path, "mimic_cxr_jpg")
    gone = Path(datalist["training"][0]["label"])
    gone.unlink()
    (tmp_path / "d.json").write_text(json.dumps(datalist))
    assert [d["label"] for d in load_datalist(tmp_path / "d.json", "training")] == [datalist["training"][1]["label"]]
    assert f"1 training item(s) skipped, their image is missing: {gone}" in caplog.text
    Path(datalist["training"][1]["label"]).unlink()
    with pytest.raises(InputError, match="none of the 'training' images exists"):
        load_datalist(tmp_path / "d.json", "training")


def test_bad_requests_are_one_sentence_and_write_nothing(tmp_path, capsys):
    with pytest.raises(InputError, match="unknown dataset 'padchest'"):
        build_datalist("padchest", tmp_path)
    with pytest.raises(InputError, match="validation fraction"):
        build_datalist("nih_cxr14", tmp_path, 1.5)
    with pytest.raises(InputError, match="no such folder"):
        build_datalist("nih_cxr14", tmp_path / "absent")
    assert main(["datalist", "nih_cxr14", str(tmp_path), "-o", str(tmp_path / "out.json")]) != 0
    assert "no Data_Entry_2017.csv here" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
