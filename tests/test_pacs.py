"""A real PACS round trip: Orthanc (DICOMweb) holds the studies, the MONAI Label app runs on it (``--studies
<orthanc>/dicom-web``), serves SR of its series, keeps boxes for them, and stores the SR as a derived series
back in Orthanc (STOW-RS), read back here (WADO-RS) with pydicom and SimpleITK; a refused store leaves
nothing, an unreachable or failing PACS is one sentence."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from conftest import DATA, make_dicom, needs_data
from orthanc import REFUSED_PATIENT, orthanc
from test_derived_dicom import dciodvfy_errors

from monai_sr_bundle import methods
from monai_sr_bundle.batch import run_inference
from monai_sr_bundle.data.markups import boxes_to_markups
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.launch import free_port
from tools.label_server import label_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "SuperResolution"))
from SuperResolutionLib.client import ClientError, MonaiLabelClient  # noqa: E402

pytest.importorskip("monailabel", reason="monailabel is a test dependency (pip install -e '.[test]')")
from dicomweb_client.api import DICOMwebClient  # noqa: E402  (comes with monailabel)

CXR = DATA / "cxr_dicom" / "dwv_gdcm-CR-MONO1-10-chest.dcm"  # real CR, 10-bit MONOCHROME1
METHOD, SCALE = "srcnn", 4
STUDY = "1.2.826.0.1.3680043.8.498.0"  # make_dicom's study
NO_PIXELS = "1.2.826.0.1.3680043.8.498.12"


def _ct_series(folder: Path, patient: str, series_uid: str) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    return [
        make_dicom(
            folder / f"s{k}.dcm",
            (rng.random((40, 36)) * 1000).astype(np.uint16),
            pixel_spacing=(0.5, 0.7),
            position=[-10.0, -20.0, 2.5 * k],
            orientation=[1, 0, 0, 0, 1, 0],
            series_uid=series_uid,
            instance=k + 1,
            slope=1.0,
            intercept=-1024.0,
            PatientID=patient,
            SliceThickness=2.5,
        )
        for k in range(3)
    ]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, preloaded):
    root = tmp_path_factory.mktemp("pacs")
    with orthanc(root / "orthanc") as url:
        web = DICOMwebClient(url=f"{url}/dicom-web")
        ct = _ct_series(root / "ct", "CT-1", "1.2.826.0.1.3680043.8.498.10")
        refused = _ct_series(root / "refused", REFUSED_PATIENT, "1.2.826.0.1.3680043.8.498.11")
        header_only = pydicom.dcmread(
            make_dicom(root / "nopixels.dcm", np.zeros((40, 36), np.uint16), series_uid=NO_PIXELS)
        )
        del header_only.PixelData  # a PACS stores it; the app must refuse it in one sentence
        real = [CXR] if CXR.is_file() else []  # the tests that need it skip without the shared data
        web.store_instances([pydicom.dcmread(f) for f in [*real, *ct, *refused]] + [header_only])
        cache = root / "cache"
        env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(cache)}
        conf = {"method": METHOD, "model_dir": root / "model"}
        with label_server(root, f"{url}/dicom-web", conf, env=env, preloaded=preloaded) as app:
            yield SimpleNamespace(
                url=url,
                web=web,
                app=app,
                root=root,
                cache=cache,
                ct=ct,
                refused=refused,
                cr=real and pydicom.dcmread(CXR),
            )


def infer(app: str, image: str, params: dict | None = None, output: str = "json") -> requests.Response:
    return requests.post(
        f"{app}/infer/super_resolution",
        params={"image": image, "output": output},
        data={"params": json.dumps(params or {})},
        timeout=300,
    )


def retrieve(pacs, study: str, series: str, folder: Path) -> list[Path]:
    """WADO-RS: the series' instances as files in ``folder``, in InstanceNumber order."""
    folder.mkdir(parents=True)
    datasets = sorted(pacs.web.retrieve_series(study, series), key=lambda ds: int(ds.InstanceNumber))
    paths = []
    for ds in datasets:
        paths.append(folder / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(paths[-1])
    return paths


def in_process(src: Path, out: Path) -> list[Path]:
    """What the CLI writes for the same input: the reference for the stored pixels."""
    method = methods.get(METHOD, SCALE, "cxr")
    written = run_inference(src, method.predictor(), out, allow_volume=True, progress=False)
    path = Path(written[0])
    return [path] if path.is_file() else sorted(path.iterdir())


@needs_data(CXR.parent)
def test_sr_of_a_pacs_radiograph_is_stored_back_as_a_derived_series(pacs, tmp_path):
    series = str(pacs.cr.SeriesInstanceUID)
    r = infer(pacs.app, series, {"store_in_pacs": True})
    assert r.status_code == 200, r.text
    stored = r.json()["stored_series"]
    assert stored != series
    files = retrieve(pacs, str(pacs.cr.StudyInstanceUID), stored, tmp_path / "wado")
    assert len(files) == 1 and dciodvfy_errors(files[0]) == []
    ds = pydicom.dcmread(files[0])
    assert ds.StudyInstanceUID == pacs.cr.StudyInstanceUID and ds.PatientName == pacs.cr.PatientName
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == pacs.cr.SOPInstanceUID
    assert (ds.Rows, ds.Columns) == (pacs.cr.Rows * SCALE, pacs.cr.Columns * SCALE)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "AI-generated" in ds.SeriesDescription
    reference = pydicom.dcmread(in_process(CXR, tmp_path / "cli")[0])
    np.testing.assert_array_equal(ds.pixel_array, reference.pixel_array)  # what the CLI makes, bit for bit
    # the reply is the stored image, as NIfTI
    image = infer(pacs.app, series, {"store_in_pacs": True}, output="image")
    (tmp_path / "reply.nii.gz").write_bytes(image.content)
    reply = read_image(tmp_path / "reply.nii.gz")
    assert tuple(reply.shape[1:3]) == (ds.Columns, ds.Rows)


def test_ct_series_round_trip_keeps_geometry(pacs, tmp_path):
    r = infer(pacs.app, "1.2.826.0.1.3680043.8.498.10", {"store_in_pacs": True})
    assert r.status_code == 200, r.text
    files = retrieve(pacs, STUDY, r.json()["stored_series"], tmp_path / "wado")
    assert len(files) == 3 and all(dciodvfy_errors(f) == [] for f in files)
    sources = [pydicom.dcmread(f) for f in pacs.ct]
    derived = [pydicom.dcmread(f) for f in files]
    assert [d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in derived] == [s.SOPInstanceUID for s in sources]
    assert len({d.SOPInstanceUID for d in derived}) == 3 and len({d.SeriesInstanceUID for d in derived}) == 1
    # pydicom: spacing = input / scale; origin moved by the half-pixel rule, slices where they were
    shift = 0.5 / SCALE - 0.5
    for d, s in zip(derived, sources):
        assert [float(v) for v in d.PixelSpacing] == pytest.approx([0.5 / SCALE, 0.7 / SCALE], abs=1e-6)
        expected = np.array([-10.0 + 0.7 * shift, -20.0 + 0.5 * shift, float(s.ImagePositionPatient[2])])
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient], expected, atol=1e-3)
    # SimpleITK reads the same grid
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    itk = reader.Execute()
    np.testing.assert_allclose(itk.GetSpacing(), [0.7 / SCALE, 0.5 / SCALE, 2.5], atol=1e-3)
    np.testing.assert_allclose(itk.GetOrigin(), [-10.0 + 0.7 * shift, -20.0 + 0.5 * shift, 0.0], atol=1e-3)
    # pixels: the CLI's derived series, bit for bit, in HU (slope 1, intercept -1024)
    reference = [pydicom.dcmread(f) for f in in_process(pacs.ct[0].parent, tmp_path / "cli")]
    for d, ref in zip(derived, reference):
        np.testing.assert_array_equal(d.pixel_array, ref.pixel_array)
        assert (d.RescaleIntercept, d.RescaleSlope) == (ref.RescaleIntercept, ref.RescaleSlope)


def test_the_slicer_client_stores_sr_in_the_pacs(pacs):
    """The 3D Slicer module's client (its Store SR in the PACS button): the series UID of the stored SR."""
    client = MonaiLabelClient(pacs.app)
    stored = client.store_in_pacs("1.2.826.0.1.3680043.8.498.10", {"method": "bicubic", "scale": 2})
    (instance,) = pacs.web.search_for_instances(STUDY, stored)[:1]
    assert instance["00200013"]["Value"] == [1]
    with pytest.raises(ClientError, match=r"refused \(404\)"):
        client.store_in_pacs("1.2.3.4.5.6")


@needs_data(CXR.parent)
def test_boxes_are_kept_for_a_pacs_series(pacs):
    series = str(pacs.cr.SeriesInstanceUID)
    image = read_image(CXR)
    doc = json.dumps(boxes_to_markups([[100.0, 120.0, 160.0, 160.0]], ["Nodule"], image.affine)).encode()
    url = f"{pacs.app}/datastore/label"
    r = requests.put(url, params={"image": series, "tag": "boxes"}, files={"label": ("roi.json", doc)}, timeout=60)
    assert r.status_code == 200, r.text
    back = requests.get(url, params={"label": series, "tag": "boxes"}, timeout=60)
    assert back.status_code == 200 and back.content == doc
    outside = json.dumps(boxes_to_markups([[5000.0, 120.0, 5060.0, 160.0]], ["Nodule"], image.affine)).encode()
    bad = requests.put(
        url, params={"image": series, "tag": "boxes"}, files={"label": ("roi.json", outside)}, timeout=60
    )
    assert bad.status_code == 422
    assert requests.get(url, params={"label": series, "tag": "boxes"}, timeout=60).content == doc  # kept


@needs_data(CXR.parent)
def test_stock_endpoints_do_not_change_the_pacs_or_its_cache(pacs):
    """MONAI Label's endpoints that a client can reach on a PACS-backed server: uploads and notes are refused
    (the PACS owns images and records), deletes are not served, next sample skips series with boxes."""
    before = sorted(p.relative_to(pacs.cache) for p in pacs.cache.rglob("*"))
    image = requests.put(
        f"{pacs.app}/datastore/image", params={"image": "planted"}, files={"file": ("x.dcm", CXR.read_bytes())}
    )
    assert image.status_code == 405 and "store images in the PACS" in image.text
    series = str(pacs.cr.SeriesInstanceUID)
    note = requests.put(f"{pacs.app}/datastore/image/info", params={"image": series}, data={"params": "{}"})
    assert note.status_code == 405
    assert requests.delete(f"{pacs.app}/datastore/image", params={"id": series}).status_code == 404
    assert requests.delete(f"{pacs.app}/datastore/label", params={"id": series, "tag": "boxes"}).status_code == 404
    assert sorted(p.relative_to(pacs.cache) for p in pacs.cache.rglob("*")) == before
    assert pacs.web.search_for_series(search_filters={"SeriesInstanceUID": series})  # still in the PACS
    listed = {s["0020000E"]["Value"][0] for s in pacs.web.search_for_series()}
    image = read_image(CXR)
    doc = json.dumps(boxes_to_markups([[100.0, 120.0, 160.0, 160.0]], ["Nodule"], image.affine)).encode()
    url = f"{pacs.app}/datastore/label"
    requests.put(url, params={"image": series, "tag": "boxes"}, files={"label": ("roi.json", doc)}, timeout=60)
    picks = {requests.post(f"{pacs.app}/activelearning/boxes_first", timeout=60).json()["id"] for _ in range(8)}
    assert picks and series not in picks and picks <= listed


def test_a_refused_store_leaves_nothing_in_the_pacs(pacs):
    study_series = {s["0020000E"]["Value"][0] for s in pacs.web.search_for_series(STUDY)}
    r = infer(pacs.app, "1.2.826.0.1.3680043.8.498.11", {"store_in_pacs": True})
    assert r.status_code == 502, r.text
    detail = r.json()["detail"]
    # the PACS kept instances 1 and 3 of the source; of the SR's 1 and 2 it refuses 2
    assert "refused 1 of the 2 instances" in detail and "removed again" in detail
    after = {s["0020000E"]["Value"][0] for s in pacs.web.search_for_series(STUDY)}
    assert after == study_series  # no SR series, not even its instances 1 and 3


def test_bad_requests_are_one_sentence(pacs):
    assert infer(pacs.app, "1.2.3.4.5.6").status_code == 404  # no such series in the PACS
    r = infer(pacs.app, "1.2.826.0.1.3680043.8.498.10", {"store_in_pacs": "yes"})
    assert r.status_code == 422 and "\"store_in_pacs\" must be true or false, got 'yes'" in r.json()["detail"]
    assert infer(pacs.app, "../../etc/passwd").status_code == 422
    before = len(pacs.web.search_for_series(STUDY))
    r = infer(pacs.app, NO_PIXELS, {"store_in_pacs": True})
    assert r.status_code == 422 and f"{NO_PIXELS}: the DICOM file has no pixel data" in r.json()["detail"]
    assert len(pacs.web.search_for_series(STUDY)) == before  # nothing stored for it


def test_an_unreachable_or_failing_pacs_is_one_sentence(pacs, tmp_path, preloaded):
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp_path / "cache")}
    conf = {"method": METHOD, "model_dir": tmp_path / "model"}
    # /info/ reports the datastore, so it is the PACS's error too: the server is up when /info/ says 502
    with label_server(
        tmp_path / "wrong", f"{pacs.url}/no-dicom-web", conf, env=env, ready_status=502, preloaded=preloaded
    ) as app:
        assert "the PACS at <studies> answered 404" in requests.get(f"{app}/info/", timeout=30).text
        r = infer(app, "1.2.826.0.1.3680043.8.498.10")
        assert r.status_code == 502 and "the PACS at <studies> answered 404" in r.json()["detail"]
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    with label_server(tmp_path / "dead", dead, conf, env=env, ready_status=502, preloaded=preloaded) as app:
        r = infer(app, "1.2.826.0.1.3680043.8.498.10")
        assert r.status_code == 502 and "the PACS at <studies> cannot be reached" in r.json()["detail"]


def test_local_studies_cannot_store_in_a_pacs(ct_label_server):
    url, _ = ct_label_server
    r = infer(url, "ct_small", {"store_in_pacs": True})
    assert r.status_code == 422 and "needs the app to run on a PACS" in r.text
