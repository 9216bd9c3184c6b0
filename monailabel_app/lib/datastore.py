"""The app's local datastore: MONAI Label's ``LocalDatastore`` with the checks a hospital server needs in
front of it. MONAI Label stores whatever id, tag and file a client sends (an id like ``../../x`` writes
outside the studies folder); here ids and tags are plain names, uploads are real images of bounded size,
and box labels are validated markups ROI documents that fit their image, or nothing is stored.

The files are the truth, ``datastore_v2.json`` an index of them: a rebuild of the index (a lost or deleted
file, a restart after a crash) finds every image whatever the case of its suffix and every boxes label,
and a box save re-reads the index under the datastore's lock before it writes, so two writers (this
server and ``import_boxes.py``) never drop each other's saves."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel

from monai_sr_bundle.data.markups import markups_to_boxes
from monai_sr_bundle.data.readers import deflated_start, detached_data, image_shape, read_image
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.inference import check_size
from monai_sr_bundle.limits import MAX_OUTPUT_MP, check_output_size

logger = logging.getLogger(__name__)

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
#: deflated DICOM files measured and read at once: pydicom holds an accepted one whole (up to MAX_INFLATED)
INFLATING = threading.BoundedSemaphore(2)


def check_name(value: object, what: str) -> str:
    """``value`` if it is a plain name (see NAME), else a 422 naming it."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise HTTPException(422, f"{what} {str(value)[:80]!r} is not a plain name (letters, digits, '_', '-', '.').")
    return value


def known_suffix(name: str, patterns=EXTENSIONS) -> str | None:
    """The longest of ``patterns`` (``*.nii.gz``, ...) that ``name`` ends with, in any case, as a suffix
    (``.nii.gz``), after at least one character of stem; None if none."""
    lower = name.lower()
    for pattern in sorted(patterns, key=len, reverse=True):
        if lower.endswith(pattern[1:]) and len(lower) > len(pattern) - 1:
            return pattern[1:]
    return None


def check_image(path: str, name: str, scale: int, max_output_mp: float) -> tuple[int, ...]:
    """The image's spatial shape, read from its header before any pixel is decoded; 415 if it is not an image,
    422 if it is too small to super-resolve at ``scale``, 413 if its SR would exceed ``max_output_mp``
    megapixels (a 12 KB PNG may declare 30000x30000), 415 if it is a MetaImage or NRRD header that names a
    separate data file (an image is read only from its own bytes: a header may name any file the server can
    read), 415 if it is a deflated DICOM whose data set inflates past MAX_INFLATED (measured in steps first).
    The one acceptance rule of uploads and infer."""
    try:
        if detached_data(path):
            raise InputError(
                f"{path}: the header names a separate pixel data file; this server reads an image only from its own "
                "bytes, so send .mha or .nrrd with the data inside."
            )
        with INFLATING if deflated_start(path) is not None else contextlib.nullcontext():
            shape = image_shape(path)  # a deflated data set is measured in steps, then inflated whole by pydicom
    except InputError as e:
        raise HTTPException(415, str(e).replace(path, name)) from e
    try:
        check_size(shape, name, scale)
    except InputError as e:
        raise HTTPException(422, str(e)) from e
    try:
        check_output_size(shape, name, scale, max_output_mp, "this server's --conf max_output_mp")
    except InputError as e:
        raise HTTPException(413, str(e)) from e
    return shape


def _plain_file(path: str) -> bool:
    """A regular file, not a link: a link in the studies or label folders may point anywhere the server can
    read (``/etc/passwd``), so it is neither indexed nor served nor written through."""
    return os.path.isfile(path) and not os.path.islink(path)


def image_path(datastore, image_id: object) -> str:
    """The file of a stored image; 422 for an id that is not a plain name, 404 for an unknown one."""
    path = datastore.get_image_uri(check_name(image_id, "image id"))
    if not path:
        raise HTTPException(404, f"image {image_id!r} is not in the datastore.")
    return path


def box_findings(datastore, image_id: str, label_filename: str, label_tag: str) -> list[str]:
    """The finding names of a boxes upload: a markups ROI document of at most MAX_BOXES_FILE that fits the
    stored image ``image_id``; a 4xx naming what is wrong otherwise, before anything is stored."""
    if check_name(label_tag, "label tag") != BOX_TAG:
        raise HTTPException(
            422, f"this app keeps only abnormality boxes: save them with tag {BOX_TAG!r}, not {label_tag!r}."
        )
    path = image_path(datastore, image_id)
    if os.path.getsize(label_filename) > MAX_BOXES_FILE:
        raise HTTPException(413, f"a boxes file may be at most {MAX_BOXES_FILE >> 10} KB.")
    try:
        with open(label_filename, encoding="utf-8") as f:
            doc = json.load(f)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise HTTPException(
            422, f"boxes of {image_id!r} are not JSON ({type(e).__name__}); send a 3D Slicer markups ROI file."
        ) from e
    image = read_image(path)
    try:
        return markups_to_boxes(doc, image.affine, image.shape[1:], name=f"boxes of {image_id}")[1]
    except InputError as e:
        raise HTTPException(422, str(e)) from e


class SRDatastore(LocalDatastore):
    """``LocalDatastore`` that refuses bad ids, tags and files with a 4xx before anything is stored.

    Args:
        studies: the studies folder.
        scale, max_output_mp: an upload must be large enough to super-resolve at ``scale`` and its SR at
            most ``max_output_mp`` megapixels (the infer task's rule).
        auto_reload: watch the folder for files added by hand.
    """

    def __init__(
        self, studies: str, scale: int = 4, max_output_mp: float = MAX_OUTPUT_MP, auto_reload: bool = True
    ) -> None:
        self.studies, self.scale, self.max_output_mp = studies, scale, max_output_mp
        # the label patterns go in too, so that MONAI Label's folder watcher sees boxes written by another process
        super().__init__(studies, extensions=EXTENSIONS + LABEL_EXTENSIONS, auto_reload=auto_reload)

    def _list_files(self, path: str, patterns) -> dict[str, str]:
        """Images in the studies folder, boxes files in the label folders, whatever the case of the suffix
        (MONAI Label matches one pattern list everywhere, case-sensitively)."""
        is_images = os.path.realpath(path) == os.path.realpath(self._datastore.image_path())
        allowed = EXTENSIONS if is_images else LABEL_EXTENSIONS
        names = [n for n in os.listdir(path) if _plain_file(os.path.join(path, n))]
        return {n: n for n in names if known_suffix(n, allowed)}

    def get_image_uri(self, image_id: str) -> str:
        """The stored image's file; "" (unknown) if it has become a link since it was indexed."""
        obj = self._datastore.objects.get(image_id)
        path = os.path.join(self._datastore.image_path(), self._filename(image_id, obj.image.ext)) if obj else ""
        return path if path and _plain_file(path) else ""

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The stored label's file; "" (none) if it has become a link since it was indexed."""
        label = self._datastore.label(label_id, label_tag)
        path = os.path.join(self._datastore.label_path(label_tag), self._filename(label_id, label.ext)) if label else ""
        return path if path and _plain_file(path) else ""

    def _to_id(self, file: str) -> tuple[str, str]:
        """(id, suffix) of a stored file name: the suffix is the known extension it ends with, in any case,
        removed once from the end (MONAI Label removes every occurrence: ``evil.png.png`` became ``evil``)."""
        suffix = known_suffix(file, EXTENSIONS + LABEL_EXTENSIONS)
        return (file[: -len(suffix)], file[-len(suffix) :]) if suffix else super()._to_id(file)

    def add_image(self, image_id: str, image_filename: str, image_info: dict) -> str:
        """Store an upload under ``image_id`` (default: its file name's stem). The id is checked under the
        datastore's lock, so of concurrent uploads under one new id one is stored and the others get 409; the
        file is copied aside and moved into place, replacing (never following) a link of that name."""
        image_id = check_name(image_id or self._to_id(os.path.basename(image_filename))[0], "image id")
        name = os.path.basename(image_filename)  # the gateway checked its suffix and size
        check_image(image_filename, image_id, self.scale, self.max_output_mp)
        deflated = deflated_start(image_filename) is not None
        try:
            with INFLATING if deflated else contextlib.nullcontext():  # pydicom inflates it whole again
                read_image(image_filename)
        except InputError as e:
            raise HTTPException(422, str(e).replace(image_filename, image_id)) from e
        ext = self._to_id(name)[1]
        stored = self._filename(image_id, ext)
        folder = self._datastore.image_path()
        with FileLock(self._lock_file):
            self._reload_index()  # another process may have stored this id since this one last read the index
            if image_id in self._datastore.objects or any(
                self._to_id(f)[0] == image_id for f in os.listdir(folder) if known_suffix(f, EXTENSIONS)
            ):
                raise HTTPException(
                    409, f"image {image_id!r} is already in the datastore; remove it first or upload under another id."
                )
            tmp = os.path.join(folder, f".{stored}.tmp")
            shutil.copyfile(image_filename, tmp)
            os.replace(tmp, os.path.join(folder, stored))
            info = {**(image_info or {}), "ts": int(time.time()), "name": stored}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict) -> str:
        findings = box_findings(self, image_id, label_filename, label_tag)
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

    def update_image_info(self, image_id: str, info: dict) -> None:
        image_path(self, image_id)
        super().update_image_info(image_id, info)

    def remove_image(self, image_id: str) -> None:
        image_path(self, image_id)
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        if not self.get_label_uri(check_name(label_id, "image id"), check_name(label_tag, "label tag")):
            raise HTTPException(404, f"image {label_id!r} has no {label_tag!r} label.")
        super().remove_label(label_id, label_tag)

    def _reconcile_datastore(self) -> None:
        """The index made again from the files: every image in the studies folder and its boxes file, with the
        info recorded for those still there. MONAI Label's rescan changes the live index step by step (a
        reader saw images vanish) without the lock (a save made meanwhile was dropped); this one builds the
        new index aside, under the lock, and swaps it in at once."""
        with FileLock(self._lock_file):
            self._reload_index()
            index = self._datastore.model_copy(deep=True)
            boxes_dir, now = index.label_path(BOX_TAG), int(time.time())
            boxes = set(self._list_files(boxes_dir, LABEL_EXTENSIONS)) if os.path.isdir(boxes_dir) else set()
            objects = {}
            for file in self._list_files(index.image_path(), EXTENSIONS):
                image_id, ext = self._to_id(file)
                obj = index.objects.get(image_id)
                if obj is None or obj.image.ext != ext:
                    obj = ImageLabelModel(image=DataModel(info={"ts": now, "name": file}, ext=ext))
                label = obj.labels.get(BOX_TAG)
                name = f"{image_id}.json"
                obj.labels = (
                    {BOX_TAG: label or DataModel(info={"ts": now, "name": name}, ext=".json")} if name in boxes else {}
                )
                objects[image_id] = obj
            index.objects = objects
            if index != self._datastore:
                self._datastore = index
                self._update_datastore_file(lock=False)

    def _reload_index(self) -> None:
        """Read ``datastore_v2.json`` again; the caller holds the datastore's lock. Always, not when its time
        stamp changed: two writes within the file system's time stamp granularity look like one. The index is
        complete before it is swapped in: MONAI Label's reload showed other threads an index without its base
        folder for a moment, and a save made then wrote its label under the server's working folder."""
        path = self._datastore_config_path
        if not os.path.exists(path):
            return
        try:
            with open(path, encoding="utf-8") as f:
                index = LocalDatastoreModel.model_validate_json(f.read())
        except (ValueError, RecursionError) as e:  # never a server that cannot start: set it aside, say so
            aside = f"{path}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(path, aside)
            logger.error(
                "the datastore index cannot be read (%s); moved to %s, and the index is made again from the "
                "studies folder (the info that file held is kept there)",
                type(e).__name__,
                aside,
            )
            self._update_datastore_file(lock=False)
            return
        index.base_path = self._datastore_path
        self._datastore = index
        self._config_ts = os.stat(path).st_mtime

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        """MONAI Label's start and reload (its folder watcher calls it when another process wrote the index);
        an unreadable index is set aside (:meth:`_reload_index`), so ``throw_exception`` has nothing to raise."""
        with FileLock(self._lock_file):
            self._reload_index()
