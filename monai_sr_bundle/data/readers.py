"""Readers: PNG/JPEG, DICOM (file or series folder), NIfTI/NRRD/MHA -> MetaTensor (C, X, Y[, Z]) in [0, 1].

Every reader maps modality values linearly to [0, 1] and records the map in the metadata
(``intensity_range`` = the (lo, hi) modality values of 0 and 1, ``monochrome1`` when the DICOM was
inverted, with ``monochrome1_pivot`` such that stored value = pivot - displayed value), so that writers
can turn SR output back into the input's units (see :mod:`monai_sr_bundle.data.writers`). 8-bit PNGs map
exactly to k/255 and 16-bit PNGs to k/65535, whatever values they hold. Geometry is an LPS affine
(``meta["space"] == "LPS"``) with the first array axis along image columns (x), as MONAI's LoadImage
lays out 2D images.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from monai_sr_bundle.errors import InputError, printable

PNG_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

#: the most voxels (times components) a NIfTI/NRRD/MHA header may claim: 2**30, a 4 GiB float32 volume,
#: far above any CT; a corrupt or hostile header is refused before allocation (PNGs: PIL's MAX_IMAGE_PIXELS).
MAX_VOXELS = 1 << 30
#: the most a deflated DICOM data set may inflate to (a 4096 x 4096 16-bit radiograph is 32 MiB)
MAX_INFLATED = 96 << 20

#: ITU-R BT.601 luma weights, the usual choice for RGB -> grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def image_format(path: str | os.PathLike) -> str:
    """``png`` (any PIL raster), ``dicom`` (file or series folder) or ``itk`` (NIfTI/NRRD/MHA), from the
    name, falling back to the DICOM magic bytes for extension-less files."""
    p = Path(path)
    name = p.name.lower()
    if os.path.isdir(p):  # False for a name too long, which the reader reports
        return "dicom"
    if name.endswith(PNG_SUFFIXES):
        return "png"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith((".dcm", ".dicom")) or _has_dicom_magic(p):
        return "dicom"
    raise InputError(
        f"{path}: unsupported file type; use PNG/JPEG/TIFF, DICOM (.dcm or a series folder) or NIfTI/NRRD/MHA."
    )


def _has_dicom_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_intensity(value) -> bool:
    """Whether ``value`` is an intensity map :func:`read_image` takes and a config may name: ``"minmax"`` or a
    [lo, hi] window of two finite numbers with lo < hi."""
    if value == "minmax":
        return True
    pair = isinstance(value, (list, tuple)) and len(value) == 2
    pair = pair and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return pair and -float("inf") < value[0] < value[1] < float("inf")


def _normalize(arr: np.ndarray, intensity: str | Sequence[float], name: str) -> tuple[np.ndarray, tuple[float, float]]:
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: the image contains NaN or infinite values; fix or replace the file.")
    if isinstance(intensity, str):
        if intensity != "minmax":
            raise InputError(f"unknown intensity mode {intensity!r}; use 'minmax' or a (lo, hi) pair.")
        lo, hi = float(arr.min()), float(arr.max())
    else:
        lo, hi = (float(v) for v in intensity)
    if hi <= lo:
        hi = lo + 1.0  # a constant image stays constant; validation upstream decides whether to refuse it
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0), (lo, hi)


def _to_gray(arr: np.ndarray, name: str, channel_axis: int) -> np.ndarray:
    """Collapse RGB(A) to luminance with a warning; SR models here are single-channel.

    Gray + alpha keeps the gray channel, and RGB whose channels are all equal (grayscale saved as
    colour) keeps one channel exactly; neither warns, as nothing is lost.
    """
    n = arr.shape[channel_axis]
    if n in (1, 2):
        return np.take(arr, 0, axis=channel_axis)
    if n not in (3, 4):
        raise InputError(f"{name}: {n} channels is not a grayscale or RGB image.")
    r, g, b = (np.take(arr, i, axis=channel_axis) for i in range(3))
    if np.array_equal(r, g) and np.array_equal(r, b):
        return r
    warnings.warn(f"{name}: colour image converted to grayscale (ITU-R BT.601 luma).", stacklevel=3)
    rgb = np.moveaxis(np.take(arr, [0, 1, 2], axis=channel_axis), channel_axis, -1).astype(np.float32)
    return rgb @ _LUMA


def _affine(
    spacing: Sequence[float], origin: Sequence[float] | None = None, direction: np.ndarray | None = None
) -> torch.Tensor:
    """4x4 LPS affine from per-axis spacing, origin and a 3x3 direction (columns = axis directions)."""
    sp = np.ones(3)
    sp[: len(spacing)] = spacing
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    a = np.eye(4)
    a[:3, :3] = d * sp[None, :]
    if origin is not None:
        a[: len(origin), 3] = origin
    return torch.as_tensor(a, dtype=torch.float64)


def _meta_tensor(
    arr: np.ndarray, affine: torch.Tensor, path: str, fmt: str, rng: tuple[float, float], **extra
) -> MetaTensor:
    meta = {
        "filename_or_obj": str(path),
        "source_format": fmt,
        "intensity_range": rng,
        "space": "LPS",
        "original_channel_dim": "no_channel",
        **extra,
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr[None])), affine=affine, meta=meta)


def _quarter_turned(img) -> bool:
    """Whether ``img``'s EXIF orientation (5 to 8) turns it a quarter, so that it is shown with width and height
    swapped; read from what PIL parsed at opening (a PNG's EXIF after its pixel data would need them decoded)."""
    from PIL import ExifTags

    if img.format == "PNG" and "exif" not in img.info:
        return False
    return img.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)


def _read_png(path: str, intensity) -> MetaTensor:
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # a header claiming more than Image.MAX_IMAGE_PIXELS is refused before any pixel is allocated
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(
            f"{path}: the header claims more pixels than can be decoded safely ({e}); is the file corrupt?"
        ) from e
    except Exception as e:
        raise InputError(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); is the file complete?") from e
    try:
        with img:
            img.load()  # PIL opens lazily; decoding here surfaces truncated or corrupt files
            ImageOps.exif_transpose(img, in_place=True)  # as viewers show a camera's JPEG, not as it was stored
            mode = img.mode
            if mode == "P":  # palette: look up the colours (a gray palette becomes exact gray below)
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode == "1":
                img = img.convert("L")
            elif mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
                img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
            arr = np.asarray(img)
    except Exception as e:  # PIL raises many types for truncated/corrupt files
        raise InputError(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); is the file complete?") from e
    if arr.ndim == 3:  # PIL puts channels last: (Y, X, C)
        arr = _to_gray(arr, path, channel_axis=-1)
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2D image, got array shape {arr.shape}.")
    arr = arr.T  # (Y, X) -> (X, Y): first axis along image columns, as MONAI's PILReader lays it out
    if isinstance(intensity, str) and intensity == "minmax":
        # fixed bit-depth range, so 8-bit PNGs map exactly to k/255 and writing back is lossless
        if mode.startswith("I;16") or (mode == "I" and arr.min() >= 0 and arr.max() <= 65535):
            intensity = (0.0, 65535.0)  # 16-bit (older Pillow opens 16-bit PNGs as mode "I")
        elif mode in ("I", "F"):
            pass  # 32-bit integer or float data (TIFF): data range
        else:
            intensity = (0.0, 255.0)
    norm, rng = _normalize(arr, intensity, path)
    return _meta_tensor(norm, _affine([1.0, 1.0]), path, "png", rng)


def _check_nifti_finite(path: str) -> None:
    """ITK's NIfTI reader silently turns NaN and infinity into 0, so look at float NIfTI data with nibabel."""
    from monai.utils import optional_import

    nib, has_nib = optional_import("nibabel")
    if not has_nib:
        return
    try:
        img = nib.load(path)
        if img.get_data_dtype().kind not in "fc":
            return
        data = np.asanyarray(img.dataobj)
    except Exception:
        return  # unreadable files are reported by SimpleITK below
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the image contains NaN or infinite values; fix or replace the file.")


def _itk_error(path: str, e: RuntimeError) -> InputError:
    return InputError(f"{path}: cannot be read as NIfTI/NRRD/MHA ({str(e).strip().splitlines()[-1]}).")


#: MetaImage and NRRD header fields that name a separate pixel data file
_DATA_FIELDS = re.compile(rb"^(?:ElementDataFile\s*=|data ?file\s*:)[ \t]*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)


def detached_data(path: str | os.PathLike) -> list[str]:
    """The pixel data files a MetaImage (``ElementDataFile``) or NRRD (``data file``) header names, as written
    (a list form counts as its keyword); empty when the data is in the file itself (``LOCAL``, or none named)."""
    if not str(path).lower().endswith((".mha", ".mhd", ".nrrd", ".nhdr")):
        return []
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    header = head.split(b"\n\n", 1)[0] if b"ElementDataFile" not in head else head
    names = []
    for match in _DATA_FIELDS.finditer(header):
        value = match.group(1).decode("latin-1")
        if value.upper() != "LOCAL":
            names.append(value)
        if match.group(0).lower().startswith(b"elementdatafile"):
            break  # MetaImage's last header field: what follows is pixel data
    return names


def _check_detached(path: str) -> None:
    """A header's separate data file must be a regular file beside it: a header that names ``/etc/passwd``, a
    file of another folder or a FIFO would read (or hang on) what the image's owner never gave."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for name in detached_data(path):  # a list or numbered-pattern form names no such file and is refused too
        target = os.path.realpath(os.path.join(folder, name))
        if os.path.dirname(target) != folder or not os.path.isfile(target):
            raise InputError(
                f"{path}: the header names its pixel data file {printable(name)[:80]!r}, which is not a file "
                "beside it; keep the data file in the header's folder, or use .mha/.nrrd with the data inside."
            )


def _itk_header(path: str):
    """A SimpleITK reader that has read the header only, so shape and size can be checked before any voxel
    is allocated; 4D and higher images and data files outside the header's folder are refused."""
    import SimpleITK as sitk  # noqa: N813 (the library's own usual name)

    _check_detached(path)

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise _itk_error(path, e) from e
    if reader.GetDimension() > 3:
        raise InputError(f"{path}: {reader.GetDimension()}D images are not supported; give a 2D image or a 3D volume.")
    return reader


def _read_itk(path: str, intensity) -> MetaTensor:
    import SimpleITK as sitk  # noqa: N813 (the library's own usual name)

    reader = _itk_header(path)
    dim, size = reader.GetDimension(), reader.GetSize()
    n = int(np.prod(size, dtype=np.float64)) * reader.GetNumberOfComponents()
    if n > MAX_VOXELS:
        raise InputError(
            f"{path}: the header claims {'x'.join(map(str, size))} voxels, more than the {MAX_VOXELS} this reader "
            "accepts; is the file corrupt?"
        )
    if path.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_finite(path)
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise _itk_error(path, e) from e
    arr = sitk.GetArrayFromImage(img)  # (Z, Y, X) or (Y, X) [+ components]
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = _to_gray(arr, path, channel_axis=-1)
    arr = arr.T  # -> (X, Y[, Z])
    spacing, origin = list(img.GetSpacing()), list(img.GetOrigin())
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(img.GetDirection()).reshape(dim, dim)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    norm, rng = _normalize(arr, intensity, path)
    return _meta_tensor(norm, _affine(spacing, origin, direction), path, "itk", rng)


def _apply_modality_lut(arr: np.ndarray, ds) -> np.ndarray:
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut
    return apply_modality_lut(arr, ds)


#: the transfer syntax of a deflated DICOM data set, which pydicom inflates whole into memory
DEFLATED = "1.2.840.10008.1.2.1.99"
#: the most of a deflated data set inflated at a time while it is measured (and dropped)
INFLATE_STEP = 1 << 20


def deflated_start(path: str | os.PathLike) -> int | None:
    """Where the deflated data set of a DICOM file starts, or None if it is not DICOM with the deflated transfer
    syntax (or its file meta cannot be read: :func:`dcmread` then reports what is wrong)."""
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(str(path))
    except Exception:
        return None
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED:
        return None
    return 132 + 12 + int(meta.get("FileMetaInformationGroupLength", 0) or 0)  # preamble, DICM, the meta group


def _check_inflated_size(path: str | os.PathLike) -> None:
    """A deflated data set is inflated :data:`INFLATE_STEP` at a time, keeping none of it, and refused past
    MAX_INFLATED bytes: pydicom inflates it whole, and 255 KB can inflate to 256 MiB. Measuring in small steps
    keeps a refused file cheap (a server may be sent several at once)."""
    import zlib

    start = deflated_start(path)
    if start is None:
        return
    with open(path, "rb") as f:
        f.seek(start)
        inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflater.eof and (chunk := f.read(1 << 16)):
            try:
                while chunk and size <= MAX_INFLATED:
                    size += len(inflater.decompress(chunk, INFLATE_STEP))
                    chunk = inflater.unconsumed_tail
            except zlib.error:
                return  # not deflate data after all: dcmread reports it
            if size > MAX_INFLATED:
                raise InputError(
                    f"{path}: the deflated DICOM data set inflates to more than {MAX_INFLATED >> 20} MiB "
                    f"from {os.path.getsize(path):,} bytes; refusing a decompression bomb."
                )


def dcmread(path: str | os.PathLike, stop_before_pixels: bool = False):
    """pydicom.dcmread with every failure, including a file cut short, as one InputError; a deflated data set
    bounded before it is inflated."""
    import pydicom

    _check_inflated_size(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
        except Exception as e:
            raise InputError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e}).") from e
    for w in caught:
        if "end of file" in str(w.message).lower():
            raise InputError(f"{path}: the DICOM file is truncated ({w.message}); copy it again.")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ds


def _dicom_pixels(ds, path: str) -> np.ndarray:
    if "PixelData" not in ds:
        raise InputError(
            f"{path}: the DICOM file has no pixel data (is it truncated, or a structured report or "
            "presentation state?)."
        )
    try:
        arr = ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        hint = (
            "the file may be truncated, and JPEG/JPEG 2000 files need pylibjpeg, pylibjpeg-libjpeg and "
            "pylibjpeg-openjpeg"
            if getattr(ts, "is_compressed", True)
            else "the file is truncated or its header (Rows, Columns, Bits Allocated, ...) does not match its "
            "pixel data"
        )
        raise InputError(f"{path}: cannot decode DICOM pixel data (transfer syntax {ts}: {e}); {hint}.") from e
    if getattr(ds, "SamplesPerPixel", 1) > 1:
        arr = _to_gray(arr, path, channel_axis=-1)
    if arr.ndim != 2:
        raise InputError(f"{path}: multi-frame DICOM (shape {arr.shape}) is not supported; export single frames.")
    return np.asarray(_apply_modality_lut(arr, ds), dtype=np.float32)


def _floats(value, n: int) -> list[float] | None:
    """``n`` floats from a DICOM multi-value, or None when absent, empty or malformed."""
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _dicom_direction(ds) -> np.ndarray:
    d = np.eye(3)
    iop = _floats(getattr(ds, "ImageOrientationPatient", None), 6)
    if iop is not None:
        row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
        if np.linalg.norm(row) > 0 and np.linalg.norm(col) > 0:
            row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
            d[:, 0], d[:, 1], d[:, 2] = row, col, np.cross(row, col)
    return d


def _dicom_origin(ds) -> list[float]:
    return _floats(getattr(ds, "ImagePositionPatient", None), 3) or [0.0, 0.0, 0.0]


def _dicom_spacing(ds) -> list[float]:
    # PixelSpacing first; radiographs often carry only ImagerPixelSpacing; some files hold zeros.
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        ps = _floats(getattr(ds, tag, None), 2)
        if ps is not None and min(ps) > 0:
            return [ps[1], ps[0]]  # DICOM gives (row spacing, column spacing); our x axis is columns
    return [1.0, 1.0]


def _is_monochrome1(ds) -> bool:
    return str(getattr(ds, "PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"


def _read_dicom_file(path: str, intensity) -> MetaTensor:
    ds = dcmread(path)
    arr = _dicom_pixels(ds, path)
    mono1 = _is_monochrome1(ds)
    extra = {}
    if mono1:  # invert so that bright = dense, as in MONOCHROME2 and PNG radiographs
        pivot = float(arr.max() + arr.min())
        arr = pivot - arr
        extra["monochrome1_pivot"] = pivot  # stored value = pivot - displayed value, for DICOM writers
    norm, rng = _normalize(arr.T, intensity, path)
    return _meta_tensor(
        norm,
        _affine(_dicom_spacing(ds), _dicom_origin(ds), _dicom_direction(ds)),
        path,
        "dicom",
        rng,
        monochrome1=mono1,
        modality=str(getattr(ds, "Modality", "")),
        **extra,
    )


def _dicom_size(ds, path: str | os.PathLike) -> tuple[int, int]:
    """(X, Y) = (Columns, Rows) of a single-frame DICOM image, from its header."""
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError(f"{path}: the DICOM file holds no image (no Rows, Columns); is it a structured report?")
    try:
        size, frames = (int(ds.Columns), int(ds.Rows)), int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: the DICOM header's Rows, Columns or NumberOfFrames is not a number ({e}).") from e
    if frames > 1:
        raise InputError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export single frames.")
    return size


def folder_files(folder: str | os.PathLike) -> list[Path]:
    """The files of a folder that may be images, sorted: not hidden, and not a ``DICOMDIR`` (the index of a
    DICOM medium, which names the images but holds none)."""
    return sorted(
        p
        for p in Path(_existing(folder)).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files to super-resolve: each file as given; a folder of images gives its image files; a folder that
    holds only DICOM files of one series (a CT) stays one input, read as a volume."""
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: list[str] = []
    for p in map(Path, paths):
        if not os.path.isdir(p):  # False for a name too long: the reader reports it
            out.append(str(p))
            continue
        kinds = image_kinds(p)
        if not kinds or (set(kinds.values()) == {"dicom"} and one_series(list(kinds))):
            out.append(str(p))  # a folder without images stays an input too, so that the reader reports it
        else:
            out.extend(str(c) for c in kinds)
    return out


def image_kinds(folder: str | os.PathLike) -> dict[Path, str]:
    """The image files of a folder and their format families (files of no known format left out)."""
    kinds = {}
    try:
        children = folder_files(folder)
    except InputError:  # unreadable: the folder stays an input, for the reader to report
        return kinds
    for c in children:
        try:
            kinds[c] = image_format(c)
        except InputError:
            continue
    return kinds


def one_series(files: list[Path]) -> bool:
    """Whether ``files`` are two or more DICOM images of one series (a volume), each read only to its header."""
    if len(files) < 2:
        return False
    uids = set()
    for f in files:
        try:  # dcmread: a deflated file is bounded before it is inflated
            uids.add(str(dcmread(f, stop_before_pixels=True).get("SeriesInstanceUID", "")))
        except InputError:
            return False
    return len(uids) == 1


def _dicom_series(folder: str, stop_before_pixels: bool = False) -> list[tuple[Path, object]]:
    """(file, dataset) of each image of a one-series folder, unsorted; all slices the same size. Without
    pixel data (``stop_before_pixels``) an image is told by its Rows instead of its PixelData."""
    files = folder_files(folder)
    slices = []
    for f in files:
        if not (f.name.lower().endswith((".dcm", ".dicom")) or _has_dicom_magic(f)):
            continue  # non-DICOM files (DICOMDIR-less exports carry readmes, thumbnails)
        ds = dcmread(f, stop_before_pixels)  # a broken DICOM file stops the series: a silently missing slice is worse
        if ("Rows" if stop_before_pixels else "PixelData") in ds:
            slices.append((f, ds))
    if not slices:
        raise InputError(f"{folder}: the folder holds no DICOM images.")
    uids = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(uids) > 1:
        raise InputError(f"{folder}: the folder holds {len(uids)} DICOM series; put one series per folder.")
    sizes = {_dicom_size(ds, f) for f, ds in slices}
    if len(sizes) > 1:
        raise InputError(f"{folder}: slices have different sizes {sorted(sizes)}; the series is inconsistent.")
    return slices


def _check_geometry(slices: list[tuple[Path, object]], folder: str) -> None:
    """One orientation and one pixel spacing for all slices: a volume (and a derived series) has one grid."""
    first = slices[0][1]
    direction, spacing = _dicom_direction(first), _dicom_spacing(first)
    for f, ds in slices[1:]:
        if not np.allclose(_dicom_direction(ds), direction, atol=1e-4):
            raise InputError(
                f"{folder}: {f.name} is oriented differently from {slices[0][0].name}; the series has no single "
                "geometry (split it into series of one orientation)."
            )
        if not np.allclose(_dicom_spacing(ds), spacing, rtol=1e-4):
            raise InputError(
                f"{folder}: {f.name} has pixel spacing {_dicom_spacing(ds)} mm, {slices[0][0].name} "
                f"{spacing} mm; the series has no single geometry."
            )


def _read_dicom_series(folder: str, intensity) -> MetaTensor:
    slices = _dicom_series(folder)
    _check_geometry(slices, folder)
    normal = _dicom_direction(slices[0][1])[:, 2]

    has_positions = all(_floats(getattr(ds, "ImagePositionPatient", None), 3) is not None for _, ds in slices)

    def instance(ds) -> float:
        try:
            return float(getattr(ds, "InstanceNumber", 0) or 0)
        except (TypeError, ValueError):
            return 0.0

    def position(ds) -> float:  # along the slice normal; InstanceNumber when positions are missing
        return float(np.dot(normal, _dicom_origin(ds))) if has_positions else instance(ds)

    slices.sort(key=lambda item: (position(item[1]), instance(item[1])))
    arrays = [_dicom_pixels(ds, str(f)) for f, ds in slices]
    mono1 = _is_monochrome1(slices[0][1])
    vol = np.stack([a.T for a in arrays], axis=-1)  # (X, Y, Z)
    extra = {}
    if mono1:
        pivot = float(vol.max() + vol.min())
        vol = pivot - vol
        extra["monochrome1_pivot"] = pivot
    first = slices[0][1]
    spacing = _dicom_spacing(first)
    positions = [position(ds) for _, ds in slices]
    steps = np.diff(positions)
    try:
        thickness = float(getattr(first, "SliceThickness", 1.0) or 1.0)
    except (TypeError, ValueError):
        thickness = 1.0
    dz = float(np.median(steps)) if len(steps) and has_positions else thickness
    if dz <= 0:
        dz = thickness if thickness > 0 else 1.0
    elif has_positions and len(steps) and np.abs(steps - dz).max() > 0.1 * dz:
        i = int(np.abs(steps - dz).argmax())  # a volume has one spacing: evenly spread slices would misplace anatomy
        raise InputError(
            f"{folder}: slices {slices[i][0].name} and {slices[i + 1][0].name} are {steps[i]:.3g} mm apart where "
            f"the series steps {dz:.3g} mm (a missing or duplicate slice?); complete the series, or give its "
            "files one by one."
        )
    norm, rng = _normalize(vol, intensity, folder)
    return _meta_tensor(
        norm,
        _affine(spacing + [dz], _dicom_origin(first), _dicom_direction(first)),
        folder,
        "dicom",
        rng,
        monochrome1=mono1,
        modality=str(getattr(first, "Modality", "")),
        dicom_files=[str(f) for f, _ in slices],
        **extra,
    )


def _raster_size(path: str) -> tuple[int, int]:
    """(X, Y) of a PIL raster from its header; a header claiming billions of pixels is reported, not refused."""
    from PIL import Image

    Image.init()
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            # Image.open's format sniffing minus its bomb check: thread-safe, unlike lifting MAX_IMAGE_PIXELS
            for factory, accept in (Image.OPEN[fmt] for fmt in Image.ID):
                verdict = not accept or accept(prefix)
                if not verdict or isinstance(verdict, str):  # a str: recognised but unsupported
                    continue
                fp.seek(0)
                try:
                    with factory(fp, path) as img:
                        return img.size[::-1] if _quarter_turned(img) else img.size
                except (SyntaxError, IndexError, TypeError, struct.error):
                    continue  # not this format after all, as Image.open decides
    except Exception as e:
        raise InputError(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); is the file complete?") from e
    raise InputError(f"{path}: cannot be read as an image (no known image format); is the file complete?")


def _existing(path: str | os.PathLike) -> str:
    """``path`` if it is a regular file or folder this process may read; else one sentence (a name too long for the
    file system, a file or folder without read permission: the OS's errors would be tracebacks)."""
    path = str(path)
    try:
        os.stat(path)
    except OSError as e:
        missing = e.errno in (errno.ENOENT, errno.ENOTDIR)
        raise InputError(f"{path}: {'file not found' if missing else (e.strerror or str(e)).lower()}.") from e
    if not (os.path.isfile(path) or os.path.isdir(path)):  # a FIFO would block forever, a device never end
        raise InputError(f"{path}: not a regular file or folder (a pipe, socket or device); give an image file.")
    if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
        raise InputError(f"{path}: no permission to read it; give a file or folder this user may read.")
    return path


def image_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The spatial shape :func:`read_image` gives, (X, Y) or (X, Y, Z), read from the header alone, so that a
    server can refuse an image too large to super-resolve before a pixel is decoded (a 12 KB PNG may declare
    30000x30000). A header bigger than read_image would decode is reported, not refused: the caller decides."""
    path = _existing(path)
    fmt = image_format(path)
    if fmt == "png":
        return _raster_size(path)
    if fmt == "itk":
        size = _itk_header(path).GetSize()
        return size[:2] if len(size) == 3 and size[2] == 1 else size
    if os.path.isdir(path):
        slices = _dicom_series(path, stop_before_pixels=True)
        return (*_dicom_size(slices[0][1], path), len(slices))
    return _dicom_size(dcmread(path, stop_before_pixels=True), path)


def read_image(path: str | os.PathLike, intensity: str | Sequence[float] = "minmax") -> MetaTensor:
    """Read one image or DICOM series into a float32 MetaTensor (1, X, Y[, Z]) in [0, 1].

    Args:
        path: PNG/JPEG/TIFF, DICOM file, DICOM series folder, or NIfTI/NRRD/MHA file.
        intensity: ``"minmax"`` maps the data range (the bit-depth range for PNG) to [0, 1]; a
            ``(lo, hi)`` pair in modality units (e.g. HU) fixes the map instead, clipping outside it.
    """
    path = _existing(path)
    fmt = image_format(path)
    if fmt == "png":
        return _read_png(path, intensity)
    if fmt == "itk":
        return _read_itk(path, intensity)
    if os.path.isdir(path):
        return _read_dicom_series(path, intensity)
    return _read_dicom_file(path, intensity)


class LoadSRImage(Transform):
    """Array transform around :func:`read_image`, so bundle configs can load any supported input."""

    def __init__(self, intensity: str | Sequence[float] = "minmax") -> None:
        self.intensity = intensity

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        return read_image(path, self.intensity)


class LoadSRImaged(MapTransform):
    """Dictionary form of :class:`LoadSRImage`: replaces the file paths under ``keys`` by images."""

    def __init__(
        self, keys: KeysCollection, intensity: str | Sequence[float] = "minmax", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadSRImage(intensity)

    def __call__(self, data: Mapping[Hashable, str]) -> dict[Hashable, MetaTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d
