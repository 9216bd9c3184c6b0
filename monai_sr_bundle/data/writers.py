"""Writers: MetaTensor (1, X, Y[, Z]) in [0, 1] -> PNG or NIfTI/NRRD/MHA in the input's units.

The inverse of :mod:`monai_sr_bundle.data.readers`: values are mapped back with ``meta["intensity_range"]``
(the modality values of 0 and 1), geometry comes from the LPS affine (first array axis = image columns).
MONOCHROME1 DICOM inputs were inverted for display by the reader; PNG and NIfTI outputs keep the displayed
(MONOCHROME2-like) image, and only the DICOM writer re-inverts (``meta["monochrome1_pivot"]``). DICOM output
is a derived series of the input's study (:mod:`monai_sr_bundle.data.derived_dicom`), the default for DICOM
inputs.

Every write is atomic (a hidden temporary file in the target folder, flushed to the disk, then ``os.replace``),
creates the parent folders, and refuses to overwrite the image's own input file; :func:`complete_output` tells a
whole output from one a crash cut short, and :func:`remove_interrupted_writes` removes the temporaries a killed
write left, and nothing else.

Every file a command writes in an output folder, images and the tables, summaries, report pages and figures
beside them alike (:func:`write_table`, :func:`write_json`, :func:`write_text`, :func:`write_figure`), carries
a note naming this tool; :func:`written_by_monai_sr` reads it back and :func:`check_replaceable` is the one rule
by which every command decides what in an output folder it may replace or remove.
"""

from __future__ import annotations

import os
import re
import secrets
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_sr_bundle.data.derived_dicom import SERIES_FILE, write_derived
from monai_sr_bundle.data.outputs import input_paths, sync_to_disk, to_units, usual_mode
from monai_sr_bundle.data.readers import ITK_SUFFIXES, PNG_SUFFIXES, image_format
from monai_sr_bundle.errors import InputError, printable

#: output format name -> default extension
FORMAT_EXTENSIONS = {
    "png": ".png",
    "nifti": ".nii.gz",
    "itk": ".nii.gz",
    "nrrd": ".nrrd",
    "mha": ".mha",
    "dicom": ".dcm",
}
#: extensions a single-file writer can produce atomically (.mhd/.nhdr would write a second data file)
_ITK_OUT = (".nii.gz", ".nii", ".nrrd", ".mha")
_DICOM_OUT = (".dcm", ".dicom")
#: the first word of the provenance every output carries
SOFTWARE = "monai-sr"
#: SimpleITK's key for a file's note (NIfTI ``descrip``; a field of NRRD and MHA headers)
_ITK_NOTE = "ITK_FileNotes"


def _out_family(path: str | os.PathLike) -> str | None:
    name = Path(path).name.lower()
    if name.endswith(".png"):
        return "png"
    if name.endswith(_ITK_OUT):
        return "itk"
    if name.endswith(_DICOM_OUT):
        return "dicom"
    if name.endswith((".mhd", ".nhdr")):
        raise InputError(f"{path}: detached-header output (.mhd/.nhdr) is not supported; use .mha or .nrrd.")
    if name.endswith(PNG_SUFFIXES):
        raise InputError(f"{path}: only PNG is written for 2D rasters (lossless); use .png.")
    return None


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _resolve_path(path: str | os.PathLike, fmt: str | None) -> tuple[Path, str]:
    """The path to write and its family (``png`` / ``itk`` / ``dicom``) from the extension, or from ``fmt``; a
    DICOM path without an extension is a series folder (or, for one instance, gets ``.dcm``)."""
    path = Path(path)
    family = _out_family(path)
    if fmt is not None:
        key = fmt.lower().lstrip(".")
        if key in ("dicom", "dcm"):
            family_fmt = "dicom"
        elif key in FORMAT_EXTENSIONS:
            family_fmt = "png" if key == "png" else "itk"
        else:
            raise InputError(f"{path}: unknown output format {fmt!r}; use one of {sorted(FORMAT_EXTENSIONS)}.")
        if family is None and family_fmt != "dicom":
            path = path.with_name(path.name + FORMAT_EXTENSIONS[key])
        elif family is not None and family != family_fmt:
            raise InputError(f"{path}: the extension does not match the requested format {fmt!r}.")
        family = family_fmt
    if family is None:
        raise InputError(f"{path}: unknown output type; end the name with .png, .nii.gz, .nii, .nrrd, .mha or .dcm.")
    return path, family


def _geometry(affine, ndim: int) -> tuple[list[float], list[float], list[float], int]:
    """(spacing, origin, direction (row-major), dimension) for SimpleITK from an LPS affine.

    A 2D image whose affine places it off the z = 0 plane or tilts it (a CT slice) is written as a
    one-slice volume, so no geometry is lost.
    """
    a = np.eye(4)
    if affine is not None:
        m = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
        if m.shape == (3, 3):  # 2D homogeneous affine
            a[:2, :2], a[:2, 3] = m[:2, :2], m[:2, 2]
        elif m.shape == (4, 4):
            a = m
    lin = a[:3, :3].copy()
    spacing = np.linalg.norm(lin, axis=0)
    for i in range(3):
        if spacing[i] <= 0 or not np.isfinite(spacing[i]):
            spacing[i], lin[:, i] = 1.0, np.eye(3)[:, i]
    direction, origin = lin / spacing[None, :], a[:3, 3]
    if ndim == 2:
        flat = np.allclose(direction[2, :2], 0) and np.allclose(direction[:2, 2], 0) and abs(origin[2]) < 1e-6
        if flat:
            return list(spacing[:2]), list(origin[:2]), list(direction[:2, :2].ravel()), 2
    return list(spacing), list(origin), list(direction.ravel()), 3


def _extension(name: str) -> str:
    """The extension a writer picks the format from (``.nii.gz`` whole)."""
    return name[-7:] if name.lower().endswith(".nii.gz") else os.path.splitext(name)[1]


def _temporary_name(name: str, token: str) -> str:
    """The hidden temporary an atomic write of the file ``name`` goes through: ``.<name>.<token>.tmp<ext>``, the
    extension last because the writers pick the format from it; the one name :func:`remove_interrupted_writes`
    removes."""
    return f".{name}.{token}.tmp{_extension(name)}"


#: a name :func:`_temporary_name` may have made (the output's name, an 8-hex-digit token): checked exactly after
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<token>[0-9a-f]{8})\.tmp.*", re.DOTALL)


def _atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a new hidden temporary file beside ``path`` (:func:`_temporary_name`), flush it to
    the disk, then move it into place: a crash leaves the old file or the whole new one, never one cut short."""
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = str(parent / _temporary_name(path.name, secrets.token_hex(4)))
        try:
            os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{path}: no free name for its temporary file.")
    try:
        write(tmp)
        os.chmod(tmp, usual_mode())  # created private (0600)
        sync_to_disk(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    sync_to_disk(parent)


def remove_interrupted_writes(targets: Iterable[str | os.PathLike]) -> None:
    """Remove what killed writes of ``targets`` left beside them: regular files named exactly as :func:`_atomic`
    names its temporaries that are this tool's (:func:`_left_by_a_write`). A user's file at such a name, a user's
    ``.<output>.notes``, any folder and any link stay (a derived DICOM series' hidden work folder too)."""
    names: dict[Path, set[str]] = {}
    for target in map(Path, targets):
        names.setdefault(target.parent, set()).add(target.name)
    for folder, outputs in names.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:  # no such folder (yet)
            continue
        for entry in entries:
            found = _TEMPORARY.fullmatch(entry.name)
            if (
                found
                and found["name"] in outputs
                and entry.name == _temporary_name(found["name"], found["token"])
                and entry.is_file(follow_symlinks=False)
                and _left_by_a_write(entry.path)
            ):
                os.remove(entry.path)


def _left_by_a_write(path: str) -> bool:
    """Whether the file at a temporary's name is what a killed write of this tool left, not a user's file of that
    name: empty and private, as :func:`_atomic` creates it before its first byte (nothing in it to lose), or with
    the tool's note near its start, where every writer puts it ahead of the pixels (a NIfTI's gzip stream read as
    far as it goes), or near its end (a summary's)."""
    import stat
    import zlib

    try:
        st = os.lstat(path)
        if st.st_size == 0:
            return stat.S_IMODE(st.st_mode) == 0o600
        with open(path, "rb") as f:
            head = f.read(_NOTE_WINDOW)
            f.seek(max(0, st.st_size - _NOTE_WINDOW))
            tail = f.read(_NOTE_WINDOW)
    except OSError:
        return False
    if head.startswith(b"\x1f\x8b"):  # gzip
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, _NOTE_WINDOW)
        except zlib.error:
            pass
    mark = f"{SOFTWARE} ".encode()
    return mark in head or mark in tail


def _software() -> str:
    """``monai-sr <version>``: how every output names the tool that wrote it."""
    import monai_sr_bundle

    return f"{SOFTWARE} {monai_sr_bundle.__version__}"


def _note(method: str) -> str:
    """The provenance a PNG or NIfTI/NRRD/MHA output carries (as DICOM outputs do in DerivationDescription):
    :func:`written_by_monai_sr` tells an earlier output, which a rerun may replace, from a user's file."""
    return f"{_software()}: super-resolution by {method}"


def written_by_monai_sr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an output of this tool (its note or, for DICOM, its derivation; a derived series
    folder: not empty, and every entry in it an instance file of ours, named as the series names them; a table,
    summary or report page: the note :func:`_text_note` finds); an unreadable file is not, nor an empty folder."""
    path = Path(path)
    if path.is_dir():  # the one folder this tool writes: a derived series, instances only, none a link
        try:
            entries = list(os.scandir(path))
        except OSError:
            return False
        return bool(entries) and all(
            SERIES_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False) and written_by_monai_sr(e.path)
            for e in entries
        )
    if not path.is_file():
        return False
    try:
        if path.suffix.lower() in _TEXT_SUFFIXES:
            return _text_note(path)
        family = _out_family(path)
        if family == "png":
            from PIL import Image

            with Image.open(path) as image:
                return str(image.info.get("Software", "")).startswith(SOFTWARE)
        if family == "itk":
            import SimpleITK as sitk  # noqa: N813 (the library's own usual name)

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            return reader.HasMetaDataKey(_ITK_NOTE) and reader.GetMetaData(_ITK_NOTE).startswith(SOFTWARE)
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["DerivationDescription"])
        return f"({SOFTWARE} " in str(ds.get("DerivationDescription", ""))
    except Exception:  # whatever is unreadable here is somebody else's file
        return False


#: the chunk that ends every PNG
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def complete_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole output of this tool, one a resumed run (``--skip-existing``) may keep: written by
    it (:func:`written_by_monai_sr`) and not cut short, which the note alone cannot tell, as it is in the header.
    A PNG must end with its IEND chunk; a NIfTI hold the bytes its header declares (gzip read to its end, its
    checksum checked); NRRD, MHA and DICOM decode (their readers refuse a short file); a derived series folder:
    every instance. Cheap beside super-resolving again, and a wrong "no" costs only that."""
    from monai_sr_bundle.data.readers import read_image

    path = Path(path)
    if not written_by_monai_sr(path):
        return False
    try:
        for file in sorted(path.iterdir()) if path.is_dir() else [path]:
            name = file.name.lower()
            if name.endswith(".png"):
                with open(file, "rb") as f:
                    f.seek(max(0, file.stat().st_size - len(_PNG_END)))
                    if f.read() != _PNG_END:
                        return False
            elif name.endswith((".nii", ".nii.gz")):
                import gzip

                import nibabel as nib

                header = nib.load(file).header
                need = (
                    int(header.get_data_offset())
                    + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
                )
                size = file.stat().st_size
                if name.endswith(".gz"):
                    with gzip.open(file, "rb") as f:  # EOFError when cut short, BadGzipFile when altered
                        size = 0
                        while (chunk := f.read(1 << 20)) and size <= need:
                            size += len(chunk)
                if size < need:
                    return False
            else:
                read_image(file)
    except Exception:  # cut short, unreadable: not complete
        return False
    return True


def check_replaceable(paths: Iterable[str | os.PathLike]) -> None:
    """Refuse a run that would replace or remove a file at one of ``paths`` that this tool did not write
    (:func:`written_by_monai_sr`; a dangling link, an unreadable file or an empty folder counts as not ours), or
    that would need a folder where a user's file is: the one rule by which ``monai-sr sr``, the demo, evaluation
    and the report tell their own earlier outputs, which a rerun replaces, from a user's files, which are left
    alone. Callers ask before they write anything; besides the paths they asked about, they remove only what
    :func:`remove_interrupted_writes` tells as theirs and create only new names (``O_EXCL``, ``mkdtemp``)."""
    for path in map(Path, paths):
        blocker = _not_a_folder_above(path)
        if blocker is not None:
            raise InputError(
                f"{printable(blocker)}: is a file where monai-sr would make a folder for its outputs; move it or give "
                "another output folder (nothing was written)."
            )
        if os.path.lexists(path) and not written_by_monai_sr(path):
            raise InputError(
                f"{printable(path)}: already exists and was not written by monai-sr; move it or give another output "
                "folder (nothing was written)."
            )


def _not_a_folder_above(path: Path) -> Path | None:
    """The nearest existing thing above ``path`` when it is no folder (a file, a dangling link), where writing
    ``path`` would have to make a folder; None when it is a folder."""
    for parent in path.parents:
        if os.path.isdir(parent):
            return None
        if os.path.lexists(parent):
            return parent
    return None


#: the text outputs (tables, summaries, report pages), each noting the tool where its format keeps a note
_TEXT_SUFFIXES = (".csv", ".json", ".md", ".html")
#: how much of a text output is read to find its note (a user's huge file is not read whole)
_NOTE_WINDOW = 1 << 16
#: the first characters that make a spreadsheet read a cell as a formula (CSV injection)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text_note(path: Path) -> bool:
    """Whether the text output ``path`` carries the note its writer puts in (:func:`write_table`,
    :func:`write_json`, :func:`write_text`)."""
    suffix, mark = path.suffix.lower(), f"{SOFTWARE} "
    with open(path, "rb") as f:
        if suffix == ".md":  # the note ends the file
            f.seek(max(0, path.stat().st_size - _NOTE_WINDOW))
        text = f.read(_NOTE_WINDOW).decode("utf-8", errors="replace")
    if suffix == ".md":
        return re.search(r"<!-- " + re.escape(mark) + r"[^<>]* -->\s*\Z", text) is not None
    if suffix == ".html":
        head, closed, _ = text.partition("</head>")
        return bool(closed) and f'<meta name="generator" content="{mark}' in head
    if suffix == ".json":
        return re.match(r'\{\s*"software": "' + re.escape(mark), text) is not None
    import csv
    import io

    rows = csv.reader(io.StringIO(text, newline=""))
    header, first = next(rows, []), next(rows, [])
    return header[-1:] == ["software"] and len(first) == len(header) and first[-1].startswith(mark)


def _cell(value):
    """A CSV cell a spreadsheet shows as it is: text that starts like a formula (``=``, ``+``, ``-``, ``@``, a tab
    or a carriage return, e.g. an input named ``=HYPERLINK(...).png``) gets a leading ``'``, which spreadsheets
    read as "text" and hide; numbers are written as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value


def write_table(path: str | os.PathLike, rows: Sequence[Mapping]) -> Path:
    """Write ``rows`` (dicts with the first row's keys) as CSV, atomically, with a last column ``software``
    (``monai-sr <version>``), the note by which :func:`written_by_monai_sr` knows the table as this tool's: CSV
    has no place for a note that every reader skips. Cells that a spreadsheet would run as a formula are
    neutralised (:func:`_cell`)."""
    import csv
    import io

    columns = [*rows[0], "software"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows([_cell(row.get(c)) for c in columns[:-1]] + [_software()] for row in rows)
    return _write_bytes(Path(path), text.getvalue().encode("utf-8"))


def write_json(path: str | os.PathLike, content: Mapping) -> Path:
    """Write ``content`` as indented JSON, atomically, with ``"software": "monai-sr <version>"`` as its first key
    (the note :func:`written_by_monai_sr` reads)."""
    import json

    return _write_bytes(Path(path), json.dumps({"software": _software(), **content}, indent=2).encode("utf-8"))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a report page (``.html``, with a ``<head>``) or a summary (``.md``), atomically, with the tool's note
    where the format keeps one: a generator meta tag in the page's head; an HTML comment ending the Markdown,
    hidden where it is rendered."""
    path, note = Path(path), _software()
    if path.suffix.lower() == ".html" and "<head>" in text:
        text = text.replace("<head>", f'<head><meta name="generator" content="{note}">', 1)
    elif path.suffix.lower() == ".md":
        text = f"{text.rstrip()}\n\n<!-- {note} -->\n"
    else:
        raise ValueError(f"{path}: write_text writes an HTML page with a <head> or a Markdown file.")
    return _write_bytes(path, text.encode("utf-8"))


def write_figure(image, path: str | os.PathLike) -> Path:
    """Write a PIL image (a report's figure or zoomed crop) as PNG, atomically, with the ``Software`` note every
    PNG output carries."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"{_software()}: a report figure")
    path = Path(path)
    _atomic(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    _atomic(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


def _write_png(arr: np.ndarray, rng, path: Path, name: str, method: str) -> None:
    from PIL import Image, PngImagePlugin

    if arr.ndim == 3:
        if arr.shape[2] != 1:
            raise InputError(
                f"{name}: a PNG holds one 2D image, not a {arr.shape[2]}-slice volume; write .nii.gz instead."
            )
        arr = arr[..., 0]
    vals, lo, hi = to_units(arr, rng, (0.0, 255.0))
    if lo < 0 or hi > 65535:
        warnings.warn(
            f"{name}: intensity range ({lo:g}, {hi:g}) does not fit a PNG; writing the [0, 1] image as 16-bit.",
            stacklevel=3,
        )
        vals, hi = np.clip(arr.astype(np.float64), 0.0, 1.0) * 65535.0, 65535.0
    top, dtype = (255, np.uint8) if hi <= 255 else (65535, np.uint16)
    pixels = np.clip(np.rint(vals), 0, top).astype(dtype).T  # (X, Y) -> rows (Y, X)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", _note(method))
    _atomic(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def _write_itk(arr: np.ndarray, rng, affine, path: Path, dtype, method: str) -> None:
    import SimpleITK as sitk  # noqa: N813 (the library's own usual name)

    vals, _, _ = to_units(arr, rng, (0.0, 1.0))
    dtype = np.dtype(dtype or np.float32)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        vals = np.clip(np.rint(vals), info.min, info.max)
    spacing, origin, direction, dim = _geometry(affine, arr.ndim)
    if dim == 3 and vals.ndim == 2:
        vals = vals[..., None]
    image = sitk.GetImageFromArray(np.ascontiguousarray(vals.astype(dtype).T))  # (X, Y[, Z]) -> (Z, Y, X)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    image.SetMetaData(_ITK_NOTE, _note(method))
    _atomic(path, lambda tmp: sitk.WriteImage(image, tmp, not path.name.lower().endswith(".nii")))


def write_image(
    img: MetaTensor | torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    dtype: np.dtype | type | str | None = None,
    overwrite: bool = True,
    method: str = "an unnamed method",
) -> Path:
    """Write a (1, X, Y) or (1, X, Y, Z) image in [0, 1] to ``path`` in the input's units; return the path.

    Args:
        img: the image; a MetaTensor's ``meta["intensity_range"]`` (lo, hi) maps [0, 1] back to modality
            units (without it: 8-bit for PNG, [0, 1] floats for NIfTI/NRRD/MHA) and its affine (LPS) gives
            spacing, origin and direction. Values are clipped to [0, 1] first.
        path: ``.png`` (8-bit when hi <= 255, else 16-bit; 2D only), ``.nii.gz``/``.nii``/``.nrrd``/``.mha``,
            or ``.dcm`` / a folder (``fmt="dicom"``): a derived series of the DICOM input
            (:func:`monai_sr_bundle.data.derived_dicom.write_derived`).
        fmt: ``png``, ``nifti``, ``nrrd``, ``mha``, ``itk`` or ``dicom``: the format when ``path`` has no
            extension (the extension is appended, except for a DICOM series); otherwise it must agree with it.
        dtype: voxel type of NIfTI/NRRD/MHA output (default float32; integer types round and clip).
        overwrite: replace an existing output file (never the image's own input).
        method: the SR method's name, recorded in a DICOM output.

    Raises:
        InputError: unsupported path or shape, non-finite values, the input file as the output, or a failed
            write; nothing is left behind.
    """
    path, family = _resolve_path(path, fmt)
    meta = dict(getattr(img, "meta", None) or {})
    for src in input_paths(meta):
        if _same_file(path, src):
            raise InputError(f"{path}: refusing to overwrite the input image; choose another output path.")
    if path.is_dir() and family != "dicom":  # a derived DICOM series is a folder
        raise InputError(f"{path}: is a folder; give an output file name.")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; remove it or allow overwriting.")
    if isinstance(img, torch.Tensor):
        arr = img.detach().cpu().float().numpy() if img.dtype == torch.bfloat16 else img.detach().cpu().numpy()
    else:
        arr = np.asarray(img)
    if arr.ndim not in (3, 4) or arr.shape[0] != 1:
        raise InputError(f"{path}: expected an image of shape (1, X, Y) or (1, X, Y, Z), got {tuple(arr.shape)}.")
    arr = arr[0]
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: the image to write contains NaN or infinite values; nothing was written.")
    rng = meta.get("intensity_range")
    affine = getattr(img, "affine", None) if isinstance(img, MetaTensor) else meta.get("affine")
    try:
        if family == "png":
            _write_png(arr, rng, path, str(path), method)
        elif family == "dicom":
            path = write_derived(arr, meta, path, method, overwrite=overwrite)
        else:
            _write_itk(arr, rng, affine, path, dtype, method)
    except InputError:
        raise
    except Exception as e:  # disk full, permissions, writer errors
        raise InputError(f"{path}: cannot be written ({type(e).__name__}: {e}).") from e
    return path


def _split_name(path: Path, family: str) -> tuple[str, str]:
    """(stem, output extension) for an input of the given family."""
    name, lower = path.name, path.name.lower()
    if family == "png":
        for suf in PNG_SUFFIXES:
            if lower.endswith(suf):
                return name[: -len(suf)], ".png"
        return name, ".png"
    if family == "itk":
        for suf in sorted(ITK_SUFFIXES, key=len, reverse=True):
            if lower.endswith(suf):
                return name[: -len(suf)], {".nhdr": ".nrrd", ".mhd": ".mha"}.get(suf, suf)
        return name, ".nii.gz"
    for suf in _DICOM_OUT:  # DICOM file or series folder; names like CT.1.2.840... keep their dots
        if lower.endswith(suf):
            return name[: -len(suf)], ".dcm"
    return name, "" if path.is_dir() else ".dcm"


def output_format_for(source_format: str, fmt: str | None = None) -> str | None:
    """The output format: ``fmt`` when given, else the input's family (``None``: from the extension), and a
    DICOM input's a derived DICOM series."""
    return fmt or ("dicom" if source_format == "dicom" else None)


def output_path_for(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    suffix: str = "_sr",
    *,
    source_format: str | None = None,
    fmt: str | None = None,
) -> Path:
    """The output file for ``input_path`` in ``out_dir``: ``<stem><suffix><ext>``.

    The extension follows the input's family: PNG/JPEG/TIFF -> ``.png``; NIfTI/NRRD/MHA -> the same
    (``.mhd`` -> ``.mha``, ``.nhdr`` -> ``.nrrd``); DICOM file -> ``.dcm``, DICOM series folder -> a folder
    (a derived series, see :func:`write_image`). ``source_format`` (``png``/``itk``/``dicom``, e.g. from
    ``meta["source_format"]``) skips looking at the input; ``fmt`` (see :func:`write_image`) forces the output format.

    Raises:
        InputError: when the result would be the input itself (e.g. empty suffix, same folder).
    """
    src = Path(input_path)
    family = source_format
    if family is None:
        if src.exists():
            family = image_format(src)
        else:
            lower = src.name.lower()
            family = "png" if lower.endswith(PNG_SUFFIXES) else "itk" if lower.endswith(ITK_SUFFIXES) else "dicom"
    if family not in ("png", "itk", "dicom"):
        raise InputError(f"{input_path}: unknown source format {family!r}; use 'png', 'itk' or 'dicom'.")
    stem, ext = _split_name(src, family)
    if fmt is not None:
        key = fmt.lower().lstrip(".")
        if key not in FORMAT_EXTENSIONS:
            raise InputError(f"{input_path}: unknown output format {fmt!r}; use one of {sorted(FORMAT_EXTENSIONS)}.")
        ext = "" if key == "dicom" and family == "dicom" and ext == "" else FORMAT_EXTENSIONS[key]
    out = Path(out_dir) / f"{stem}{suffix}{ext}"
    if _same_file(out, src):
        raise InputError(f"{input_path}: the output path is the input itself; give a suffix or another output folder.")
    return out


class SaveSRImaged(MapTransform):
    """Write the images under ``keys`` to ``output_dir``, named after their input (``meta["filename_or_obj"]``).

    ``<output_dir>/<input stem>_<output_postfix><ext>`` with the extension of :func:`output_path_for`;
    the written path is recorded in ``meta["saved_to"]``. Inputs with the same stem in different folders
    map to the same output name, so give each its own ``output_dir`` if that can happen.

    Args:
        keys: keys of the images to write.
        output_dir: folder for the outputs (created if missing).
        output_postfix: added to the input's stem after an underscore (``""`` for none).
        fmt: force an output format (``png``, ``nifti``, ``nrrd``, ``mha``, ``dicom``); default follows the
            input (a DICOM input gives a derived DICOM series).
        dtype: voxel type of NIfTI/NRRD/MHA outputs (default float32).
        method: the SR method's name, recorded in DICOM outputs.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_postfix: str = "sr",
        fmt: str | None = None,
        dtype: np.dtype | type | str | None = None,
        method: str = "an unnamed method",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.method = method
        self.output_dir = output_dir
        self.suffix = f"_{output_postfix}" if output_postfix else ""
        self.fmt = fmt
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, MetaTensor]) -> dict[Hashable, MetaTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = getattr(img, "meta", None) or {}
            srcs = input_paths(meta)
            if not srcs:
                raise InputError(f"{key}: the image has no meta['filename_or_obj'] to name its output after.")
            fam = meta.get("source_format")
            fam = fam if isinstance(fam, str) else None
            fmt = output_format_for(fam, self.fmt)
            out = output_path_for(srcs[0], self.output_dir, self.suffix, source_format=fam, fmt=fmt)
            written = write_image(img, out, fmt, dtype=self.dtype, method=self.method)
            if isinstance(img, MetaTensor):
                img.meta["saved_to"] = str(written)
        return d
