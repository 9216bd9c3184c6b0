"""A Slicer volume (voxel array in K, J, I order + the 4x4 IJK-to-RAS matrix, as ``slicer.util.arrayFromVolume``
and ``GetIJKToRASMatrix`` give them) to an image file and back, through SimpleITK in LPS, so the SR process
sees the radiograph or CT with its spacing, origin and direction, and the result comes back placed right."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class VolumeError(ValueError):
    """The volume cannot be super-resolved; the message says why in one sentence."""


def check_volume(array: np.ndarray | None, name: str = "the input volume") -> np.ndarray:
    """The voxel array as (K, J, I) if SR can take it: present, 3D (a radiograph is one slice), not empty,
    finite and not constant."""
    if array is None:
        raise VolumeError(f"{name} has no image data; load an image first.")
    array = np.asarray(array)
    if array.ndim != 3:
        raise VolumeError(
            f"{name} is {array.ndim}D with shape {array.shape}; pick a 2D radiograph or a 3D volume (not a "
            "4D/vector volume)."
        )
    if array.size == 0 or min(array.shape[1:]) < 2:
        raise VolumeError(f"{name} has no pixels in-plane (shape {array.shape}).")
    if not np.isfinite(array).all():
        raise VolumeError(f"{name} contains NaN or infinite values.")
    if array.min() == array.max():
        raise VolumeError(f"{name} is constant; there is no detail to super-resolve.")
    return array


def _split(ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing (3,), LPS direction 3x3 with unit columns, LPS origin (3,)) of an IJK-to-RAS matrix."""
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise VolumeError("the volume's IJK-to-RAS matrix must be a finite 4x4 matrix.")
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    if (spacing <= 0).any():
        raise VolumeError("the volume has a zero spacing.")
    return spacing, RAS_TO_LPS @ (m[:3, :3] / spacing), RAS_TO_LPS @ m[:3, 3]


def write_volume(array: np.ndarray, ijk_to_ras: np.ndarray, path: str) -> None:
    """Write ``array`` (K, J, I) with its geometry to ``path`` (NIfTI, NRRD or MHA by extension)."""
    array = check_volume(array)
    spacing, direction, origin = _split(ijk_to_ras)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin(origin.tolist())
    sitk.WriteImage(image, str(path))


def read_volume(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(array (K, J, I), IJK-to-RAS 4x4) of an image file, as ``slicer.util.updateVolumeFromArray`` and
    ``SetIJKToRASMatrix`` take them."""
    image = sitk.ReadImage(str(path))
    if image.GetDimension() == 2:  # a 2D file: one slice at z = 0
        image = sitk.JoinSeries([image])
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    m[:3, 3] = RAS_TO_LPS @ np.asarray(image.GetOrigin())
    return sitk.GetArrayFromImage(image), m
