"""What every writer shares (:mod:`~monai_sr_bundle.data.writers`, :mod:`~monai_sr_bundle.data.derived_dicom`):
the files an image was read from, the map from [0, 1] back to modality units, the permissions of a new file, and
flushing a write to the disk."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np


def input_paths(meta: Mapping) -> list[str]:
    """The files an image was read from: its input (a file or a series folder), then a series' files in slice
    order."""
    src = meta.get("filename_or_obj")
    if isinstance(src, (list, tuple)):  # collated batch of one
        src = src[0] if len(src) else None
    paths = [str(src)] if src else []
    return paths + [str(f) for f in meta.get("dicom_files", []) or []]


def to_units(
    arr: np.ndarray, rng: Sequence[float] | None, default: tuple[float, float]
) -> tuple[np.ndarray, float, float]:
    """``arr`` in [0, 1] mapped back to the modality values ``rng`` (their 0 and 1; ``default`` when the image
    has none), with the range's ends."""
    lo, hi = (float(v) for v in (rng if rng is not None else default))
    return np.clip(arr.astype(np.float64), 0.0, 1.0) * (hi - lo) + lo, lo, hi


def usual_mode(folder: bool = False) -> int:
    """The permissions a new file (or folder) gets from this process's umask; temp files and folders start
    private (0600 / 0700), so an output moved into place gets these."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def sync_to_disk(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries (a rename into it), to the disk: an atomic write's temporary
    before it is moved into place, and its folder after, so that a crash leaves the old output or the whole new
    one, never one cut short under the output's name. A folder is flushed where the system can (not on Windows,
    nor on file systems that refuse it); a file that cannot be flushed is an error."""
    folder = os.path.isdir(path)
    if folder and os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR)  # Windows flushes only a handle open for writing
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not folder:
            raise
