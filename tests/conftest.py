"""Shared test helpers: where the shared real data is, skipping (with the reason) when it is absent, and the
test tiers.

Tiers (markers, registered in pyproject.toml): ``slow`` (seconds each: bundle commands in a subprocess,
training, ONNX export of the larger networks), ``server`` (a real MONAI Label server or Orthanc),
``federated`` (the NVFlare simulator or POC), ``gpu`` (needs CUDA; skipped without it). ``make test`` runs
them all; ``make test-fast`` leaves out slow, server and federated tests. A test that uses one of
:data:`SERVER_FIXTURES` is marked ``server`` here, so a new server test cannot land in the fast tier.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_sr_bundle import methods
from monai_sr_bundle.data.paths import shared_data_dir

DATA = shared_data_dir()
#: the Python of a user's install, which runs the user's commands (monai-sr, monai.bundle, torchrun, nvflare) in
#: the tests: ``make test`` builds it without the test and MONAI Label packages (.venv-user, Makefile); else this one
USER_PYTHON = os.environ.get("MONAI_SR_USER_PYTHON") or sys.executable
#: fixtures that start a real server: a test using one is a ``server`` test
SERVER_FIXTURES = frozenset({"ct_label_server", "server", "diffusion_server", "pacs"})
#: session fixtures that each test process builds for itself at little cost: they group no tests (_xdist_groups)
PER_PROCESS_FIXTURES = frozenset({"preloaded"})


def pytest_configure(config):
    """Every surface runs PyTorch unless a test names an engine (``$MONAI_SR_RUNTIME``; the engine tests say
    ``runtime=`` and export into a cache of the test process's own, ``$MONAI_SR_CACHE``), so that tests of
    files, servers and training do not pay an export per weights file; a pytest-xdist worker (``make test``
    runs two) gives torch one thread: two workers share the cores."""
    import atexit
    import shutil
    import tempfile

    from monai_sr_bundle.engine import CACHE_ENV, RUNTIME_ENV

    os.environ[RUNTIME_ENV] = "torch"  # subprocesses (bundle commands, servers, workers) too
    # torch's ONNX exporter imports absl, whose log handler takes the sys.stderr of that moment (pytest's capture)
    # and closes it when a bundle run's logging.conf closes every handler: give it the process's own stderr
    try:
        from absl import logging as absl_logging
    except ImportError:  # no absl here: nothing to point elsewhere
        pass
    else:
        absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
    os.environ[CACHE_ENV] = cache = tempfile.mkdtemp(prefix="monai-sr-engines-")
    atexit.register(shutil.rmtree, cache, True)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"  # the bundle, server and federated subprocesses too
        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the tests that use a server fixture ``server``; skip ``gpu`` tests on a machine without CUDA; put
    the tests that share a fixture in one pytest-xdist group (first: pytest-xdist's own hook reads the groups)."""
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(no_gpu)
    for item, group in _xdist_groups(items).items():
        item.add_marker(pytest.mark.xdist_group(group))


def _xdist_groups(items) -> dict:
    """pytest-xdist's ``loadgroup`` runs a group in one worker: the tests of a module that has a module- or
    session-scoped fixture of ours (a server, a trained model) form one group, so the fixture is built once,
    and modules that share a session-scoped one (the CT label server) join one group; the other tests spread
    one by one."""
    here = Path(__file__).parent
    shared: dict[str, set[str]] = {}  # module -> our module/session fixtures its tests use
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            for fixturedef in item._fixtureinfo.name2fixturedefs.get(name, ()):
                ours = Path(fixturedef.func.__code__.co_filename).parent == here
                if ours and fixturedef.scope in ("module", "session") and name not in PER_PROCESS_FIXTURES:
                    shared.setdefault(item.module.__name__, set()).add(f"{fixturedef.scope}:{name}")
    group = {module: module for module in shared}
    for fixture in {f for used in shared.values() for f in used if f.startswith("session:")}:
        users = sorted(m for m, used in shared.items() if fixture in used)
        joined = {group[u] for u in users}
        for module in shared:
            if group[module] in joined:
                group[module] = group[users[0]]
    return {item: group[item.module.__name__] for item in items if item.module.__name__ in group}


#: a GAN method small enough to train in seconds, registered by the ``tiny_gan`` fixture
TINY_GAN = "tiny_gan"
TINY_GAN_OVERLAY = {
    "network_def": {"_target_": "monai_sr_bundle.networks.SRResNet", "scale": "@scale", "channels": 8, "blocks": 1},
    "discriminator_def": {
        "_target_": "monai_sr_bundle.networks.discriminator.SRGANDiscriminator",
        "channels": 4,
        "pool": 2,
        "dense": 8,
    },
    "stages": {"gan": ["train.json", "train_gan.json"]},
    "patch_size": 32,
    "batch_size": 2,
    "samples_per_image": 1,
    "val_limit": 1,
    "losses#perceptual": {
        "_target_": "monai_sr_bundle.losses.PerceptualLoss",
        "_mode_": "callable",
        "weight": 1.0,
        "layers": {"relu1_2": 1.0},
    },
    "adversarial_weight": 0.001,
    "relativistic": True,
}


def png_declaring(path: str | Path, width: int, height: int) -> Path:
    """A valid 8x8 PNG whose IHDR (and its CRC) is patched to claim ``width`` x ``height`` pixels: 70 bytes
    that a reader must size from the header without decoding, or refuse."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    b = bytearray(buf.getvalue())
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    Path(path).write_bytes(bytes(b))
    return Path(path)


def needs_data(folder: str | Path):
    """``skipif`` marker for tests that read ``folder`` of the shared data (``$MONAI_SR_DATA``, default
    ``../shared/data``): skipped, saying which folder is missing, when it is absent."""
    folder = Path(folder)
    return pytest.mark.skipif(not folder.is_dir(), reason=f"shared data folder {folder} not found (set MONAI_SR_DATA)")


@pytest.fixture
def needs(request):
    """Fixture form of :func:`needs_data`: ``needs(folder)`` skips the running test when ``folder`` is absent."""

    def check(folder: str | Path) -> Path:
        folder = Path(folder)
        if not folder.is_dir():
            pytest.skip(f"shared data folder {folder} not found (set MONAI_SR_DATA)")
        return folder

    return check


def _pydicom_major() -> int:
    import pydicom

    return int(pydicom.__version__.split(".")[0])


def make_dicom(
    path,
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    photometric: str = "MONOCHROME2",
    pixel_spacing=None,
    imager_pixel_spacing=None,
    position=None,
    orientation=None,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    instance: int = 1,
    modality: str = "CT",
    **header,
) -> Path:
    """Write a minimal single-frame, uncompressed DICOM file (works with pydicom 2 and 3); ``header`` sets
    further elements last, after the pixel data, so a test can make the header lie about it."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rows, cols = pixels.shape
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if _pydicom_major() < 3:
        ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.0", series_uid
    ds.Modality, ds.InstanceNumber = modality, instance
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_pixel_spacing)
    if position is not None:
        ds.ImagePositionPatient = list(position)
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    for key, value in header.items():
        setattr(ds, key, value)
    return save_dicom(ds, path)


def save_dicom(ds, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM file with its file meta, under pydicom 2 or 3."""
    try:
        ds.save_as(str(path), enforce_file_format=True)  # pydicom >= 3
    except TypeError:
        ds.save_as(str(path), write_like_original=False)  # pydicom 2
    return Path(path)


def deflated_dicom(path: str | Path, side: int) -> Path:
    """A DICOM of ``side`` x ``side`` zeros in the deflated transfer syntax: a few KB that inflate to 2 side² bytes."""
    import pydicom

    ds = pydicom.dcmread(make_dicom(path, np.zeros((side, side), np.uint16)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    return save_dicom(ds, path)


def ct_slice_volume() -> tuple[np.ndarray, np.ndarray]:
    """pydicom's real CT slice as 3D Slicer holds it: voxels (1, rows, cols) and the IJK-to-RAS matrix."""
    import pydicom

    from monai_sr_bundle.batch import default_input

    ds = pydicom.dcmread(default_input())
    sy, sx = (float(v) for v in ds.PixelSpacing)
    m = np.diag([-sx, -sy, 1.0, 1.0])  # an axial slice: LPS axes seen in RAS
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    m[:3, 3] = [-x, -y, z]
    return ds.pixel_array[None].astype(np.int16), m


@pytest.fixture(scope="session")
def preloaded():
    """A Python that has imported torch and MONAI, from which this test process forks its MONAI Label servers
    (tools/preloaded.py): about 1 s of CPU a start instead of 12-20. test_launchers starts one as a user does."""
    from tools.preloaded import Preloaded

    with Preloaded() as python:
        yield python


@pytest.fixture(scope="session")
def ct_label_server(tmp_path_factory, preloaded):
    """A real MONAI Label server running the app (srcnn) on a studies folder holding ``ct_small.dcm``, shared
    by the session's tests that only read from it; yields (URL, studies folder)."""
    import shutil

    from monai_sr_bundle.batch import default_input
    from tools.label_server import label_server

    root = tmp_path_factory.mktemp("ct_server")
    studies = root / "studies"
    studies.mkdir()
    shutil.copy(default_input(), studies / "ct_small.dcm")
    with label_server(root, studies, {"method": "srcnn", "model_dir": root / "model"}, preloaded=preloaded) as url:
        yield url, studies


@pytest.fixture
def torch_threads():
    """This process's torch thread count, given back after a test that changes it (the worker's next tests and
    their timings keep theirs)."""
    import torch

    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_gan(tmp_path, monkeypatch):
    """The tiny GAN as a throwaway method (``$MONAI_SR_METHODS``, inherited by subprocesses)."""
    folder = tmp_path / "overlays"
    folder.mkdir()
    (folder / f"{TINY_GAN}.json").write_text(json.dumps(TINY_GAN_OVERLAY))
    monkeypatch.setenv("MONAI_SR_METHODS", str(folder))
    return methods.get(TINY_GAN)


@pytest.fixture(scope="session")
def federated_poc(tmp_path_factory):
    """One POC federation and its jobs (``poc_deployment`` of tests/test_federated.py), started, run and stopped
    once per session (once per pytest-xdist run too) for the tests of tests/test_federated.py and
    tests/test_federated_gpus.py that only read what it left: each POC job starts processes that import torch and
    MONAI at every site."""
    from test_federated import shared_poc_deployment

    return shared_poc_deployment(tmp_path_factory)
