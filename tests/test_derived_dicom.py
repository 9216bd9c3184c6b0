"""Derived DICOM output: real CR/CT inputs to a derived series that dciodvfy (dicom3tools) accepts, with the
study kept, geometry scaled, pixels in the input's units; bad sources and targets refused, nothing partial."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import DATA, make_dicom, needs_data

from monai_sr_bundle import methods
from monai_sr_bundle.batch import default_input, run_inference
from monai_sr_bundle.cli import main
from monai_sr_bundle.data import derived_dicom
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.data.writers import write_image
from monai_sr_bundle.errors import InputError

CXR = DATA / "cxr_dicom"
CT = DATA / "chest_ct"
SCALE = 2  # bicubic x2 keeps the 1955x1841 radiograph quick; x4 VDSR of it is benchmarks/full_size.py
#: bicubic interpolation through the one entry point (no weights: quick)
BICUBIC = methods.get("bicubic", SCALE).predictor()


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for one file; a machine without dicom3tools fails the test, saying how to get it."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy not found: install the Debian package dicom3tools (make system-tools, as root)")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _files(out: Path) -> list[Path]:
    return [out] if out.is_file() else sorted(out.iterdir())


def _sources(img) -> list[Path]:
    return [Path(f) for f in img.meta.get("dicom_files") or [img.meta["filename_or_obj"]]]


def _derive(src: Path, out_dir: Path, method: str = "bicubic"):
    img = read_image(src)
    sr = BICUBIC(img)
    with warnings.catch_warnings():  # the sources' own invalid values are named in a warning, not asserted here
        warnings.simplefilter("ignore")
        out = write_image(sr, out_dir / (src.stem + "_sr"), "dicom", method=method)
    return img, sr, out


REAL = [
    ("cxr_dicom", "dwv_gdcm-CR-MONO1-10-chest.dcm"),  # CR, 10-bit, MONOCHROME1, legacy DA/TM values
    ("cxr_dicom", "pydicom-data_RG1_J2KI_CR_chest.dcm"),  # CR, 15-bit MONOCHROME1, lossy JPEG 2000, zero spacing
    ("cxr_dicom", "torchxrayvision_SIIM_CR_chest_*.dcm"),  # Secondary Capture CR, 8-bit JPEG baseline
    ("chest_ct", "totalsegmentator_example_ct_dicom"),  # CT series, 20 slices, lossless JPEG 2000, blank UIDs
    ("chest_ct", "dcmqi_ct3slice"),  # CT series, 3 slices, signed, rescale intercept
]


@needs_data(CXR)
@pytest.mark.parametrize("folder,name", REAL, ids=[n.split("_")[0] + "-" + n[-12:] for _, n in REAL])
@pytest.mark.slow
def test_real_inputs_give_valid_derived_series(tmp_path, folder, name):
    src = next((DATA / folder).glob(name))
    img, sr, out = _derive(src, tmp_path)
    files, sources = _files(out), _sources(img)
    assert len(files) == len(sources) and [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp left
    for f in files:
        assert dciodvfy_errors(f) == [], f.name
    first_src = pydicom.dcmread(sources[0], stop_before_pixels=True)
    derived = [pydicom.dcmread(f) for f in files]
    ds = derived[0]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (ds.PatientID, ds.PatientName) == (first_src.get("PatientID", ""), first_src.get("PatientName", ""))
    if str(first_src.get("StudyInstanceUID", "")):
        assert ds.StudyInstanceUID == first_src.StudyInstanceUID
    assert ds.SeriesInstanceUID != first_src.get("SeriesInstanceUID")
    assert len({d.SeriesInstanceUID for d in derived}) == 1
    assert len({d.SOPInstanceUID for d in derived}) == len(derived)
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "NO"
    assert "AI-generated" in ds.ImageComments and "AI-generated" in ds.SeriesDescription
    assert f"x{SCALE} bicubic" in ds.SeriesDescription and ds.ManufacturerModelName == "monai-sr bicubic"
    assert ds.DerivationCodeSequence[0].CodeValue == "113085"
    assert not [e for e in ds if e.tag.is_private]
    for d, s in zip(derived, sources):  # each SR instance names its own source instance
        source = pydicom.dcmread(s, stop_before_pixels=True)
        uid = str(source.get("SOPInstanceUID", "")) or source.file_meta.MediaStorageSOPInstanceUID
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == uid
        assert (d.Rows, d.Columns) == (source.Rows * SCALE, source.Columns * SCALE)
        assert d.PhotometricInterpretation in (source.PhotometricInterpretation, "MONOCHROME2")
        if source.PhotometricInterpretation == "MONOCHROME1":
            assert d.PhotometricInterpretation == "MONOCHROME1"
        assert (d.BitsStored, d.PixelRepresentation) == (source.BitsStored, source.PixelRepresentation)
        for key in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):  # same units, same window
            assert d.get(key) == source.get(key), key
        # independent pixel check: SR blocks averaged back to the source grid match the source's stored values
        stored = d.pixel_array.astype(np.float64)
        back = stored.reshape(source.Rows, SCALE, source.Columns, SCALE).mean(axis=(1, 3))
        original = pydicom.dcmread(s).pixel_array.astype(np.float64)
        span = max(float(original.max() - original.min()), 1.0)
        assert np.corrcoef(back.ravel(), original.ravel())[0, 1] > 0.98
        assert np.abs(back - original).mean() < 0.02 * span
    # geometry read back by our reader and by SimpleITK: spacing / scale, origin by the half-pixel rule
    again = read_image(out)
    spacing = [first_src.get(k) for k in ("PixelSpacing", "ImagerPixelSpacing")]
    if any(v and min(float(x) for x in v) > 0 for v in spacing):  # else none is written (no 1 mm invented)
        np.testing.assert_allclose(again.affine.numpy()[:3, :3], sr.affine.numpy()[:3, :3], atol=1e-6)
    else:
        assert "PixelSpacing" not in ds and "ImagerPixelSpacing" not in ds
    if "ImagePositionPatient" in first_src:
        np.testing.assert_allclose(again.affine.numpy()[:3, 3], sr.affine.numpy()[:3, 3], atol=1e-3)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in files])
        itk = reader.Execute() if len(files) > 1 else sitk.ReadImage(str(files[0]))
        np.testing.assert_allclose(itk.GetOrigin(), sr.affine.numpy()[:3, 3], atol=1e-3)
        np.testing.assert_allclose(itk.GetSpacing()[:2], np.linalg.norm(sr.affine.numpy()[:3, :2], axis=0), atol=1e-6)


@needs_data(CT)
def test_ct_hounsfield_units_and_positions(tmp_path):
    src = CT / "dcmqi_ct3slice"
    img, sr, out = _derive(src, tmp_path)
    lo, hi = img.meta["intensity_range"]
    expected_hu = sr.numpy()[0] * (hi - lo) + lo  # (X, Y, Z)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in _files(out)])
    hu = sitk.GetArrayFromImage(reader.Execute()).astype(np.float64).T  # (Z, Y, X) -> (X, Y, Z)
    assert np.abs(hu - expected_hu).max() <= 0.5 + 1e-6  # rounding to integer stored values, slope 1
    positions = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in _files(out)]
    sources = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in _sources(img)]
    assert positions == pytest.approx(sources, abs=1e-3)  # slices stay where they were
    thickness = {pydicom.dcmread(f).SliceThickness for f in _files(out)}
    assert thickness == {pydicom.dcmread(_sources(img)[0]).SliceThickness}


def _code(value: str, scheme: str, meaning: str):
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _dx(path: Path) -> Path:
    """A digital X-ray (DX, for presentation), 12-bit, with what its IOD requires: valid itself (checked)."""
    pixels = (np.random.default_rng(0).random((64, 48)) * 4000).astype(np.uint16)
    header = dict(
        PresentationIntentType="FOR PRESENTATION",
        ImageLaterality="U",
        PatientOrientation=["P", "F"],
        BodyPartExamined="CHEST",
        ViewPosition="PA",
        AnatomicRegionSequence=[_code("51185008", "SCT", "Chest")],
        ViewCodeSequence=[_code("399348003", "SCT", "postero-anterior")],
        DetectorType="DIRECT",
        PositionerType="NONE",
        AcquisitionContextSequence=[],
        PixelIntensityRelationship="LOG",
        PixelIntensityRelationshipSign=1,
        RescaleType="US",
        PresentationLUTShape="IDENTITY",
        ImageType=["ORIGINAL", "PRIMARY"],
        BurnedInAnnotation="NO",
        LossyImageCompression="00",
        WindowCenter=2000,
        WindowWidth=4000,
        KVP=120,
        PatientName="Test^DX",
        PatientID="DX1",
        StudyDate="20260101",
        StudyTime="120000",
        ContentDate="20260101",
        ContentTime="120000",
        Manufacturer="ACME",
        SeriesNumber=1,
        **{k: "" for k in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID", "AccessionNumber")},
        **{k: "" for k in ("AcquisitionDeviceProcessingDescription", "PatientPosition", "DetectorID")},
        **{k: "" for k in ("DetectorManufacturerName", "DateOfLastDetectorCalibration")},
    )
    make_dicom(path, pixels, bits_stored=12, imager_pixel_spacing=(0.15, 0.15), slope=1.0, intercept=0.0, modality="DX")
    ds = pydicom.dcmread(path)
    for key, value in header.items():
        setattr(ds, key, value)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.save_as(path)
    return path


def test_dx_source_gives_a_valid_derived_dx(tmp_path):
    src = _dx(tmp_path / "dx.dcm")
    assert dciodvfy_errors(src) == []  # the source is valid, so the derived object's errors would be ours
    _, _, out = _derive(src, tmp_path / "out")
    assert dciodvfy_errors(out) == []
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" and ds.Modality == "DX"
    assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([0.15 / SCALE] * 2)
    assert (ds.BitsStored, ds.PresentationLUTShape, ds.Rows) == (12, "IDENTITY", 64 * SCALE)


def test_pydicom_ct_slice_round_trip(tmp_path):
    """The demo's default input (on every machine): a CT slice gives one valid derived instance."""
    src = Path(default_input())
    img = read_image(src)
    sr = BICUBIC(img)
    out = write_image(sr, tmp_path / "ct_sr", "dicom", method="bicubic")
    assert out == tmp_path / "ct_sr.dcm" and dciodvfy_errors(out) == []
    again = read_image(out)
    torch.testing.assert_close(again.affine, sr.affine, atol=1e-3, rtol=0)


# --------------------------------------------------------------------------------------------- bad input


def _series(folder: Path, n=3, **header) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        extra = {key: (value(k) if callable(value) else value) for key, value in header.items()}
        make_dicom(
            folder / f"s{k}.dcm",
            (rng.random((40, 36)) * 1000).astype(np.uint16),
            pixel_spacing=extra.pop("pixel_spacing", (0.5, 0.7)),
            position=[-10.0, -20.0, 2.0 * k],
            orientation=extra.pop("orientation", [1, 0, 0, 0, 1, 0]),
            instance=k + 1,
            **extra,
        )
    return folder


def _run(src, out, **kw):
    kw = {"allow_volume": True, "progress": False, **kw}
    return run_inference(src, BICUBIC, out, **kw)


def test_series_with_mixed_geometry_is_refused(tmp_path):
    tilted = _series(tmp_path / "tilted", orientation=lambda k: [1, 0, 0, 0, 1, 0] if k else [1, 0, 0, 0, 0.8, 0.6])
    with pytest.raises(InputError, match="oriented differently"):
        read_image(tilted)
    spaced = _series(tmp_path / "spaced", pixel_spacing=lambda k: (0.5, 0.7) if k else (0.6, 0.7))
    with pytest.raises(InputError, match="pixel spacing"):
        read_image(spaced)


def test_modality_lut_source_is_refused_and_nothing_written(tmp_path):
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor, lut.ModalityLUTType = [4096, 0, 16], "HU"
    lut.add_new(0x00283006, "US", list(range(4096)))  # LUT Data
    src = make_dicom(
        tmp_path / "lut.dcm", np.arange(40 * 36, dtype=np.uint16).reshape(40, 36), ModalityLUTSequence=[lut]
    )
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"lut\.dcm: the image maps its pixels through a Modality LUT"):
        _run(src, out)
    assert not out.exists() or list(out.iterdir()) == []
    _run(src, out, output_format="nifti")
    assert [p.name for p in out.iterdir()] == ["lut_sr.nii.gz"]


def test_dicom_output_needs_a_dicom_input(tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36), dtype=np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="DICOM output needs a DICOM input"):
        _run(tmp_path / "a.png", tmp_path / "out", output_format="dicom")


def test_failed_series_leaves_nothing_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    src = _series(tmp_path / "ct")
    out = tmp_path / "out"
    first = _run(src, out)
    assert [Path(p).name for p in first] == ["ct_sr"] and len(list((out / "ct_sr").iterdir())) == 3
    before = {f.name: f.read_bytes() for f in (out / "ct_sr").iterdir()}
    calls = []
    real_save = derived_dicom._save

    def failing(ds, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_save(ds, path)

    monkeypatch.setattr(derived_dicom, "_save", failing)
    with pytest.raises(InputError, match="No space left on device"):
        _run(src, out)
    assert sorted(p.name for p in out.iterdir()) == ["ct_sr"]  # no hidden temp folder left
    assert {f.name: f.read_bytes() for f in (out / "ct_sr").iterdir()} == before
    monkeypatch.setattr(derived_dicom, "_save", real_save)
    _run(src, out)  # overwriting a derived series replaces it whole
    assert {f.name for f in (out / "ct_sr").iterdir()} == set(before) and (
        {f.name: f.read_bytes() for f in (out / "ct_sr").iterdir()} != before
    )


def test_target_folder_with_other_files_is_not_replaced(tmp_path):
    src = _series(tmp_path / "ct")
    out = tmp_path / "out"
    (out / "ct_sr").mkdir(parents=True)
    (out / "ct_sr" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="ct_sr: already exists and was not written by monai-sr"):
        _run(src, out)
    assert [p.name for p in (out / "ct_sr").iterdir()] == ["notes.txt"]


def test_cli_writes_dicom_by_default_and_nifti_on_request(tmp_path):
    src = _series(tmp_path / "ct")
    assert (
        main(["sr", str(src), "-o", str(tmp_path / "a"), "-m", "bicubic", "--scale", str(SCALE), "--slice-by-slice"])
        == 0
    )
    files = sorted((tmp_path / "a" / "ct_sr").iterdir())
    assert len(files) == 3 and pydicom.dcmread(files[0]).ManufacturerModelName == "monai-sr bicubic"
    args = ["sr", str(src), "-o", str(tmp_path / "b"), "-m", "bicubic", "--scale", str(SCALE), "--slice-by-slice"]
    assert main([*args, "--output-format", "nifti"]) == 0
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["ct_sr.nii.gz"]


def test_method_name_recorded(tmp_path):
    method = methods.get("bicubic", SCALE, "cxr")
    src = _series(tmp_path / "ct", n=1)
    written = run_inference(src / "s0.dcm", method.predictor(), tmp_path / "out", progress=False)
    ds = pydicom.dcmread(written[0])
    assert ds.SeriesDescription.endswith(f"SR x{SCALE} {method.name} (AI-generated)")
    assert method.name in ds.DerivationDescription and ds.SoftwareVersions
