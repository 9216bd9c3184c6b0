"""The file pipeline: geometry through SR, run_inference (formats, bad inputs), expand_inputs. Tiles: test_tiling.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATA, make_dicom, needs_data
from monai.data import MetaTensor
from PIL import Image

from monai_sr_bundle import methods
from monai_sr_bundle.batch import run_inference
from monai_sr_bundle.cli import main
from monai_sr_bundle.data.readers import expand_inputs, read_image
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.inference import validate_input
from monai_sr_bundle.networks import Bicubic
from monai_sr_bundle.tiling import SRInferer

pydicom = pytest.importorskip("pydicom")

CT3 = DATA / "chest_ct" / "dcmqi_ct3slice"
SCALE = 4
#: bicubic interpolation through the one entry point (no weights: quick)
BICUBIC = methods.get("bicubic", SCALE).predictor()


# ------------------------------------------------------------------------------------------- helpers


def _png(path, size=(40, 36), seed=0, mode="L") -> Path:
    """A random 8-bit PNG of ``size`` = (width, height)."""
    a = (np.random.default_rng(seed).random(size[::-1]) * 255).astype(np.uint8)
    Image.fromarray(a, mode=mode).save(path)
    return Path(path)


def _nifti(path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    img = sitk.GetImageFromArray(arr)  # arr is (Z, Y, X) or (Y, X)
    img.SetSpacing(spacing[: arr.ndim])
    sitk.WriteImage(img, str(path))
    return Path(path)


def _dicom(
    path,
    pixels: np.ndarray,
    *,
    spacing=(0.5, 0.7),
    z: float = 0.0,
    instance: int = 1,
    series_uid="1.2.826.0.1.3680043.8.498.77",
) -> Path:
    """Minimal uncompressed CT slice; ``spacing`` = DICOM PixelSpacing (row, column)."""
    return make_dicom(
        path,
        pixels.astype(np.uint16),
        pixel_spacing=spacing,
        position=[-10.0, -20.0, z],
        orientation=[1, 0, 0, 0, 1, 0],
        series_uid=series_uid,
        instance=instance,
        SliceThickness=2.0,
    )


def _ct_series(folder, n=3, shape=(32, 36)) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(n):
        _dicom(folder / f"s{k}.dcm", (rng.random(shape) * 1000).astype(np.uint16), z=2.0 * k, instance=k + 1)
    return folder


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _snapshot(folder: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- geometry


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("ndim", [2, 3])
def test_geometry_follows_sr(ndim):
    """Spacing / scale in-plane (z kept), direction kept, origin moved by half an LR pixel minus half an HR
    pixel so the image's outer corners stay at the same physical place."""
    spacing = np.array([0.5, 0.7, 2.5])
    direction = _rotation(0.3)
    origin = np.array([10.0, -20.0, 35.0])
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = origin
    shape = (1, 32, 36) if ndim == 2 else (1, 32, 36, 3)
    img = MetaTensor(torch.rand(shape), affine=torch.as_tensor(affine), meta={"filename_or_obj": "x.nii.gz"})
    out = BICUBIC(img)
    assert isinstance(out, MetaTensor)
    assert tuple(out.shape[1:3]) == (32 * SCALE, 36 * SCALE) and out.shape[3:] == img.shape[3:]
    a = out.affine.numpy()
    out_spacing = np.linalg.norm(a[:3, :3], axis=0)
    np.testing.assert_allclose(out_spacing, [0.5 / SCALE, 0.7 / SCALE, 2.5], rtol=1e-12)
    np.testing.assert_allclose(a[:3, :3] / out_spacing[None, :], direction, atol=1e-12)
    half = np.array([0.5 - 0.5 / SCALE, 0.5 - 0.5 / SCALE, 0.0])  # in LR pixels, along each axis
    np.testing.assert_allclose(a[:3, 3], origin - direction @ (spacing * half), atol=1e-12)
    # corners: LR voxel corner (-0.5, -0.5) and (X - 0.5, Y - 0.5) map to the same points as the HR ones
    for lr_idx, hr_idx in (([-0.5, -0.5], [-0.5, -0.5]), ([31.5, 35.5], [32 * SCALE - 0.5, 36 * SCALE - 0.5])):
        lr_pt = affine @ np.array([*lr_idx, 0.0, 1.0])
        hr_pt = a @ np.array([*hr_idx, 0.0, 1.0])
        np.testing.assert_allclose(hr_pt, lr_pt, atol=1e-9)
    assert out.meta["filename_or_obj"] == "x.nii.gz"


@pytest.mark.gpu
def test_the_gpu_gives_the_cpus_sr():
    """One predictor per device: on CUDA (the bundle picks it itself) the SR is the CPU's to float rounding."""
    method = methods.get("srcnn", SCALE)
    lr = torch.rand(1, 40, 36)
    cpu, gpu = method.predictor()(lr), method.predictor(device="cuda")(lr)
    assert gpu.device.type == "cpu" and (cpu - gpu).abs().max().item() < 1e-4


def test_plain_tensor_stays_plain():
    out = SRInferer(SCALE)(torch.rand(1, 1, 32, 32), Bicubic(SCALE))
    assert type(out) is torch.Tensor and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


# ------------------------------------------------------------------------------------------- run_inference


def test_png_in_png_out(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", (40, 36))
    _png(src / "b.png", (33, 48), seed=1)
    before = _snapshot(src)
    written = run_inference(src, BICUBIC, tmp_path / "out", progress=False)
    assert sorted(Path(p).name for p in written) == ["a_sr.png", "b_sr.png"]
    with Image.open(tmp_path / "out" / "a_sr.png") as im:
        assert im.size == (160, 144) and im.mode == "L"
    with Image.open(tmp_path / "out" / "b_sr.png") as im:
        assert im.size == (132, 192)
    assert _snapshot(src) == before  # inputs untouched: same bytes, same mtime


def test_dicom_in_nifti_out(tmp_path):
    src = _dicom(
        tmp_path / "cxr.dcm", (np.random.default_rng(0).random((40, 36)) * 4000).astype(np.uint16), spacing=(0.5, 0.7)
    )
    before = _snapshot(tmp_path)
    written = run_inference([src], BICUBIC, tmp_path / "out", progress=False, output_format="nifti")
    assert [Path(p).name for p in written] == ["cxr_sr.nii.gz"]
    img = sitk.ReadImage(written[0])
    assert img.GetSize()[:2] == (36 * SCALE, 40 * SCALE)  # (columns, rows)
    np.testing.assert_allclose(img.GetSpacing()[:2], [0.7 / SCALE, 0.5 / SCALE], rtol=1e-6)  # (x, y)
    lr_corner = np.array([-10.0, -20.0]) - 0.5 * np.array([0.7, 0.5])
    corner = img.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5] + [0.0] * (img.GetDimension() - 2))
    np.testing.assert_allclose(corner[:2], lr_corner, atol=1e-5)
    arr = sitk.GetArrayFromImage(img)
    assert arr.min() >= 0 and 3000 < arr.max() <= 4000  # back in the stored units
    assert {p: v for p, v in _snapshot(tmp_path).items() if "out" not in p.parts} == before


@needs_data(CT3)
def test_hu_window_in_and_out(tmp_path):
    """A CT model trained on a HU window reads its input through the same window (``intensity``), and the
    output is written back in HU, inside the window."""
    src = sorted(CT3.iterdir())[0]
    written = run_inference(src, methods.get("bicubic", SCALE, "ct").predictor(), tmp_path, progress=False)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(written[0]))
    hu = read_image(src, intensity=(-4000, 4000))  # wide enough to hold the slice's full HU range
    assert -1000 - 1e-3 <= arr.min() and arr.max() <= 400 + 1e-3
    assert arr.min() < -900 and float(hu.min()) < (-1000 + 4000) / 8000  # air is clipped to the window's floor


def test_output_folder_is_input_folder_keeps_inputs(tmp_path):
    a = _png(tmp_path / "a.png")
    before = a.read_bytes()
    run_inference(a, BICUBIC, tmp_path, progress=False)
    assert a.read_bytes() == before and (tmp_path / "a_sr.png").is_file()


@pytest.fixture
def bad_inputs(tmp_path):
    """name -> path of each kind of bad input, plus a good PNG."""
    d = tmp_path / "in"
    d.mkdir()
    good = _png(d / "good.png")
    rng = np.random.default_rng(0)
    bad = {
        "missing": d / "missing.png",
        "truncated_png": _truncate(_png(d / "truncated.png", (64, 64))),
        "truncated_dicom": _truncate(_dicom(d / "truncated.dcm", (rng.random((64, 64)) * 1000).astype(np.uint16)), 0.6),
        "too_small": _png(d / "small.png", (31, 40)),  # 31 < 8 x scale 4
        "constant": d / "constant.png",
        "nan": d / "nan.nii.gz",
        "volume_nifti": _nifti(d / "volume.nii.gz", rng.random((3, 36, 40)).astype(np.float32), (0.5, 0.5, 2.0)),
        "volume_dicom": _ct_series(d / "ct_series"),
    }
    Image.fromarray(np.full((40, 40), 77, np.uint8)).save(bad["constant"])
    nan = rng.random((40, 40)).astype(np.float32)
    nan[3, 4] = np.nan
    _nifti(bad["nan"], nan)
    return good, bad


EXPECTED = {
    "missing": "file not found",
    "truncated_png": "cannot be read as an image",
    "truncated_dicom": "DICOM",
    "too_small": "smaller than 32 px",
    "constant": "constant",
    "nan": "NaN",
    "volume_nifti": "slice by slice",
    "volume_dicom": "slice by slice",
}


def test_each_bad_input_names_itself(bad_inputs, tmp_path):
    good, bad = bad_inputs
    for kind, path in bad.items():
        with pytest.raises(InputError) as e:
            run_inference(path, BICUBIC, tmp_path / "out", progress=False)
        msg = str(e.value)
        assert str(path) in msg and EXPECTED[kind] in msg, (kind, msg)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_inputs_in_a_batch(bad_inputs, tmp_path):
    """One sentence per bad input, nothing written for them, the good one still done, inputs untouched."""
    good, bad = bad_inputs
    before = _snapshot(good.parent)
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        run_inference([*bad.values(), good], BICUBIC, out, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{len(bad)} of {len(bad) + 1} inputs failed")
    for kind, path in bad.items():
        assert re.search(re.escape(str(path)) + r"\b", msg), kind
    assert sorted(p.name for p in out.iterdir()) == [
        "failed.csv",
        "good_sr.png",
    ]  # no temporary or partial files either
    assert _snapshot(good.parent) == before


def test_volumes_with_allow_volume(bad_inputs, tmp_path):
    _, bad = bad_inputs
    out = tmp_path / "out"
    written = run_inference(
        [bad["volume_nifti"], bad["volume_dicom"]],
        BICUBIC,
        out,
        allow_volume=True,
        progress=False,
        output_format="nifti",
    )
    assert sorted(Path(p).name for p in written) == ["ct_series_sr.nii.gz", "volume_sr.nii.gz"]
    vol = sitk.ReadImage(str(out / "volume_sr.nii.gz"))
    assert vol.GetSize() == (40 * SCALE, 36 * SCALE, 3)
    np.testing.assert_allclose(vol.GetSpacing(), [0.5 / SCALE, 0.5 / SCALE, 2.0], rtol=1e-6)
    ct = sitk.ReadImage(str(out / "ct_series_sr.nii.gz"))
    assert ct.GetSize() == (36 * SCALE, 32 * SCALE, 3)  # (columns, rows, slices)
    np.testing.assert_allclose(ct.GetSpacing(), [0.7 / SCALE, 0.5 / SCALE, 2.0], rtol=1e-6)


def test_validate_input_directly():
    ok = torch.rand(1, 32, 40)
    validate_input(ok, "ok.png", SCALE)
    with pytest.raises(InputError, match=r"^v\.nii: is a 3D volume"):
        validate_input(torch.rand(1, 32, 32, 3), "v.nii", SCALE)
    validate_input(torch.rand(1, 32, 32, 3), "v.nii", SCALE, allow_volume=True)
    with pytest.raises(InputError, match="x.png: expected a 2D image"):
        validate_input(torch.rand(32, 32), "x.png", SCALE)
    inf = ok.clone()
    inf[0, 1, 1] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        validate_input(inf, "inf.png", SCALE)
    validate_input(torch.rand(1, 16, 16), "s.png", 2)  # 8 x scale 2
    with pytest.raises(InputError, match="smaller than 16 px"):
        validate_input(torch.rand(1, 15, 16), "s.png", 2)


# ------------------------------------------------------------------------------------------- expand_inputs


def test_expand_inputs_mixed_folder(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    for name in ("b.png", "a.jpg", ".hidden.png"):
        _png(d / name) if name.endswith(".png") else Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / name)
    _nifti(d / "c.nii.gz", np.zeros((8, 8), np.float32))
    _dicom(d / "d.dcm", np.zeros((8, 8), np.uint16))
    _dicom(d / "noext", np.zeros((8, 8), np.uint16))  # found by its DICM magic
    (d / "notes.txt").write_text("not an image")
    (d / "sub").mkdir()
    _png(d / "sub" / "deep.png")  # folders are not searched recursively
    expected = [str(d / n) for n in ("a.jpg", "b.png", "c.nii.gz", "d.dcm", "noext")]
    assert expand_inputs(d) == expected
    # files are kept as given, in order, existing or not (the reader reports missing ones)
    assert expand_inputs([d / "b.png", tmp_path / "gone.png"]) == [str(d / "b.png"), str(tmp_path / "gone.png")]


def test_expand_inputs_dicom_folders(tmp_path):
    series = _ct_series(tmp_path / "series")
    assert expand_inputs(series) == [str(series)]  # one series -> one volume input
    mixed = tmp_path / "two_series"
    mixed.mkdir()
    _dicom(mixed / "x1.dcm", np.zeros((8, 8), np.uint16), series_uid="1.2.3.1")
    _dicom(mixed / "x2.dcm", np.zeros((8, 8), np.uint16), series_uid="1.2.3.2")
    assert expand_inputs(mixed) == [str(mixed / "x1.dcm"), str(mixed / "x2.dcm")]
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(mixed / "x1.dcm", single / "only.dcm")
    assert expand_inputs(single) == [str(single / "only.dcm")]  # one file is a 2D image, not a series
    assert expand_inputs(tmp_path / "empty_missing") == [str(tmp_path / "empty_missing")]


@needs_data(CT3)
def test_expand_inputs_real_ct_series():
    assert expand_inputs(CT3) == [str(CT3)]
    vol = read_image(CT3)
    assert tuple(vol.shape) == (1, 512, 512, 3) and vol.meta["source_format"] == "dicom"
    with pytest.raises(InputError, match="slice by slice"):
        validate_input(vol, str(CT3), SCALE)
    validate_input(vol, str(CT3), SCALE, allow_volume=True)
    # in-plane 0.81 mm; slices 1.0 mm apart by their positions (1.25 mm thick, overlapping)
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3].numpy(), axis=0), [0.810547, 0.810547, 1.0], rtol=1e-4)


def assert_same_psnr_on_nih(reference, candidate, images: int = 2, tolerance_db: float = 0.05) -> None:
    """Both predictors' PSNR against the HR image within ``tolerance_db`` on the first NIH test images made
    128 -> 512."""
    from monai_sr_bundle.data.datalist import nih_datalist
    from monai_sr_bundle.metrics import PSNRMetric
    from monai_sr_bundle.transforms.degradation import downsample

    psnr = PSNRMetric(max_val=1.0)
    for item in nih_datalist("test", limit=images):
        hr = read_image(item["label"])
        lr = MetaTensor(downsample(hr, 4))
        a, b = (psnr(p(lr)[None].clamp(0, 1), hr[None]).item() for p in (reference, candidate))
        assert abs(a - b) <= tolerance_db, (a, b)


@pytest.mark.slow
@needs_data(DATA / "nih_cxr14")
def test_bf16_gives_the_fp32_psnr_within_five_hundredths_of_a_db():
    """The default method under CPU bf16 autocast (measured on the first 4: 0.001-0.011 dB apart)."""
    method = methods.get(methods.default_name())
    assert_same_psnr_on_nih(method.predictor(), method.predictor(precision="bf16"))


@pytest.mark.slow
@needs_data(DATA / "nih_cxr14")
def test_compile_gives_the_eager_psnr_within_five_hundredths_of_a_db():
    """srcnn torch.compile'd (inductor, ~30 s here for its first tile shape): measured equal to 1e-4 dB (the
    default method, sr3 and ldm too)."""
    method = methods.get("srcnn")
    assert_same_psnr_on_nih(method.predictor(), method.predictor(compile=True))


def test_a_compiled_predictor_reaches_a_worker_process_compiled_with_its_weights_keys():
    """A sampler's denoiser is what compiles; pickled for a worker process (a compiled call does not pickle),
    the copy compiles its own and the weights keep their names; the original stays compiled."""
    import pickle

    predictor = methods.get("sr3").predictor(compile=True)
    copy = pickle.loads(pickle.dumps(predictor))
    for p in (predictor, copy):
        assert p.compiled and p.network.denoiser._compiled_call_impl is not None
        assert p.network._compiled_call_impl is None
    assert list(copy.network.state_dict()) == list(methods.get("sr3").network().state_dict())
    deterministic = pickle.loads(pickle.dumps(methods.get("srcnn").predictor(compile=True)))
    assert deterministic.network._compiled_call_impl is not None


def test_fp16_off_a_gpu_and_an_unknown_precision_are_one_sentence(tmp_path, capsys):
    with pytest.raises(InputError, match="precision fp16 runs on a GPU only, and the device is cpu; use bf16"):
        methods.get("bicubic").predictor(precision="fp16")
    with pytest.raises(InputError, match="unknown precision 'int8'"):
        methods.get("bicubic").predictor(precision="int8")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "a.png")
    assert main(["sr", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--precision", "fp16"]) == 2
    assert "precision fp16 runs on a GPU only" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_progress_speaks_while_one_long_item_runs(caplog):
    """Without a terminal the meter logs what runs now at least every ``every`` seconds, also while one item
    takes long (a diffusion method on a CPU), and stops when closed."""
    import logging
    import time

    from monai_sr_bundle.progress import Progress

    with caplog.at_level(logging.INFO, logger="monai_sr_bundle.progress"):
        meter = Progress(3, bar=False, every=0.05, desc="evaluating")
        meter.status("sr3 on a.png")
        time.sleep(0.4)  # no item finished meanwhile
        meter.update()
        time.sleep(0.2)
        meter.close()
        said = len(caplog.records)
        time.sleep(1.2)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("evaluating: 0/3 images, now sr3 on a.png") for line in lines), lines
    assert any(line.startswith("evaluating: 1/3 images") and "min left" in line for line in lines), lines
    assert len(caplog.records) == said  # nothing after close
