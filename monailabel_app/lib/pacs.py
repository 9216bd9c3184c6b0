"""The app on a PACS (``--studies http(s)://<host>/dicom-web``): MONAI Label's DICOMweb datastore with this
app's checks, boxes kept beside the image cache, and SR series stored back to the PACS (STOW-RS).

A series' image id is its SeriesInstanceUID; the series is fetched (WADO-RS) into the cache as DICOM, not
converted, so that its SR can be a derived series of the same study. A store is checked against what the
PACS then lists (QIDO-RS): Orthanc's DICOMweb plugin answers success for an instance its own filter refused.
A series the PACS did not take whole is removed again where the PACS allows it (Orthanc's REST API); where it
does not, the error names the series to remove. A PACS that cannot be reached or answers an error gives a
502 naming it, never a partial result."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import requests
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore

from lib.datastore import BOX_TAG, box_findings, check_name

logger = logging.getLogger(__name__)

#: the modalities whose series the app lists by default (chest radiographs and CT)
MODALITIES = ("CR", "DX", "CT")


@contextlib.contextmanager
def pacs_errors(url: str, doing: str):
    """Turn a PACS that cannot be reached or answers an error into one 502 sentence naming it."""
    try:
        yield
    except HTTPException:
        raise
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else "an error"
        raise HTTPException(502, f"the PACS at {url} answered {status} while {doing}.") from e
    except (requests.ConnectionError, requests.Timeout) as e:
        raise HTTPException(502, f"the PACS at {url} cannot be reached while {doing} ({type(e).__name__}).") from e


def client(url: str) -> tuple[DICOMwebClientX, requests.Session]:
    """A DICOMweb client with MONAI Label's own settings (user and password, QIDO/WADO/STOW prefixes), and
    its HTTP session (the same credentials reach the PACS's own API)."""
    session = requests.Session()
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        session.auth = (settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    web = DICOMwebClientX(
        url=url,
        session=session,
        qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
        wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
        stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
    )
    # one retry: the default five with exponential back-off (also on a refused connection) hold a request,
    # and MONAI Label's /info/ with it, for 30 s when the PACS is down
    web.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=200)
    return web, session


class SRDICOMwebDatastore(DICOMWebDatastore):
    """The series of ``modalities`` in the PACS at ``url``, cached as DICOM under ``cache_path``.

    Args:
        url: the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``.
        modalities: the Modality values listed as images (one QIDO-RS query each).
        cache_path: the cache folder (default: MONAI Label's, under ~/.cache/monailabel/dicom).
    """

    def __init__(self, url: str, modalities=MODALITIES, cache_path: str | None = None) -> None:
        self.url, self.modalities = url.rstrip("/"), tuple(modalities)
        web, self.session = client(self.url)
        super().__init__(web, {}, cache_path=cache_path or None, convert_to_nifti=False)

    def list_images(self) -> list[str]:
        series = []
        with pacs_errors(self.url, "listing its series"):
            for modality in self.modalities:
                for found in self._client.search_for_series(search_filters={"Modality": modality}):
                    uid = found.get("0020000E", {}).get("Value", [""])[0]
                    if uid and uid not in series:
                        series.append(uid)
        return series

    def get_image_uri(self, image_id: str) -> str:
        """The cached series: its one file for a one-instance series (a radiograph), else its folder; "" when
        the PACS has no such series (of the listed modalities)."""
        check_name(image_id, "image id")
        with pacs_errors(self.url, f"fetching series {image_id}"):
            found = self._client.search_for_series(search_filters={"SeriesInstanceUID": image_id})
            modalities = {m.get("00080060", {}).get("Value", [""])[0] for m in found}  # one query, not a listing
            if not modalities & set(self.modalities):
                return ""
            folder = super().get_image_uri(image_id)
        files = sorted(Path(folder).glob("*.dcm"))
        return str(files[0]) if len(files) == 1 else folder

    def _box_file(self, image_id: str) -> Path:
        return Path(self._datastore.label_path(BOX_TAG)) / f"{check_name(image_id, 'image id')}.json"

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict, label_id: str = ""):
        """Boxes are checked as on a local datastore and kept in the cache's label folder, not in the PACS."""
        findings = box_findings(self, image_id, label_filename, label_tag)
        target = self._box_file(image_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(label_filename, tmp)
        info = {**(label_info or {}), "findings": findings, "ts": int(time.time()), "name": target.name}
        tmp.with_suffix(".info").write_text(json.dumps(info))
        os.replace(tmp, target)
        os.replace(tmp.with_suffix(".info"), target.with_suffix(".info.json"))
        return image_id

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        if label_tag != BOX_TAG:
            return ""
        path = self._box_file(label_id)
        return str(path) if path.is_file() else ""

    def get_label_info(self, label_id: str, label_tag: str) -> dict:
        path = self._box_file(label_id).with_suffix(".info.json")
        return json.loads(path.read_text()) if label_tag == BOX_TAG and path.is_file() else {}

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        """The image's boxes label id (the image id) when it has boxes; what the next-sample strategy asks."""
        return image_id if self.get_label_uri(image_id, tag) else ""

    def remove_label(self, label_id: str, label_tag: str) -> None:
        path = Path(self.get_label_uri(check_name(label_id, "image id"), check_name(label_tag, "label tag")))
        if not path.is_file():
            raise HTTPException(404, f"image {label_id!r} has no {label_tag!r} label.")
        path.unlink()
        path.with_suffix(".info.json").unlink(missing_ok=True)

    # The PACS owns the images and their records: MONAI Label's endpoints that would change them here change
    # only the cache (an upload no listing shows, a note lost at the next fetch), so they are refused.
    def add_image(self, image_id: str, image_filename: str, image_info: dict) -> str:
        raise HTTPException(405, "this server's images are the PACS's series: store images in the PACS, not here.")

    def update_image_info(self, image_id: str, info: dict) -> None:
        raise HTTPException(405, "this server's images are the PACS's series: their records are kept in the PACS.")

    def update_label_info(self, label_id: str, label_tag: str, info: dict) -> None:
        raise HTTPException(405, "on a PACS this server keeps boxes, not notes about them.")

    def remove_image(self, image_id: str) -> None:
        raise HTTPException(405, "this server's images are the PACS's series: remove them in the PACS.")

    def store_series(self, path: str) -> str:
        """Store the derived series at ``path`` (a file or a folder of instances) in the PACS; return its
        SeriesInstanceUID. Checked against the PACS's own listing; a partial store is removed again."""
        import pydicom

        files = [Path(path)] if os.path.isfile(path) else sorted(Path(path).glob("*.dcm"))
        datasets = [pydicom.dcmread(f) for f in files]
        study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
        expected = {str(ds.SOPInstanceUID) for ds in datasets}
        with pacs_errors(self.url, f"checking study {study}"):
            if not self._client.search_for_studies(search_filters={"StudyInstanceUID": study}):
                raise HTTPException(409, f"the PACS at {self.url} has no study {study}; the SR series is not stored.")
        try:
            with pacs_errors(self.url, f"storing SR series {series}"):
                self._client.store_instances(datasets, study_instance_uid=study)
                found = self._client.search_for_instances(study, series)
        except HTTPException as e:
            raise HTTPException(502, f"{e.detail} {self._remove(study, series)}") from e
        stored = {i.get("00080018", {}).get("Value", [""])[0] for i in found}
        if stored != expected:
            missing = len(expected - stored)
            raise HTTPException(
                502,
                f"the PACS at {self.url} refused {missing} of the {len(expected)} instances of SR series {series}. "
                + self._remove(study, series),
            )
        logger.info("stored SR series %s (%d instances) in %s", series, len(expected), self.url)
        return series

    def _remove(self, study: str, series: str) -> str:
        """Remove what a failed store left of ``series`` (Orthanc's REST API); say what happened."""
        root, session = self.url.rsplit("/dicom-web", 1)[0], self.session
        try:
            if not self._client.search_for_instances(study, series):
                return "Nothing of it is in the PACS."
            hits = session.post(f"{root}/tools/lookup", data=series, timeout=30)
            hits.raise_for_status()
            for hit in hits.json():
                if hit.get("Type") == "Series":
                    session.delete(f"{root}/series/{hit['ID']}", timeout=30).raise_for_status()
            if not self._client.search_for_instances(study, series):
                return "What had been stored of it was removed again."
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            logger.warning("cannot remove series %s from %s: %s", series, self.url, e)
        return f"Part of it may be in the PACS: remove series {series} there."
