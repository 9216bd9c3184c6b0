"""The app's local datastore: MONAI Label's ``LocalDatastore`` with the checks a hospital server needs in
front of it. MONAI Label stores whatever id, tag and file a client sends (an id like ``../../x`` writes
outside the studies folder); here ids and tags are plain names, uploads are real images of bounded size,
and box labels are validated markups ROI documents that fit their image, or nothing is stored.

The files are the truth, ``datastore_v2.json`` an index of them: a rebuild of the index (a lost or deleted
file, a restart after a crash) finds every image whatever the case of its suffix and every boxes label,
and a box save re-reads the index under the datastore's lock before it writes, so two writers (this
server and ``import_boxes.py``) never drop each other's saves."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import time

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore, LocalDatastoreModel

from monai_sr_bundle.data.markups import markups_to_boxes
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.errors import InputError

#: the label tag under which an image's abnormality boxes are kept
BOX_TAG = "boxes"
#: image ids and label tags: a plain file name, no path separators, no leading dot
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
EXTENSIONS = ("*.png", "*.jpg", "*.jpeg", "*.dcm", "*.nii.gz", "*.nii", "*.nrrd", "*.mha")
#: what the label folders hold: boxes as markups ROI JSON
LABEL_EXTENSIONS = ("*.json",)
MAX_BOXES_FILE = 1 << 20
#: label info the server records when a label is saved
RECORDED_INFO = ("findings", "name", "ts")


def check_name(value: object, what: str) -> str:
    """``value`` if it is a plain name (see NAME), else a 422 naming it."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise HTTPException(422, f"{what} {str(value)[:80]!r} is not a plain name (letters, digits, '_', '-', '.').")
    return value


def image_path(datastore, image_id: object) -> str:
    """The file of a stored image; 422 for an id that is not a plain name, 404 for an unknown one."""
    path = datastore.get_image_uri(check_name(image_id, "image id"))
    if not path:
        raise HTTPException(404, f"image {image_id!r} is not in the datastore.")
    return path


class SRDatastore(LocalDatastore):
    """``LocalDatastore`` that refuses bad ids, tags and files with a 4xx before anything is stored.

    Args:
        studies: the studies folder.
        max_upload_mb: largest image upload accepted.
        auto_reload: watch the folder for files added by hand.
    """

    def __init__(self, studies: str, max_upload_mb: float = 512, auto_reload: bool = True) -> None:
        self.studies, self.max_upload = studies, int(float(max_upload_mb) * (1 << 20))
        # the label patterns go in too, so that MONAI Label's folder watcher sees boxes written by another process
        super().__init__(studies, extensions=EXTENSIONS + LABEL_EXTENSIONS, auto_reload=auto_reload)

    def _list_files(self, path: str, patterns) -> dict[str, str]:
        """Images in the studies folder, boxes files in the label folders, whatever the case of the suffix
        (MONAI Label matches one pattern list everywhere, case-sensitively)."""
        is_images = os.path.realpath(path) == os.path.realpath(self._datastore.image_path())
        allowed = EXTENSIONS if is_images else LABEL_EXTENSIONS
        names = [n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))]
        return {n: n for n in names if any(fnmatch.fnmatch(n.lower(), p) for p in allowed)}

    def _to_id(self, file: str) -> tuple[str, str]:
        """(id, suffix) of a stored file name: the suffix is the known extension it ends with, in any case,
        removed once from the end (MONAI Label removes every occurrence: ``evil.png.png`` became ``evil``)."""
        lower = file.lower()
        for pattern in sorted(EXTENSIONS + LABEL_EXTENSIONS, key=len, reverse=True):
            if lower.endswith(pattern[1:]):
                cut = len(pattern) - 1
                return file[:-cut], file[-cut:]
        return super()._to_id(file)

    def add_image(self, image_id: str, image_filename: str, image_info: dict) -> str:
        if image_id:
            check_name(image_id, "image id")
            if self.get_image_uri(image_id):
                raise HTTPException(
                    409, f"image {image_id!r} is already in the datastore; remove it first or upload under another id."
                )
        name = os.path.basename(image_filename)
        if not any(fnmatch.fnmatch(name.lower(), p) for p in EXTENSIONS):
            raise HTTPException(
                415,
                f"this server keeps images as {', '.join(e[2:] for e in EXTENSIONS)} files; convert the upload first.",
            )
        size = os.path.getsize(image_filename)
        if size > self.max_upload:
            raise HTTPException(
                413,
                f"upload of {size / (1 << 20):.1f} MB is over the {self.max_upload / (1 << 20):g} MB limit "
                "of this server.",
            )
        try:
            read_image(image_filename)
        except InputError as e:
            raise HTTPException(
                415, f"upload {image_id or ''} is not a readable image: {str(e).replace(image_filename, 'the file')}"
            ) from e
        return super().add_image(image_id, image_filename, image_info)

    def boxes_of(self, image_id: str, doc: object):
        """(boxes (N, 4) in pixels, finding names) of a markups document on a stored image; 422 if it does not fit."""
        image = read_image(image_path(self, image_id))
        try:
            return markups_to_boxes(doc, image.affine, image.shape[1:3], name=f"boxes of {image_id}")
        except InputError as e:
            raise HTTPException(422, str(e)) from e

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict) -> str:
        if check_name(label_tag, "label tag") != BOX_TAG:
            raise HTTPException(
                422, f"this app keeps only abnormality boxes: save them with tag {BOX_TAG!r}, not {label_tag!r}."
            )
        image_path(self, image_id)
        if os.path.getsize(label_filename) > MAX_BOXES_FILE:
            raise HTTPException(413, f"a boxes file may be at most {MAX_BOXES_FILE >> 10} KB.")
        try:
            with open(label_filename, encoding="utf-8") as f:
                doc = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPException(
                422, f"boxes of {image_id!r} are not JSON ({e}); send a 3D Slicer markups ROI file."
            ) from e
        _, findings = self.boxes_of(image_id, doc)
        folder = self._datastore.label_path(BOX_TAG)
        os.makedirs(folder, exist_ok=True)
        with FileLock(self._lock_file):
            self._reload_index()  # another writer may have saved since this process last read the index
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise HTTPException(404, f"image {image_id!r} is not in the datastore.")
            name = f"{image_id}.json"
            tmp = os.path.join(folder, f".{name}.tmp")
            shutil.copyfile(label_filename, tmp)
            os.replace(tmp, os.path.join(folder, name))  # the label keeps a .json name whatever the client sent
            info = {**(label_info or {}), "findings": findings, "ts": int(time.time()), "name": name}
            obj.labels[BOX_TAG] = DataModel(info=info, ext=".json")
            self._update_datastore_file(lock=False)
        return image_id

    def update_label_info(self, label_id: str, label_tag: str, info: dict) -> None:
        """Add a client's notes to a stored label; what the server records from the label itself (its
        findings, file name, time) cannot be overwritten this way."""
        check_name(label_id, "image id")
        check_name(label_tag, "label tag")
        if not isinstance(info, dict):
            raise HTTPException(422, "label info must be a JSON object.")
        recorded = sorted(set(info) & set(RECORDED_INFO))
        if recorded:
            raise HTTPException(
                422,
                f"{', '.join(recorded)} of a label come from the label itself; save the label again to change them.",
            )
        if not self.get_label_uri(label_id, label_tag):
            raise HTTPException(404, f"image {label_id!r} has no {label_tag!r} label.")
        super().update_label_info(label_id, label_tag, info)

    def _reload_index(self) -> None:
        """Read ``datastore_v2.json`` again; the caller holds the datastore's lock. Always, not when its time
        stamp changed: two writes within the file system's time stamp granularity look like one."""
        if os.path.exists(self._datastore_config_path):
            with open(self._datastore_config_path) as f:
                self._datastore = LocalDatastoreModel.model_validate_json(f.read())
            self._datastore.base_path = self._datastore_path
