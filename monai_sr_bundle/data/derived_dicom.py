"""Derived DICOM output: an SR image written as a new series of the input's study, in the input's units.

The source instances (``meta["filename_or_obj"]`` or, for a series, ``meta["dicom_files"]`` in slice order)
give patient, study, equipment and acquisition attributes; this module adds what makes the result an honest
derived object (DICOM PS3.3 General Image / SOP Common / General Equipment modules):

- a new series (SeriesInstanceUID, SOPInstanceUIDs, SeriesNumber + 1000) in the same study and frame of
  reference; ImageType ``DERIVED\\SECONDARY``; Derivation Description and Code (DCM 113085, spatial
  resampling); a Source Image Sequence naming each input instance; Burned In Annotation ``NO``;
  "AI-generated, not for diagnostic use" in Image Comments and Series Description; monai-sr, its version
  and the method as Manufacturer / Model / Software Versions, the acquiring equipment kept as
  Contributing Equipment;
- geometry: Rows/Columns x scale, Pixel Spacing and Imager Pixel Spacing / scale, Image Position (Patient)
  moved in-plane by the half-pixel rule of :func:`monai_sr_bundle.transforms.degradation.zoom_geometry`
  (image corners stay in place), orientation, slice positions and thickness unchanged;
- pixels as stored values of the input's kind: its Bits Allocated/Stored, signedness, Photometric
  Interpretation (MONOCHROME1 re-inverted) and Rescale Slope/Intercept, VOI window kept; uncompressed
  explicit VR little endian whatever the input's transfer syntax (previous lossy compression is declared).

Private attributes, overlays, curves, icons and signatures of the source are not carried over; values the
source holds that are invalid for their VR are repaired when the intent is clear (``1995.07.20`` as a DA)
and emptied otherwise, with a warning naming them.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import validate_value

import monai_sr_bundle
from monai_sr_bundle.data.outputs import input_paths, sync_to_disk, to_units, usual_mode
from monai_sr_bundle.data.readers import dcmread
from monai_sr_bundle.errors import InputError

#: SOP classes a derived image keeps (single-frame images our readers take); any other becomes Secondary Capture
_KEPT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.7": "SC",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Body Part Examined values (CID 4031) that need no Laterality
_UNPAIRED = {
    "CHEST",
    "ABDOMEN",
    "PELVIS",
    "CHESTABDOMEN",
    "CHESTABDPELVIS",
    "ABDOMENPELVIS",
    "HEAD",
    "NECK",
    "WHOLEBODY",
}
#: what the images are, in every place a viewer shows
AI_NOTICE = "AI-generated, not for diagnostic use"

#: Type 2 attributes of the modules every derived image has (present, possibly empty)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_TYPE2_BY_MODALITY = {
    "CT": ("KVP", "AcquisitionNumber", "PositionReferenceIndicator", "SliceThickness", "PatientPosition"),
    "CR": ("BodyPartExamined", "ViewPosition", "PatientOrientation"),
    "DX": ("PatientOrientation",),
    "SC": ("PatientOrientation",),
}
#: attributes that describe the source's pixels, encoding or identity and are rewritten or dropped
_DROPPED = (
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PlanarConfiguration",
    "NumberOfFrames",
    "IconImageSequence",
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    "EncryptedAttributesSequence",
    "OriginalAttributesSequence",
    "SourceImageSequence",
    "DerivationCodeSequence",
    "DerivationDescription",
    "ReferencedImageSequence",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "InstanceNumber",
    "ImagesInAcquisition",
)
#: transfer syntax -> the Lossy Image Compression Method (CID 7013) of its lossy form
_LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
}  # lossless JPEG 2000 (.90) and JPEG-LS (.80) are not here: their pixels are the originals


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def check_source(ds, name: str) -> None:
    """Refuse a source whose pixels cannot be written back in its own units (one sentence naming it)."""
    if "ModalityLUTSequence" in ds:
        raise InputError(
            f"{name}: the image maps its pixels through a Modality LUT, which a derived DICOM cannot invert; "
            "write NIfTI instead (--output-format nifti)."
        )
    bits = int(getattr(ds, "BitsStored", 0) or 0)
    if not 1 <= bits <= 16:
        raise InputError(f"{name}: Bits Stored {bits} is not 1 to 16; write NIfTI instead (--output-format nifti).")


_LEGACY_FIX = {"DA": lambda s: s.replace(".", "").replace("-", "").replace("/", ""), "TM": lambda s: s.replace(":", "")}


def _sanitize(ds, name: str) -> None:
    """Strip trailing NULs, repair legacy DA/TM spellings, empty what stays invalid for its VR (warned)."""
    emptied = []

    def valid(vr: str, value) -> bool:
        try:  # the text each value is written as (DS/IS/PN values are objects here)
            for v in value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]:
                validate_value(vr, str(v), config.RAISE)
        except (ValueError, TypeError):
            return False
        return True

    def visit(dataset) -> None:
        for elem in list(dataset):
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
                continue
            if elem.VR not in ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"):
                continue
            value = elem.value
            if value is None or value == "":
                continue
            if isinstance(value, str) and "\x00" in value:
                value = elem.value = value.replace("\x00", "").strip()
            if valid(elem.VR, value):
                continue
            fix = _LEGACY_FIX.get(elem.VR)
            if fix is not None and isinstance(value, str) and valid(elem.VR, fix(value)):
                elem.value = fix(value)
                continue
            elem.value = None
            emptied.append(elem.keyword or str(elem.tag))

    visit(ds)
    if emptied:
        warnings.warn(
            f"{name}: emptied source attributes whose values are invalid DICOM: {', '.join(sorted(set(emptied)))}.",
            stacklevel=4,
        )


def _base(src, name: str):
    """A copy of the source header without what a derived image must not carry."""
    ds = Dataset()
    for elem in src:
        group = elem.tag.group
        if elem.tag.is_private or 0x6000 <= group <= 0x60FF or 0x5000 <= group <= 0x50FF or group == 0x0002:
            continue
        if not elem.keyword or elem.keyword in _DROPPED or group == 0xFFFA:
            continue
        ds.add(elem)
    ds = copy.deepcopy(ds)
    _sanitize(ds, name)
    return ds


def _spacing_pairs(ds, scale: float) -> None:
    for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        if key not in ds:
            continue
        try:
            pair = [float(v) for v in ds[key].value]
        except (TypeError, ValueError):
            pair = []
        if len(pair) == 2 and min(pair) > 0 and all(np.isfinite(pair)):
            ds[key].value = [_ds(v / scale) for v in pair]
        else:  # a zero or malformed spacing (seen in real files) is dropped, not scaled
            del ds[key]


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.0f}"


def _stored_pixels(plane: np.ndarray, meta: Mapping, src) -> np.ndarray:
    """[0, 1] plane (Rows, Columns) -> the source's stored values (inverse of the reader's map)."""
    values = to_units(plane, meta.get("intensity_range"), (0.0, 1.0))[0]
    pivot = meta.get("monochrome1_pivot")
    if pivot is not None:
        values = float(pivot) - values
    slope = float(getattr(src, "RescaleSlope", 1) or 1)
    intercept = float(getattr(src, "RescaleIntercept", 0) or 0)
    values = (values - intercept) / slope
    bits, signed = int(src.BitsStored), int(getattr(src, "PixelRepresentation", 0) or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    dtype = (np.int16 if signed else np.uint16) if int(src.BitsAllocated) > 8 else np.uint8
    return np.clip(np.rint(values), low, high).astype(dtype)


def _source_uids(src) -> tuple[str, str]:
    """(SOP Class, SOP Instance) UIDs of a source, from its file meta when the data set's are blank (seen in
    real exports); a source with neither cannot be referenced and is refused."""
    file_meta = getattr(src, "file_meta", None)
    uids = []
    for key in ("SOPClassUID", "SOPInstanceUID"):
        uid = str(getattr(src, key, "") or "") or str(getattr(file_meta, "MediaStorage" + key, "") or "")
        if not uid:
            raise InputError(
                f"{getattr(src, 'filename', 'the source')}: the DICOM file has no {key}; it cannot be "
                "referenced by a derived series; write NIfTI instead (--output-format nifti)."
            )
        uids.append(uid)
    return uids[0], uids[1]


@dataclasses.dataclass
class _Series:
    """What every instance of one derived series shares."""

    method: str
    scale: float
    uid: str = dataclasses.field(default_factory=generate_uid)
    study_uid: str = dataclasses.field(default_factory=generate_uid)  # for a source without one
    frame_uid: str = dataclasses.field(default_factory=generate_uid)  # for a CT/MR source without one
    now: datetime.datetime = dataclasses.field(default_factory=datetime.datetime.now)


def _instance(src: Dataset, plane: np.ndarray, meta: Mapping, series: _Series, number: int, name: str) -> Dataset:
    """Instance ``number`` of the derived series: the source header made derived, and ``plane`` (Rows,
    Columns) in [0, 1] as its pixels."""
    method, scale = series.method, series.scale
    ds = _base(src, name)
    source_class, source_instance = _source_uids(src)
    sop_class = source_class if source_class in _KEPT_SOP_CLASSES else _SECONDARY_CAPTURE
    kind = _KEPT_SOP_CLASSES.get(sop_class, "SC")
    modality = str(getattr(src, "Modality", "") or ("OT" if kind == "SC" else kind))
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.Modality = modality
    if not str(ds.get("StudyInstanceUID", "") or ""):
        ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = series.uid
    try:
        series_number = int(getattr(src, "SeriesNumber", 0) or 0) + 1000
    except (TypeError, ValueError):
        series_number = 1000
    ds.SeriesNumber, ds.InstanceNumber = series_number, number
    description = str(getattr(src, "SeriesDescription", "") or "").strip()
    ds.SeriesDescription = f"{description[:24]} SR x{scale:g} {method} (AI-generated)".strip()[-64:]
    image_type = [str(v) for v in (src.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "SECONDARY"] + (image_type[2:3] or (["AXIAL"] if kind == "CT" else []))
    ds.DerivationDescription = f"Super-resolution x{scale:g} by {method} (monai-sr {monai_sr_bundle.__version__})"
    ds.DerivationCodeSequence = [_code("113085", "DCM", "Spatial resampling")]
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = source_class, source_instance
    source.PurposeOfReferenceCodeSequence = [_code("121322", "DCM", "Source image for image processing operation")]
    ds.SourceImageSequence = [source]
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = AI_NOTICE
    if str(getattr(src, "Manufacturer", "") or ""):
        equipment = Dataset()
        for key in ("Manufacturer", "InstitutionName", "ManufacturerModelName", "DeviceSerialNumber"):
            if str(getattr(src, key, "") or ""):
                setattr(equipment, key, getattr(src, key))
        equipment.PurposeOfReferenceCodeSequence = [_code("109101", "DCM", "Acquisition Equipment")]
        ds.ContributingEquipmentSequence = [equipment]
    ds.Manufacturer = "monai-sr"
    ds.ManufacturerModelName = f"monai-sr {method}"[:64]
    ds.SoftwareVersions = monai_sr_bundle.__version__
    for key in ("InstitutionName", "DeviceSerialNumber", "StationName"):
        if key in ds:
            del ds[key]
    date, time = series.now.strftime("%Y%m%d"), series.now.strftime("%H%M%S")
    ds.InstanceCreationDate = ds.SeriesDate = ds.ContentDate = date
    ds.InstanceCreationTime = ds.SeriesTime = ds.ContentTime = time
    ts = str(getattr(getattr(src, "file_meta", None), "TransferSyntaxUID", ""))
    if str(getattr(src, "LossyImageCompression", "")) == "01" or ts in _LOSSY_METHODS:
        ds.LossyImageCompression = "01"  # the method (and ratio) of an earlier compression are kept as they are
        if ts in _LOSSY_METHODS and not str(ds.get("LossyImageCompressionMethod", "") or ""):
            ds.LossyImageCompressionMethod = _LOSSY_METHODS[ts]
    if sop_class == _SECONDARY_CAPTURE and not str(ds.get("ConversionType", "") or ""):
        ds.ConversionType = "WSD"
    for key in _TYPE2 + _TYPE2_BY_MODALITY.get(kind, ()):
        if key not in ds:
            setattr(ds, key, None)
    if str(ds.get("BodyPartExamined", "") or "").upper() not in _UNPAIRED and "Laterality" not in ds:
        ds.Laterality = None  # Type 2C: required for a paired (or unknown) body part
    if not str(ds.get("SpecificCharacterSet", "") or "") and "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet  # Type 1C: empty means the default repertoire, said by its absence
    if kind in ("CT", "MR") and not str(ds.get("FrameOfReferenceUID", "") or ""):
        ds.FrameOfReferenceUID = series.frame_uid  # Type 1 for cross-sectional images

    pixels = _stored_pixels(plane, meta, src)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    photometric = str(getattr(src, "PhotometricInterpretation", "")).strip().upper()
    ds.PhotometricInterpretation = photometric if photometric == "MONOCHROME1" else "MONOCHROME2"
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit = int(src.BitsStored), int(src.BitsStored) - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    _spacing_pairs(ds, scale)
    position = _position_from(src, scale)
    if position is not None:
        ds.ImagePositionPatient = position

    meta_info = FileMetaDataset()
    meta_info.MediaStorageSOPClassUID, meta_info.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta_info.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta_info
    if int(pydicom.__version__.split(".")[0]) < 3:  # pydicom 3 encodes by the file meta's transfer syntax
        ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds


def _position_from(src, scale: float):
    """The source's Image Position (Patient) moved in-plane by the half-pixel rule, or None when unusable."""
    try:
        ipp = np.array([float(v) for v in src.ImagePositionPatient])
        iop = np.array([float(v) for v in src.ImageOrientationPatient])
        row_mm, col_mm = (float(v) for v in src.PixelSpacing)  # (row spacing, column spacing)
    except (AttributeError, TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,) or min(row_mm, col_mm) <= 0:
        return None
    shift = 0.5 / scale - 0.5
    return [_ds(v) for v in ipp + iop[:3] * col_mm * shift + iop[3:] * row_mm * shift]


def _save(ds, path: str) -> None:
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:
        ds.save_as(path, write_like_original=False)  # pydicom 2.x


#: the instance files of a derived series folder (``IM0001.dcm``, ...), its only entries
SERIES_FILE = re.compile(r"IM\d{4,}\.dcm")


def _replace_series(built: Path, path: Path) -> Path:
    """Move the folder ``built`` to ``path``; an earlier series there (ours: the callers asked
    :func:`~monai_sr_bundle.data.writers.check_replaceable`) is moved aside first, into a new hidden folder beside
    it whose path is returned for the caller to remove: no name that a user's file may have is removed or replaced."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    old = aside / path.name
    if path.exists():
        os.replace(path, old)
    try:
        os.replace(built, path)
    except OSError:
        if old.exists():
            os.replace(old, path)
        try:
            aside.rmdir()  # empty once the earlier series is back
        except OSError:
            pass
        raise
    return aside


def write_derived(arr: np.ndarray, meta: Mapping, path: str | os.PathLike, method: str, *, overwrite: bool = True):
    """Write the SR image ``arr`` (X, Y[, Z]) in [0, 1], with its image's metadata ``meta``, as a derived
    series of its DICOM source (:func:`monai_sr_bundle.data.writers.write_image` calls this); return the
    path: a ``.dcm`` file for one instance, else a folder of ``IM0001.dcm``, ... in slice order.

    The series is built in a hidden folder beside ``path`` and moved into place once every instance is
    written, so a failure leaves nothing behind. ``method`` names the SR method in the series' description,
    derivation and equipment attributes.
    """
    path = Path(path)
    if meta.get("source_format") != "dicom":
        raise InputError(f"{path}: DICOM output needs a DICOM input (its patient and study); write NIfTI instead.")
    planes = [arr] if arr.ndim == 2 else [arr[..., k] for k in range(arr.shape[2])]
    paths = input_paths(meta)
    sources = paths[1:] or paths  # a series' files in slice order, else the one file
    if len(sources) != len(planes):
        raise InputError(f"{path}: {len(planes)} SR slices but {len(sources)} source DICOM instances.")
    headers = [dcmread(s, stop_before_pixels=True) for s in sources]
    for src, name in zip(headers, sources):
        check_source(src, name)
    columns = int(headers[0].Columns)
    scale = planes[0].shape[0] / columns
    if scale <= 0 or planes[0].shape[1] != round(int(headers[0].Rows) * scale):
        raise InputError(f"{path}: the SR image {arr.shape} is not the source {columns}x{headers[0].Rows} scaled.")
    single = len(planes) == 1
    if single and not path.name.lower().endswith(".dcm"):
        path = path.with_name(path.name + ".dcm")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; remove it or allow overwriting.")
    if path.is_dir() and (single or any(not SERIES_FILE.fullmatch(f.name) for f in path.iterdir())):
        raise InputError(f"{path}: is a folder that is not a derived series written here; give another output path.")
    series = _Series(method, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for k, (src, plane, name) in enumerate(zip(headers, planes, sources)):
            ds = _instance(src, plane.T, meta, series, k + 1, name)
            _save(ds, str(work / f"IM{k + 1:04d}.dcm"))
        for f in work.iterdir():
            os.chmod(f, usual_mode())
            sync_to_disk(f)  # on the disk before it takes the output's name: a crash leaves no cut instance
        os.chmod(work, usual_mode(folder=True))
        sync_to_disk(work)
        if single:
            os.replace(work / "IM0001.dcm", path)
        else:
            work = _replace_series(work, path)  # the earlier series moved aside, removed below
        sync_to_disk(path.parent)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: the derived DICOM cannot be written ({type(e).__name__}: {e}).") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
