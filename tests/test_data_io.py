"""Readers and writers on the real shared data (CXR DICOM, chest CT series, NIH PNGs) and on synthetic files.

The shared data lives at ``$MONAI_SR_DATA`` (default ``../shared/data`` beside the repository); tests that
need it are skipped, saying so, when it is absent.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from conftest import make_dicom, png_declaring
from conftest import needs_data as _needs
from PIL import Image, ImageFile

from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.data.readers import LoadSRImaged, image_format, image_shape, read_image
from monai_sr_bundle.data.writers import SaveSRImaged, output_path_for, write_image
from monai_sr_bundle.errors import InputError

pydicom = pytest.importorskip("pydicom")

DATA = shared_data_dir()
CXR_DIR, CT_DIR, NIH_DIR = DATA / "cxr_dicom", DATA / "chest_ct", DATA / "nih_cxr14" / "images_512"
needs_cxr, needs_ct, needs_nih = _needs(CXR_DIR), _needs(CT_DIR), _needs(NIH_DIR)

J2K = "pydicom-data_RG1_J2KI_CR_chest.dcm"  # JPEG 2000 lossy, 15-bit, MONOCHROME1, 1955 rows x 1841 columns
DWV = "dwv_gdcm-CR-MONO1-10-chest.dcm"  # uncompressed, 10-bit, MONOCHROME1, 440 x 440
SIIM_GLOB = "torchxrayvision_SIIM_CR_chest_*.dcm"  # JPEG baseline, 8-bit, MONOCHROME2, 1024 x 1024


def _cxr_path(name: str) -> str:
    return glob.glob(str(CXR_DIR / name))[0]


@pytest.fixture(scope="module")
def cxr_images():
    """The three CXR DICOMs, read once (the JPEG 2000 decode is the slow part)."""
    return {name: read_image(_cxr_path(name)) for name in (J2K, DWV, SIIM_GLOB)}


@pytest.fixture(scope="module")
def nih_template():
    """Mean of 20 NIH PNGs at 64x64: how an upright, MONOCHROME2 frontal CXR looks."""
    files = sorted(NIH_DIR.glob("*.png"))[:40:2]
    return np.mean([_small(read_image(f)[0].numpy()) for f in files], axis=0)


def _small(a: np.ndarray) -> np.ndarray:
    return F.interpolate(torch.as_tensor(a, dtype=torch.float32)[None, None], size=(64, 64), mode="area")[0, 0].numpy()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


# --------------------------------------------------------------------------------------------- CXR DICOM


@needs_cxr
@pytest.mark.parametrize(
    "name, rows, cols, mono1", [(J2K, 1955, 1841, True), (DWV, 440, 440, True), (SIIM_GLOB, 1024, 1024, False)]
)
def test_cxr_dicom_loads(cxr_images, name, rows, cols, mono1):
    img = cxr_images[name]
    assert tuple(img.shape) == (1, cols, rows)  # first axis = image columns (x)
    assert img.dtype == torch.float32 and float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert float(img.max()) == 1.0 and float(img.min()) == 0.0  # minmax: the data range spans [0, 1]
    meta = img.meta
    assert meta["source_format"] == "dicom" and meta["monochrome1"] is mono1 and meta["modality"] == "CR"
    assert meta["filename_or_obj"] == _cxr_path(name)
    lo, hi = meta["intensity_range"]
    assert lo < hi
    if mono1:
        # stored value = pivot - displayed value: check against the raw pixels at one point
        raw = pydicom.dcmread(_cxr_path(name)).pixel_array.astype(np.float64)
        displayed = float(img[0, 100, 200]) * (hi - lo) + lo
        assert meta["monochrome1_pivot"] - displayed == pytest.approx(raw[200, 100], abs=1e-2 * (hi - lo))
    assert tuple(img.affine.shape) == (4, 4) and abs(float(torch.det(img.affine))) > 0  # never singular


@needs_cxr
@needs_nih
@pytest.mark.parametrize("name", [J2K, DWV, SIIM_GLOB])
def test_cxr_dicom_looks_right(cxr_images, nih_template, name):
    """Polarity and orientation: bright spine/mediastinum, dark lungs, upright and not transposed like the NIH PNGs."""
    a = cxr_images[name][0].numpy()
    X, Y = a.shape
    ys = slice(int(0.3 * Y), int(0.6 * Y))
    centre = a[int(0.45 * X) : int(0.55 * X), ys].mean()
    lungs = np.concatenate(
        [a[int(0.2 * X) : int(0.35 * X), ys].ravel(), a[int(0.65 * X) : int(0.8 * X), ys].ravel()]
    ).mean()
    abdomen = a[int(0.3 * X) : int(0.7 * X), int(0.88 * Y) : int(0.97 * Y)].mean()
    assert centre > lungs + 0.15, (centre, lungs)  # MONOCHROME1 inverted: dense = bright
    assert abdomen > lungs + 0.15, (abdomen, lungs)  # soft tissue below the diaphragm at the bottom
    s = _small(a)
    as_read = _corr(s, nih_template)
    assert as_read > 0.5
    for wrong in (s[:, ::-1], s.T, s[::-1, ::-1], 1.0 - s):  # upside-down, transposed, rotated, inverted
        assert _corr(wrong, nih_template) < as_read - 0.3


@needs_cxr
def test_cxr_dicom_pixel_spacing_in_affine(cxr_images, tmp_path):
    siim = cxr_images[SIIM_GLOB]
    assert np.allclose(np.diag(siim.affine.numpy())[:2], 0.168)
    # The JPEG 2000 sample stores PixelSpacing 0\0: fall back to 1 mm rather than a singular affine.
    assert np.allclose(np.diag(cxr_images[J2K].affine.numpy())[:3], 1.0)
    # Axis order: DICOM PixelSpacing is (row spacing = along y, column spacing = along x).
    px = np.arange(6 * 4, dtype=np.uint16).reshape(6, 4)  # 6 rows, 4 columns
    f = make_dicom(tmp_path / "aniso.dcm", px, pixel_spacing=[0.2, 0.3], modality="CR")
    img = read_image(f)
    assert tuple(img.shape) == (1, 4, 6)
    assert img.affine[0, 0].item() == pytest.approx(0.3) and img.affine[1, 1].item() == pytest.approx(0.2)
    assert float(img[0, 3, 1]) == pytest.approx(px[1, 3] / px.max())  # img[x, y] == pixels[row y, column x]
    g = make_dicom(tmp_path / "imager.dcm", px, imager_pixel_spacing=[0.15, 0.25], modality="DX")
    assert np.allclose(np.diag(read_image(g).affine.numpy())[:2], [0.25, 0.15])


# ------------------------------------------------------------------------------------ synthetic DICOM


@pytest.mark.parametrize("dtype, bits", [(np.uint8, 8), (np.uint16, 12), (np.uint16, 16), (np.int16, 16)])
def test_dicom_bit_depth_and_rescale(tmp_path, dtype, bits):
    info = np.iinfo(dtype)
    top = min(info.max, 2**bits - 1) if info.min == 0 else 2 ** (bits - 1) - 1
    bottom = 0 if info.min == 0 else -(2 ** (bits - 1))
    px = np.linspace(bottom, top, 12 * 10).round().astype(dtype).reshape(12, 10)
    f = make_dicom(tmp_path / f"b{bits}.dcm", px, bits_stored=bits, slope=2, intercept=-1024)
    img = read_image(f)
    hu = px.astype(np.float64) * 2 - 1024
    lo, hi = img.meta["intensity_range"]
    assert (lo, hi) == (hu.min(), hu.max())
    back = img[0].numpy().astype(np.float64).T * (hi - lo) + lo  # (X, Y) -> rows, then to modality units
    np.testing.assert_allclose(back, hu, atol=1e-6 * (hi - lo) + 1e-3)
    # a fixed (lo, hi) in modality units maps and clips instead
    fixed = read_image(f, intensity=(-1000.0, 1000.0))
    assert fixed.meta["intensity_range"] == (-1000.0, 1000.0)
    np.testing.assert_allclose(fixed[0].numpy().T, np.clip((hu + 1000) / 2000, 0, 1), atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    px = np.arange(20, dtype=np.uint16).reshape(4, 5) * 50
    img = read_image(make_dicom(tmp_path / "m1.dcm", px, bits_stored=10, photometric="MONOCHROME1", modality="CR"))
    assert img.meta["monochrome1"] is True
    np.testing.assert_allclose(img[0].numpy().T, 1.0 - px / px.max(), atol=1e-6)  # brightest stored = darkest shown
    lo, hi = img.meta["intensity_range"]
    shown = img[0].numpy().T * (hi - lo) + lo
    np.testing.assert_allclose(img.meta["monochrome1_pivot"] - shown, px, atol=1e-3)


def test_pydicom_ct_small_demo_file():
    path = pydicom.data.get_testdata_file("CT_small.dcm")
    img = read_image(path)
    assert tuple(img.shape) == (1, 128, 128) and img.meta["modality"] == "CT"
    lo, hi = img.meta["intensity_range"]
    assert -1100 < lo < -500 and 500 < hi < 3000  # Hounsfield units after RescaleIntercept -1024
    assert np.allclose(np.diag(img.affine.numpy())[:2], 0.661468)
    assert np.allclose(img.affine[:3, 3].numpy(), [-158.135803, -179.035797, -75.699997])


# ---------------------------------------------------------------------------------------- CT series

CT_SERIES = [
    ("cip_ct64_dicom", (64, 64, 79), (4.171872, 4.171872, 4.0)),
    ("totalsegmentator_example_ct_dicom", (512, 512, 20), (0.9765625, 0.9765625, 2.0)),
    ("dcmqi_ct3slice", (512, 512, 3), (0.810547, 0.810547, 1.0)),
    ("lungmask_testdata", (512, 512, 2), (0.625, 0.625, 1.0)),
]


@needs_ct
@pytest.mark.parametrize("folder, shape, spacing", CT_SERIES)
def test_ct_series_loads_as_volume(folder, shape, spacing):
    path = CT_DIR / folder
    img = read_image(path)
    assert tuple(img.shape) == (1, *shape) and image_format(path) == "dicom"
    sp = np.linalg.norm(img.affine.numpy()[:3, :3], axis=0)
    np.testing.assert_allclose(sp, spacing, rtol=0.01)
    lo, hi = img.meta["intensity_range"]
    assert lo <= -1000 and 300 < hi < 4000  # HU: air and bone
    # slices are ordered by position along the slice normal, and the origin is the first slice
    files = img.meta["dicom_files"]
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z) and len(set(z)) == len(z)
    assert img.affine[2, 3].item() == pytest.approx(z[0])


@needs_ct
def test_ct_series_order_comes_from_positions_not_names(tmp_path):
    src = CT_DIR / "dcmqi_ct3slice"  # 01, 02, 03 run from head to feet: name order is the reverse of z order
    names = {"01.dcm": "b.dcm", "02.dcm": "c.dcm", "03.dcm": "a.dcm"}
    for old, new in names.items():
        shutil.copy(src / old, tmp_path / new)
    (tmp_path / "README.txt").write_text("exports often carry a readme")
    vol = read_image(tmp_path)
    ref = read_image(src)
    torch.testing.assert_close(vol.as_tensor(), ref.as_tensor())
    lowest = pydicom.dcmread(src / "03.dcm")  # z = -128.69: the first slice
    hu = lowest.pixel_array.astype(np.float64) * float(lowest.RescaleSlope) + float(lowest.RescaleIntercept)
    lo, hi = vol.meta["intensity_range"]
    np.testing.assert_allclose(vol[0, :, :, 0].numpy().T * (hi - lo) + lo, hu, atol=1e-6 * (hi - lo) + 1e-3)


# ---------------------------------------------------------------------------------------------- PNG


@needs_nih
def test_nih_png_is_exact_k_over_255():
    f = sorted(NIH_DIR.glob("*.png"))[0]
    img = read_image(f)
    px = np.asarray(Image.open(f))
    assert tuple(img.shape) == (1, px.shape[1], px.shape[0])
    assert torch.equal(img[0].as_tensor(), torch.from_numpy(px.T.astype(np.float32) / np.float32(255.0)))
    assert img.meta["intensity_range"] == (0.0, 255.0) and img.meta["source_format"] == "png"


def test_png_8bit_every_level_exact(tmp_path):
    px = np.arange(256, dtype=np.uint8).reshape(16, 16)[:, :12]  # non-square: 16 rows, 12 columns
    Image.fromarray(px).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert tuple(img.shape) == (1, 12, 16)
    assert torch.equal(img[0].as_tensor(), torch.from_numpy(px.T.astype(np.float32) / 255.0))


@pytest.mark.parametrize("top", [60000, 200])  # also a dark 16-bit image whose values all fit in 8 bits
def test_png_16bit(tmp_path, top):
    px = np.linspace(0, top, 9 * 7).round().astype(np.uint16).reshape(9, 7)
    Image.fromarray(px).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.meta["intensity_range"] == (0.0, 65535.0)
    np.testing.assert_allclose(img[0].numpy().T, px / 65535.0, atol=1e-7)


def test_png_rgb_converts_with_warning(tmp_path):
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.warns(UserWarning, match="grayscale"):
        img = read_image(tmp_path / "c.png")
    assert tuple(img.shape) == (1, 6, 5)
    assert float(img[0, 0, 0]) == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-5)


def test_png_gray_stored_as_rgb_palette_or_alpha_is_exact_without_warning(tmp_path):
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb_gray.png")
    Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1), mode="LA").save(tmp_path / "la.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "pal.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("rgb_gray.png", "la.png", "pal.png"):
            img = read_image(tmp_path / name)
            assert torch.equal(img[0].as_tensor(), torch.from_numpy(gray.T.astype(np.float32) / 255.0)), name


# ----------------------------------------------------------------------------------- NIfTI/NRRD/MHA


def _oblique_direction() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, c, s], [0, -s, c]])
    return rz @ rx


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_itk_round_trip_geometry(tmp_path, ext):
    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 2000, size=(5, 6, 7)).astype(np.int16)  # (Z, Y, X) in SimpleITK order
    spacing, origin, direction = (0.7, 0.8, 2.5), (-10.0, 20.5, 30.25), _oblique_direction()
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.ravel().tolist())
    src = tmp_path / f"in{ext}"
    sitk.WriteImage(image, str(src))

    img = read_image(src)
    assert tuple(img.shape) == (1, 7, 6, 5) and img.meta["source_format"] == "itk"
    np.testing.assert_allclose(img.affine[:3, :3].numpy(), direction * np.array(spacing)[None, :], atol=1e-5)
    np.testing.assert_allclose(img.affine[:3, 3].numpy(), origin, atol=1e-4)
    assert float(img[0, 3, 2, 1]) == pytest.approx((vol[1, 2, 3] - vol.min()) / (vol.max() - vol.min()), abs=1e-6)

    out = write_image(img, tmp_path / "out" / f"sr{ext}")
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), origin, atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), direction.ravel(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), vol, atol=1e-6 * 3000 + 1e-3)


def test_itk_2d_round_trip(tmp_path):
    px = np.arange(12, dtype=np.float32).reshape(3, 4)
    image = sitk.GetImageFromArray(px)
    image.SetSpacing((0.5, 0.25))
    image.SetOrigin((3.0, -4.0))
    sitk.WriteImage(image, str(tmp_path / "p.nii"))
    img = read_image(tmp_path / "p.nii")
    assert tuple(img.shape) == (1, 4, 3)
    out = sitk.ReadImage(str(write_image(img, tmp_path / "q.nii")))
    assert out.GetDimension() == 2 and out.GetSpacing() == (0.5, 0.25) and out.GetOrigin() == (3.0, -4.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), px, atol=1e-5)


# ------------------------------------------------------------------------------------------- writers


def _only_files(folder) -> list[str]:
    return sorted(os.listdir(folder))  # includes hidden names, so a left-over temporary file shows


@needs_nih
def test_write_png_round_trip_exact_and_atomic(tmp_path):
    f = sorted(NIH_DIR.glob("*.png"))[1]
    img = read_image(f)
    out = write_image(img, tmp_path / "new" / "deep" / "x.png")  # parent folders are created
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(f)))
    assert _only_files(out.parent) == ["x.png"]
    assert torch.equal(read_image(out).as_tensor(), img.as_tensor())


def test_write_png_16bit_round_trip(tmp_path):
    px = np.linspace(0, 65535, 8 * 6).round().astype(np.uint16).reshape(8, 6)
    Image.fromarray(px).save(tmp_path / "in.png")
    out = write_image(read_image(tmp_path / "in.png"), tmp_path / "out.png")
    assert np.array_equal(np.asarray(Image.open(out)), px)


def test_write_png_from_modality_range_and_plain_tensor(tmp_path):
    img = read_image(make_dicom(tmp_path / "cr.dcm", np.arange(20, dtype=np.uint16).reshape(4, 5) * 100, modality="CR"))
    out = write_image(img, tmp_path / "cr.png")  # range (0, 1900) -> 16-bit, the modality values
    assert np.array_equal(np.asarray(Image.open(out)), np.arange(20).reshape(4, 5) * 100)
    plain = torch.linspace(0, 1, 6).reshape(1, 3, 2)  # no meta: 8-bit
    assert np.array_equal(
        np.asarray(Image.open(write_image(plain, tmp_path / "t.png"))), [[0, 102, 204], [51, 153, 255]]
    )


@needs_ct
def test_write_nifti_keeps_ct_geometry(tmp_path):
    src = CT_DIR / "cip_ct64_dicom"
    img = read_image(src)
    out = write_image(img, output_path_for(src, tmp_path, fmt="nifti"))
    assert out == tmp_path / "cip_ct64_dicom_sr.nii.gz" and _only_files(tmp_path) == [out.name]
    back = sitk.ReadImage(str(out))
    a = img.affine.numpy()
    np.testing.assert_allclose(back.GetSpacing(), np.linalg.norm(a[:3, :3], axis=0), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), a[:3, 3], atol=1e-4)
    np.testing.assert_allclose(
        np.reshape(back.GetDirection(), (3, 3)), a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0), atol=1e-6
    )
    again = read_image(out)
    torch.testing.assert_close(again.affine, img.affine, atol=1e-4, rtol=0)
    assert again.meta["intensity_range"] == pytest.approx(img.meta["intensity_range"])
    torch.testing.assert_close(again.as_tensor(), img.as_tensor(), atol=1e-6, rtol=0)


def test_write_single_ct_slice_keeps_3d_position(tmp_path):
    img = read_image(pydicom.data.get_testdata_file("CT_small.dcm"))
    back = sitk.ReadImage(str(write_image(img, tmp_path / "s.nii.gz")))
    assert back.GetSize() == (128, 128, 1)
    np.testing.assert_allclose(back.GetOrigin(), [-158.135803, -179.035797, -75.699997], atol=1e-4)


def test_write_refuses_to_overwrite_input(tmp_path):
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).save(tmp_path / "in.png")
    before = (tmp_path / "in.png").read_bytes()
    img = read_image(tmp_path / "in.png")
    (tmp_path / "sub").mkdir()
    for target in (tmp_path / "in.png", tmp_path / "sub" / ".." / "in.png"):
        with pytest.raises(InputError, match="overwrite") as e:
            write_image(img, target)
        assert str(target) in str(e.value)
    with pytest.raises(InputError, match="input"):
        output_path_for(tmp_path / "in.png", tmp_path, suffix="")
    assert (tmp_path / "in.png").read_bytes() == before


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "old.png")
    before = (tmp_path / "old.png").read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    img = torch.full((1, 4, 4), 0.5)
    with pytest.raises(InputError, match="disk full"):
        write_image(img, tmp_path / "old.png")
    assert _only_files(tmp_path) == ["old.png"] and (tmp_path / "old.png").read_bytes() == before


def test_write_bad_images_and_paths(tmp_path):
    with pytest.raises(InputError, match="NaN"):
        write_image(torch.tensor([[[0.1, float("nan")]]]), tmp_path / "n.png")
    with pytest.raises(InputError, match="2D"):
        write_image(torch.zeros(1, 4, 4, 3), tmp_path / "v.png")
    with pytest.raises(InputError, match="shape"):
        write_image(torch.zeros(2, 4, 4), tmp_path / "c.png")
    with pytest.raises(InputError, match="DICOM output"):
        write_image(torch.zeros(1, 4, 4), tmp_path / "d.dcm")
    with pytest.raises(InputError, match="unknown output type"):
        write_image(torch.zeros(1, 4, 4), tmp_path / "x.txt")
    assert _only_files(tmp_path) == []
    assert write_image(torch.zeros(1, 4, 4), tmp_path / "noext", fmt="nifti") == tmp_path / "noext.nii.gz"


def test_output_path_for_families(tmp_path):
    out = tmp_path / "out"
    assert output_path_for("a/img.png", out) == out / "img_sr.png"
    assert output_path_for("a/img.JPG", out) == out / "img_sr.png"
    assert output_path_for("a/vol.nii.gz", out) == out / "vol_sr.nii.gz"
    assert output_path_for("a/vol.mhd", out) == out / "vol_sr.mha"
    assert output_path_for("a/scan.dcm", out) == out / "scan_sr.dcm"
    assert output_path_for("a/scan.dcm", out, fmt="nifti") == out / "scan_sr.nii.gz"
    assert output_path_for("a/CT.1.2.840.5", out, source_format="dicom") == out / "CT.1.2.840.5_sr.dcm"
    assert output_path_for("a/img.png", out, "_x2", fmt="nifti") == out / "img_x2.nii.gz"
    (tmp_path / "series").mkdir()
    assert output_path_for(tmp_path / "series", out) == out / "series_sr"  # a derived series folder
    assert output_path_for(tmp_path / "series", out, fmt="dicom") == out / "series_sr"
    assert output_path_for(tmp_path / "series", out, fmt="nifti") == out / "series_sr.nii.gz"


def test_save_and_load_dict_transforms(tmp_path):
    Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5) * 10).save(tmp_path / "cxr.png")
    d = LoadSRImaged(keys="image")({"image": str(tmp_path / "cxr.png")})
    d["pred"] = d["image"].clone()
    SaveSRImaged(keys="pred", output_dir=tmp_path / "sr", output_postfix="sr")(d)
    out = tmp_path / "sr" / "cxr_sr.png"
    assert d["pred"].meta["saved_to"] == str(out)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "cxr.png")))


# ----------------------------------------------------------------------------------------- bad input


def _raises_naming(path, **kwargs):
    with pytest.raises(InputError) as e:
        read_image(path, **kwargs)
    assert str(path) in str(e.value), str(e.value)
    return str(e.value)


def test_bad_input_missing_and_unsupported(tmp_path):
    assert "not found" in _raises_naming(tmp_path / "nope.png")
    (tmp_path / "notes.txt").write_text("hello")
    assert "unsupported" in _raises_naming(tmp_path / "notes.txt")


@needs_nih
def test_bad_input_truncated_png(tmp_path):
    data = sorted(NIH_DIR.glob("*.png"))[0].read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    _raises_naming(tmp_path / "half.png")


@needs_cxr
@pytest.mark.parametrize("name", [DWV, SIIM_GLOB])  # uncompressed and JPEG-encapsulated pixel data
def test_bad_input_truncated_dicom(tmp_path, name):
    data = Path(_cxr_path(name)).read_bytes()
    (tmp_path / "half.dcm").write_bytes(data[: len(data) // 2])
    _raises_naming(tmp_path / "half.dcm")


def test_bad_input_text_named_dcm_and_empty_folder(tmp_path):
    (tmp_path / "fake.dcm").write_text("this is not DICOM\n" * 20)
    _raises_naming(tmp_path / "fake.dcm")
    (tmp_path / "empty").mkdir()
    assert "no DICOM" in _raises_naming(tmp_path / "empty")


@needs_ct
def test_bad_input_series_folders(tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(CT_DIR / "dcmqi_ct3slice" / "01.dcm", two / "a.dcm")
    shutil.copy(CT_DIR / "lungmask_testdata" / "0.dcm", two / "b.dcm")
    assert "2 DICOM series" in _raises_naming(two)
    broken = tmp_path / "broken"
    shutil.copytree(CT_DIR / "dcmqi_ct3slice", broken)
    data = (broken / "02.dcm").read_bytes()
    (broken / "02.dcm").write_bytes(data[: len(data) // 2])
    msg = _raises_naming(broken)  # names the folder's broken file, which is inside the folder
    assert "02.dcm" in msg


@pytest.mark.parametrize("ext, bad", [(".nii.gz", np.nan), (".nii", np.inf), (".mha", np.nan)])
def test_bad_input_non_finite_volume(tmp_path, ext, bad):
    vol = np.zeros((3, 4, 5), np.float32)
    vol[1, 2, 3] = bad  # ITK's NIfTI reader turns these into 0 silently; the reader must still refuse
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / f"bad{ext}"))
    assert "NaN" in _raises_naming(tmp_path / f"bad{ext}")


# ------------------------------------------------------------------------------------------- header shape


def _pil(path, shape, dtype=np.uint8, channels=0) -> Path:
    """A random PIL raster of (X, Y) ``shape`` (``channels`` > 0: colour)."""
    rows_cols = shape[::-1] + ((channels,) if channels else ())
    Image.fromarray(np.random.default_rng(0).integers(0, 200, rows_cols).astype(dtype)).save(path)
    return Path(path)


def _itk(path, shape) -> Path:
    """A random int16 NIfTI/NRRD/MHA of (X, Y[, Z]) ``shape``."""
    arr = np.random.default_rng(0).integers(-1000, 1000, shape[::-1]).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return Path(path)


def _dicom_folder(d) -> Path:
    """Three 6-row x 4-column CT slices, with what exports carry beside them and read_image leaves out: a readme,
    a structured report and a hidden macOS ``._`` file."""
    d.mkdir()
    for i in range(3):
        make_dicom(d / f"s{i}.dcm", np.full((6, 4), i, np.uint16), position=[0, 0, 2.0 * i], instance=i + 1)
    (d / "README.txt").write_text("exported slices")
    shutil.copy(pydicom.data.get_testdata_file("test-SR.dcm"), d / "report.dcm")
    (d / "._s0.dcm").write_bytes(b"\0\5\26\7 AppleDouble resource fork")
    return d


# case -> (builder(tmp_path) -> the file or folder, the shape read_image gives)
SHAPE_CASES = {
    "png_8bit": (lambda d: _pil(d / "g.png", (40, 30)), (40, 30)),
    "png_16bit": (lambda d: _pil(d / "g16.png", (40, 30), np.uint16), (40, 30)),
    "jpeg_rgb": (lambda d: _pil(d / "c.jpg", (40, 30), channels=3), (40, 30)),
    "jpeg_named_png": (lambda d: _pil(d / "c.jpg", (40, 30)).rename(d / "jpeg_inside.png"), (40, 30)),
    "bmp": (lambda d: _pil(d / "b.bmp", (40, 30)), (40, 30)),
    "tiff_16bit": (lambda d: _pil(d / "t.tif", (40, 30), np.uint16), (40, 30)),
    "dicom_ct_small": (lambda d: pydicom.data.get_testdata_file("CT_small.dcm"), (128, 128)),
    "dicom_rgb": (lambda d: pydicom.data.get_testdata_file("SC_rgb_small_odd.dcm"), (3, 3)),
    "dicom_series": (lambda d: _dicom_folder(d / "series"), (4, 6, 3)),
    "nifti_2d": (lambda d: _itk(d / "p.nii", (40, 30)), (40, 30)),
    "nifti_3d": (lambda d: _itk(d / "v.nii.gz", (40, 30, 5)), (40, 30, 5)),
    "nifti_one_slice": (lambda d: _itk(d / "s.nii.gz", (40, 30, 1)), (40, 30)),
    "nrrd_3d": (lambda d: _itk(d / "v.nrrd", (40, 30, 5)), (40, 30, 5)),
    "mha_3d": (lambda d: _itk(d / "v.mha", (40, 30, 5)), (40, 30, 5)),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_image_shape_matches_read_image(tmp_path, case):
    build, shape = SHAPE_CASES[case]
    path = build(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # colour images are converted to grayscale with a warning
        assert image_shape(path) == tuple(read_image(path).shape[1:]) == shape


@needs_cxr
def test_image_shape_of_cxr_dicom_matches_the_pixels(cxr_images):
    for name, image in cxr_images.items():  # JPEG 2000, uncompressed and JPEG baseline pixel data
        assert image_shape(_cxr_path(name)) == tuple(image.shape[1:]), name


@needs_ct
@pytest.mark.parametrize("folder, shape, spacing", CT_SERIES[-2:])
def test_image_shape_of_a_ct_series_matches(folder, shape, spacing):
    assert image_shape(CT_DIR / folder) == shape


def _bmp_header(path, width: int, height: int) -> Path:
    """A 24-bit BMP header that declares ``width`` x ``height`` pixels and holds none."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    Path(path).write_bytes(b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info)
    return Path(path)


@pytest.mark.parametrize(
    "name, size",
    [("a.png", (3000, 3000)), ("b.png", (30000, 30000)), ("c.png", (30000, 20000)), ("d.bmp", (30000, 30000))],
)
def test_image_shape_reads_a_huge_header_without_decoding(tmp_path, monkeypatch, name, size):
    """A file of a few hundred bytes that declares up to 900 million pixels: the shape comes back at once, and
    nothing is decoded, also where PIL's decompression-bomb check makes read_image refuse the file."""
    path = (png_declaring if name.endswith(".png") else _bmp_header)(tmp_path / name, *size)
    assert path.stat().st_size < 1000
    with monkeypatch.context() as m:
        m.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("image_shape decoded pixels"))
        started = time.monotonic()
        assert image_shape(path) == size
        assert time.monotonic() - started < 1
    if size[0] * size[1] > 2 * Image.MAX_IMAGE_PIXELS:
        assert "decoded safely" in _raises_naming(path)


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cut(path, n: int) -> Path:
    """``path`` cut to its first ``n`` bytes."""
    return _file(Path(path), Path(path).read_bytes()[:n])


# case -> builder(tmp_path) -> a file or folder that both image_shape and read_image refuse
NOT_AN_IMAGE = {
    "missing": lambda d: d / "missing.png",
    "text_file": lambda d: _file(d / "notes.txt", b"hello"),
    "text_named_png": lambda d: _file(d / "notes.png", b"not pixels"),
    "text_named_dcm": lambda d: _file(d / "fake.dcm", b"this is not DICOM\n" * 20),
    "garbage_nifti": lambda d: _file(d / "fake.nii.gz", b"\x1f\x8b garbage"),
    "png_cut_in_header": lambda d: _cut(_pil(d / "g.png", (40, 30)), 20),
    "dicom_cut_in_header": lambda d: _cut(
        shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), d / "ct.dcm"), 300
    ),
    "nifti_cut_in_header": lambda d: _cut(_itk(d / "v.nii", (40, 30, 5)), 100),
    "dicom_structured_report": lambda d: pydicom.data.get_testdata_file("test-SR.dcm"),
    "dicom_multi_frame": lambda d: make_dicom(d / "mf.dcm", np.zeros((12, 4), np.uint16), Rows=6, NumberOfFrames=2),
    "empty_folder": lambda d: (d / "empty").mkdir() or d / "empty",
    "series_of_two_sizes": lambda d: (
        make_dicom(_dicom_folder(d / "two") / "big.dcm", np.zeros((8, 4), np.uint16)).parent
    ),
}


@pytest.mark.parametrize("case", list(NOT_AN_IMAGE))
def test_image_shape_refuses_what_read_image_refuses(tmp_path, case):
    path = NOT_AN_IMAGE[case](tmp_path)
    with pytest.raises(InputError, match=re.escape(f"{path}: ")):
        image_shape(path)
    _raises_naming(path)


@pytest.mark.parametrize("orientation, turn", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_a_jpeg_is_read_as_its_exif_orientation_shows_it(tmp_path, orientation, turn):
    """Issue 71, finding 11: a camera or phone JPEG stores its pixels as the sensor read them and says in its
    EXIF Orientation tag how to turn them (6: 90 degrees clockwise); viewers show it turned, and so is it read,
    by read_image and image_shape alike (``turn``: np.rot90's quarter turns, counter-clockwise)."""
    stored = np.random.default_rng(0).integers(0, 256, (40, 64), dtype=np.uint8)  # 64 wide, 40 high
    stored[:8, :8] = 255  # a bright corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = orientation  # the Orientation tag
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    with Image.open(path) as img:
        assert img.getexif()[0x0112] == orientation
        decoded = np.asarray(img)  # as stored, JPEG-rounded
    shown = np.rot90(decoded, turn)  # (height, width) as a viewer shows it
    image = read_image(path)
    assert image.shape == (1, *shown.shape[::-1]) == (1, *image_shape(path))
    assert np.array_equal(image[0].numpy().T, shown / np.float32(255))
