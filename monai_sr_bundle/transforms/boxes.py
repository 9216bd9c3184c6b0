"""Abnormality bounding boxes: rescaling, validation, cropping and rasterising to masks.

Boxes are float tensors (N, 4) of (x0, y0, x1, y1) pixel coordinates in the (C, X, Y) axis order of the
images, so ``img[:, x0:x1, y0:y1]`` is the box; N may be 0 (images without findings). The box-weighted
loss of ADSR (MIDL 2024) weights the pixels inside the boxes; :class:`BoxesToMaskd` turns boxes into a
mask image that MONAI's spatial transforms then crop and flip together with the images.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TraceKeys

from monai_sr_bundle.errors import InputError

__all__ = [
    "as_boxes",
    "validate_boxes",
    "crop_boxes",
    "ScaleBoxes",
    "ScaleBoxesd",
    "BoxesToMask",
    "BoxesToMaskd",
    "CropBoxesd",
]


def as_boxes(boxes: Any, name: str = "boxes") -> torch.Tensor:
    """``boxes`` (tensor, array or nested list) as a floating (N, 4) tensor; an empty input gives (0, 4).

    Integer input becomes float32; floating input keeps its dtype.

    Raises:
        InputError: if the boxes are not shaped (N, 4).
    """
    t = torch.as_tensor(boxes.as_tensor() if isinstance(boxes, MetaTensor) else boxes)
    if t.numel() == 0:
        return torch.zeros((0, 4), dtype=t.dtype if t.is_floating_point() else torch.float32)
    if t.ndim != 2 or t.shape[1] != 4:
        raise InputError(f"`{name}` must be shaped (N, 4) as (x0, y0, x1, y1) rows, got shape {tuple(t.shape)}.")
    return t if t.is_floating_point() else t.to(torch.float32)


def validate_boxes(boxes: Any, spatial_shape: Sequence[int], name: str = "boxes", tol: float = 1e-3) -> torch.Tensor:
    """Check that boxes are (N, 4), finite, of positive size and inside an image of ``spatial_shape`` (X, Y).

    Args:
        boxes: (N, 4) boxes (x0, y0, x1, y1).
        spatial_shape: (X, Y) of the image the boxes belong to.
        name: how to call the boxes in the error (e.g. the image file name).
        tol: slack in pixels for rounding after rescaling.

    Returns:
        the boxes as a floating (N, 4) tensor.

    Raises:
        InputError: one sentence naming the first problem found.
    """
    b = as_boxes(boxes, name)
    sx, sy = (int(s) for s in spatial_shape[-2:])
    for i, row in enumerate(b.tolist()):
        x0, y0, x1, y1 = row
        desc = f"`{name}` box {i} (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g})"
        if not all(math.isfinite(v) for v in row):
            raise InputError(f"{desc} has a non-finite coordinate; remove or fix that box.")
        if x1 <= x0 or y1 <= y0:
            raise InputError(
                f"{desc} has a non-positive size; boxes must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0."
            )
        if x0 < -tol or y0 < -tol or x1 > sx + tol or y1 > sy + tol:
            raise InputError(
                f"{desc} extends outside the image of spatial shape ({sx}, {sy}); scale the boxes to this "
                "image's resolution first (e.g. 0.5 for NIH 1024-pixel boxes on 512-pixel images)."
            )
    return b


def crop_boxes(
    boxes: Any, start: Sequence[float], size: Sequence[float], return_indices: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Boxes in the frame of the crop ``[start, start + size)``: shifted, clipped, empty ones dropped.

    Args:
        boxes: (N, 4) boxes (x0, y0, x1, y1) in the uncropped image.
        start: (x, y) of the crop's first pixel in the uncropped image.
        size: (X, Y) of the crop.
        return_indices: also return the indices of the kept boxes (to filter their labels).
    """
    b = as_boxes(boxes)
    shift = torch.as_tensor([start[0], start[1], start[0], start[1]], dtype=b.dtype)
    upper = torch.as_tensor([size[0], size[1], size[0], size[1]], dtype=b.dtype)
    out = torch.minimum(torch.clamp(b - shift, min=0), upper)
    keep = torch.nonzero((out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])).flatten()
    out = out[keep]
    return (out, keep) if return_indices else out


class ScaleBoxes(Transform):
    """Rescale boxes by a factor: 0.5 for NIH 1024-pixel boxes on 512-pixel images, ``1 / scale`` for LR.

    Args:
        factor: one factor, or (fx, fy) per spatial axis; must be positive.
    """

    backend = ["torch"]

    def __init__(self, factor: float | Sequence[float]) -> None:
        f = [float(factor)] * 2 if isinstance(factor, (int, float)) else [float(v) for v in factor]
        if len(f) != 2 or min(f) <= 0:
            raise InputError(f"ScaleBoxes `factor` must be a positive number or an (fx, fy) pair, got {factor!r}.")
        self.factor = tuple(f)

    def __call__(self, boxes: Any) -> torch.Tensor:
        b = as_boxes(boxes)
        fx, fy = self.factor
        return b * torch.as_tensor([fx, fy, fx, fy], dtype=b.dtype)


class ScaleBoxesd(MapTransform):
    """Dictionary form of :class:`ScaleBoxes`.

    Args:
        keys: keys of the boxes to rescale.
        factor: as in :class:`ScaleBoxes`.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = ScaleBoxes.backend

    def __init__(self, keys: KeysCollection, factor: float | Sequence[float], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleBoxes(factor)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class BoxesToMask(Transform):
    """Rasterise boxes into a (1, X, Y) float32 mask, 1 on every pixel a box touches, for box-weighted losses.

    Boxes are clipped to the image; a box with integer corners covers exactly ``mask[:, x0:x1, y0:y1]``,
    fractional corners cover every pixel they overlap.

    Args:
        spatial_shape: (X, Y) of the mask, unless given per call.
    """

    backend = ["torch"]

    def __init__(self, spatial_shape: Sequence[int] | None = None) -> None:
        self.spatial_shape = None if spatial_shape is None else tuple(int(s) for s in spatial_shape)

    def __call__(self, boxes: Any, spatial_shape: Sequence[int] | None = None) -> torch.Tensor:
        shape = tuple(int(s) for s in spatial_shape) if spatial_shape is not None else self.spatial_shape
        if shape is None or len(shape) != 2:
            raise InputError(f"BoxesToMask needs a 2D spatial shape (X, Y), got {shape!r}.")
        mask = torch.zeros((1, *shape), dtype=torch.float32)
        for x0, y0, x1, y1 in as_boxes(boxes).tolist():
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                continue
            ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
            ix1, iy1 = min(shape[0], math.ceil(x1)), min(shape[1], math.ceil(y1))
            if ix1 > ix0 and iy1 > iy0:
                mask[0, ix0:ix1, iy0:iy1] = 1.0
        return mask


class BoxesToMaskd(MapTransform):
    """Dictionary form of :class:`BoxesToMask`: ``d[mask_key] = mask of d[key]``.

    With ``ref_key`` the mask takes the reference image's spatial shape and, for a MetaTensor, its affine,
    so later spatial transforms (crops, flips) treat mask and image alike.

    Args:
        keys: keys of the boxes.
        ref_key: key of the image whose spatial shape the mask takes.
        spatial_shape: fixed (X, Y), used when ``ref_key`` is None.
        mask_keys: output keys, one per box key; default ``f"{key}_mask"``.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = BoxesToMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str | None = None,
        spatial_shape: Sequence[int] | None = None,
        mask_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if ref_key is None and spatial_shape is None:
            raise InputError("BoxesToMaskd needs `ref_key` (an image key) or a fixed `spatial_shape`.")
        self.ref_key = ref_key
        self.to_mask = BoxesToMask(spatial_shape)
        if mask_keys is None:
            self.mask_keys = tuple(f"{k}_mask" for k in self.keys)
        else:
            self.mask_keys = (mask_keys,) if isinstance(mask_keys, str) else tuple(mask_keys)
        if len(self.mask_keys) != len(self.keys):
            raise InputError(f"BoxesToMaskd got {len(self.keys)} box keys but {len(self.mask_keys)} `mask_keys`.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key] if self.ref_key is not None else None
        for key, mask_key in self.key_iterator(d, self.mask_keys):
            if ref is None:
                d[mask_key] = self.to_mask(d[key])
                continue
            mask = self.to_mask(d[key], ref.shape[1:])
            d[mask_key] = MetaTensor(mask, affine=ref.affine.clone()) if isinstance(ref, MetaTensor) else mask
        return d


class CropBoxesd(MapTransform):
    """Follow the crop just applied to ``ref_key`` (e.g. by ``RandSpatialCropd``) with the boxes.

    Reads the crop offset MONAI recorded in the reference image's last ``applied_operations`` entry,
    then applies :func:`crop_boxes`. Place it directly after the crop. For other spatial transforms
    (flips, rotations) rasterise first with :class:`BoxesToMaskd` instead.

    Args:
        keys: keys of the boxes.
        ref_key: key of the cropped image (a MetaTensor with traced transforms).
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = ["torch"]

    def __init__(self, keys: KeysCollection, ref_key: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        ops = getattr(ref, "applied_operations", None) or []
        cropped = ops[-1].get(TraceKeys.EXTRA_INFO, {}).get("cropped") if ops else None
        if cropped is None or len(cropped) != 4:
            raise InputError(
                f"CropBoxesd found no 2D crop as the last transform of `{self.ref_key}`; "
                "place it directly after the crop transform."
            )
        start = (cropped[0], cropped[2])
        size = tuple(int(s) for s in ref.shape[1:])
        for key in self.key_iterator(d):
            d[key] = crop_boxes(d[key], start, size)
        return d
