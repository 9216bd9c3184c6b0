"""Chest CT slices for in-plane SR (``data/ct.py``): HU kept exactly through the slice files, each slice's
geometry, the patient split, and the datalist the train config reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import needs_data

from monai_sr_bundle.cli import main
from monai_sr_bundle.data.ct import CT_SPLIT, CT_WINDOW, write_ct_datalist, write_slices
from monai_sr_bundle.data.datalist import load_datalist
from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.errors import InputError

CT = shared_data_dir() / "chest_ct"


def _volume(path: Path, hu: np.ndarray, spacing=(0.7, 0.7, 2.5), origin=(-100.0, -120.0, 40.0)) -> Path:
    """A NIfTI volume of ``hu`` given as (X, Y, Z)."""
    image = sitk.GetImageFromArray(hu.T.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def test_slices_keep_hu_inside_the_window_and_each_slice_position(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1500, 1500, size=(24, 20, 3))
    paths = write_slices(_volume(tmp_path / "v.nii.gz", hu), tmp_path / "out")
    assert [p.name for p in paths] == ["v_000.nii.gz", "v_001.nii.gz", "v_002.nii.gz"]
    lo, hi = CT_WINDOW
    for k, p in enumerate(paths):
        stored = sitk.ReadImage(str(p))
        assert stored.GetPixelID() == sitk.sitkInt16
        np.testing.assert_array_equal(sitk.GetArrayFromImage(stored)[0].T, np.clip(hu[..., k], lo, hi))
        image = read_image(p, intensity=CT_WINDOW)  # as the train config reads it: 2D, the slice's z kept
        assert image.shape == (1, 24, 20)
        np.testing.assert_allclose(image.affine[:3, 3].numpy(), [-100.0, -120.0, 40.0 + 2.5 * k])


def test_a_2d_image_is_refused(tmp_path):
    flat = _volume(tmp_path / "flat.nii.gz", np.zeros((8, 8, 1)))
    with pytest.raises(InputError, match="several slices"):
        write_slices(flat, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _fake_chest_ct(root: Path) -> Path:
    for k, sources in enumerate(CT_SPLIT.values()):
        for j, source in enumerate(sources):
            z = 2 + k + j
            hu = np.full((16, 16, z), -1000 + 100 * (k + j))
            if source.endswith(".nii.gz"):
                _volume(root / source, hu)
            else:  # a DICOM series folder in the real data: any volume the reader takes stands in
                _volume(root / source / "series.nii.gz", hu)
    return root


def test_datalist_has_every_patient_in_one_split_and_the_train_config_reads_it(tmp_path, monkeypatch):
    monkeypatch.setattr("monai_sr_bundle.data.ct.read_image", _read_series_or_file)
    target = write_ct_datalist(tmp_path / "out", _fake_chest_ct(tmp_path / "chest_ct"))
    doc = json.loads(target.read_text())
    assert doc["window_hu"] == list(CT_WINDOW)
    patients = {key: {d["patient"] for d in doc[key]} for key in CT_SPLIT}
    for a in CT_SPLIT:
        for b in CT_SPLIT:
            assert a == b or not patients[a] & patients[b]
    train = load_datalist(target, "training")
    assert len(train) == 2 + 3 and all(Path(d["label"]).is_file() and d["boxes"] == [] for d in train)
    assert len(load_datalist(target, "validation")) == 3 and len(load_datalist(target, "test")) == 4 + 5


def _read_series_or_file(path, intensity):
    path = Path(path)
    return read_image(path / "series.nii.gz" if path.is_dir() else path, intensity=intensity)


def test_a_missing_source_is_named(tmp_path, capsys):
    assert main(["ct-slices", "-o", str(tmp_path / "out"), "--data-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nothing" / CT_SPLIT["training"][0]) in err
    assert not (tmp_path / "out").exists()


def test_a_missing_test_source_writes_no_training_slices(tmp_path):
    root = _fake_chest_ct(tmp_path / "chest_ct")
    (root / CT_SPLIT["test"][0]).unlink()
    with pytest.raises(InputError, match="source not found"):
        write_ct_datalist(tmp_path / "out", root)
    assert not (tmp_path / "out").exists()


@needs_data(CT / "volumes")
def test_real_sources_exist_and_a_dicom_series_slices_exactly(tmp_path):
    assert all((CT / s).exists() for sources in CT_SPLIT.values() for s in sources)
    series = CT / "dcmqi_ct3slice"
    paths = write_slices(series, tmp_path)
    volume = read_image(series, intensity=CT_WINDOW)
    assert len(paths) == volume.shape[-1] == 3
    for k, p in enumerate(paths):
        np.testing.assert_allclose(read_image(p, intensity=CT_WINDOW).numpy()[0], volume.numpy()[0, ..., k], atol=1e-6)
