"""Abnormality boxes as 3D Slicer markups ROI JSON, the file format of Slicer's ROI tool and of MONAI Label's
detection path, so boxes drawn in Slicer reach training without conversion on the client.

A box (x0, y0, x1, y1) in the pixel-edge coordinates of :mod:`monai_sr_bundle.transforms.boxes` is one ROI
in the image's LPS physical space: ``center`` and ``size`` in mm along the image axes. Reading goes the other
way for any ROI orientation (a rotated ROI becomes its bounding box in pixels) and checks everything a
client could get wrong, so a malformed or misplaced box is refused before it is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.transforms.boxes import as_boxes, validate_boxes

__all__ = ["boxes_to_markups", "markups_to_boxes", "MAX_BOXES", "MAX_FINDING_LENGTH"]

SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/main/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
#: more boxes than any radiograph has findings: a larger file is refused rather than parsed
MAX_BOXES = 256
MAX_FINDING_LENGTH = 128


def _geometry(affine: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(directions 3x3 with unit columns, spacing (3,), origin (3,)) of a 4x4 LPS affine."""
    a = np.asarray(torch.as_tensor(affine, dtype=torch.float64), dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise InputError(f"the image geometry must be a finite 4x4 affine, got shape {a.shape}.")
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if (spacing <= 0).any():
        raise InputError("the image geometry has a zero spacing; boxes cannot be placed on it.")
    return a[:3, :3] / spacing, spacing, a[:3, 3]


def boxes_to_markups(boxes: Any, findings: Sequence[str], affine: Any) -> dict:
    """A markups ROI document for ``boxes`` (N, 4) on an image with the 4x4 LPS ``affine``, one ROI per box
    named after its finding (also the control point's label, which Slicer shows in the views)."""
    b = as_boxes(boxes).double().numpy()
    if len(findings) != len(b):
        raise InputError(f"{len(b)} boxes but {len(findings)} finding names; give one name per box.")
    directions, spacing, origin = _geometry(affine)
    markups = []
    for (x0, y0, x1, y1), finding in zip(b, findings):
        # pixel k covers the edges [k, k + 1) and its centre is index k: edge e is index e - 0.5
        index = np.array([(x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5, 0.0])
        center = origin + directions @ (index * spacing)
        size = [(x1 - x0) * spacing[0], (y1 - y0) * spacing[1], spacing[2]]
        point = {"id": "1", "label": str(finding), "position": center.tolist(), "positionStatus": "defined"}
        markups.append(
            {
                "type": "ROI",
                "name": str(finding),
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "roiType": "Box",
                "center": center.tolist(),
                "orientation": directions.flatten().tolist(),
                "size": size,
                "controlPoints": [point],
            }
        )
    return {"@schema": SCHEMA, "markups": markups}


def _numbers(value: Any, n: int, what: str) -> np.ndarray:
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise InputError(f"{what} must be a list of {n} numbers, got {str(value)[:80]!r}.")
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{what} has a non-finite number.")
    return arr


def _finding(roi: dict, where: str) -> str:
    """The finding name: the ROI's ``name``, else its first control point's ``label``, else MONAI Label's
    ``label.value``."""
    points = roi.get("controlPoints")
    candidates = [
        roi.get("name"),
        points[0].get("label") if isinstance(points, list) and points and isinstance(points[0], dict) else None,
        roi.get("label", {}).get("value") if isinstance(roi.get("label"), dict) else None,
    ]
    name = next((c.strip() for c in candidates if isinstance(c, str) and c.strip()), None)
    if name is None:
        raise InputError(f"{where} has no finding name; name the ROI after its finding (e.g. 'Nodule').")
    if len(name) > MAX_FINDING_LENGTH or not name.isprintable():
        raise InputError(
            f"{where} has a finding name that is not printable text of at most {MAX_FINDING_LENGTH} characters."
        )
    return name


def markups_to_boxes(
    doc: Any, affine: Any, spatial_shape: Sequence[int], name: str = "boxes"
) -> tuple[torch.Tensor, list[str]]:
    """Boxes (N, 4) in pixel-edge coordinates and their finding names from a markups ROI document.

    Args:
        doc: the parsed JSON (a dict with a ``markups`` list of ROIs).
        affine: 4x4 LPS affine of the image the boxes are drawn on.
        spatial_shape: (X, Y) of that image, or (X, Y, Z) of a volume: a box must meet one of its slices.
        name: how to call the document in errors (e.g. the image id).

    Raises:
        InputError: one sentence naming the first problem: not a markups document, a markup that is not
            an ROI, a coordinate that is not a number, a negative or zero size, a box outside the image or
            off its plane (a box at z = 5000 mm on a radiograph).
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
        raise InputError(f"`{name}` is not a 3D Slicer markups document: it needs a 'markups' list of ROIs.")
    rois = doc["markups"]
    if len(rois) > MAX_BOXES:
        raise InputError(f"`{name}` has {len(rois)} markups; at most {MAX_BOXES} boxes are accepted per image.")
    directions, spacing, origin = _geometry(affine)
    depth = int(spatial_shape[2]) if len(spatial_shape) > 2 else 1
    boxes, findings = [], []
    for i, roi in enumerate(rois):
        where = f"`{name}` markup {i}"
        if not isinstance(roi, dict) or roi.get("type") != "ROI":
            raise InputError(
                f"{where} is not an ROI (type {roi.get('type') if isinstance(roi, dict) else roi!r}); save "
                "boxes with Slicer's ROI tool."
            )
        system = roi.get("coordinateSystem", "LPS")
        if system not in ("LPS", "RAS") or roi.get("coordinateUnits", "mm") != "mm":
            raise InputError(f"{where}: coordinates must be LPS or RAS in mm.")
        center = _numbers(roi.get("center"), 3, f"{where} 'center'")
        size = _numbers(roi.get("size"), 3, f"{where} 'size'")
        if size[0] <= 0 or size[1] <= 0 or size[2] < 0:
            raise InputError(f"{where} has a negative or zero size {size.tolist()}; draw the box again.")
        rotation = (
            np.eye(3)
            if "orientation" not in roi
            else _numbers(roi["orientation"], 9, f"{where} 'orientation'").reshape(3, 3)
        )
        flip = np.diag([-1.0, -1.0, 1.0]) if system == "RAS" else np.eye(3)
        corners = [center + rotation @ (np.array([sx, sy, 0.0]) * size / 2) for sx in (-1, 1) for sy in (-1, 1)]
        index = np.stack([(directions.T @ (flip @ c - origin)) / spacing for c in corners])
        slice_at, reach = float(index[:, 2].mean()), size[2] / 2 / spacing[2] + 0.5
        if not -reach <= slice_at <= depth - 1 + reach:
            raise InputError(
                f"{where} lies off the image's plane (at slice {slice_at:.1f} of {depth}); draw it on the image."
            )
        lo, hi = index.min(axis=0)[:2] + 0.5, index.max(axis=0)[:2] + 0.5
        boxes.append([lo[0], lo[1], hi[0], hi[1]])
        findings.append(_finding(roi, where))
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return validate_boxes(b, spatial_shape[:2], name=name).float(), findings
