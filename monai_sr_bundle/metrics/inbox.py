"""Any per-image metric restricted to the abnormality bounding boxes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, IterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from .checks import check_image_pair

__all__ = ["InBoxMetric", "box_crop_slices"]


def box_crop_slices(
    box: Sequence[float], image_size: Sequence[int], min_size: int = 1, small_box: str = "expand"
) -> tuple[slice, slice] | None:
    """Turn one (x0, y0, x1, y1) box into the crop ``img[..., sx, sy]``, or None when it is skipped.

    Float coordinates are widened to whole pixels (floor of the start, ceil of the end) and clipped to the
    image. A side shorter than ``min_size`` is, with ``small_box="expand"``, grown symmetrically about the box
    centre to ``min_size`` and shifted to stay inside the image (so the crop adds surrounding context); with
    ``small_box="skip"`` the box is skipped.

    Raises:
        ValueError: for a box with x1 <= x0 or y1 <= y0, one entirely outside the image, or an image smaller
            than ``min_size``.
    """
    if small_box not in ("expand", "skip"):
        raise ValueError(f"small_box must be 'expand' or 'skip', got {small_box!r}.")
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {list(box)}.")
    slices = []
    for start, end, size in ((box[0], box[2], image_size[0]), (box[1], box[3], image_size[1])):
        lo, hi = max(math.floor(start), 0), min(math.ceil(end), size)
        if not end > start or hi <= lo:
            coords = [float(v) for v in box]
            raise ValueError(f"box {coords} is empty or outside the image of size {tuple(image_size)}.")
        if hi - lo < min_size:
            if small_box == "skip":
                return None
            if size < min_size:
                raise ValueError(f"the image size {tuple(image_size)} is smaller than the metric's minimum {min_size}.")
            lo = min(max((lo + hi - min_size) // 2, 0), size - min_size)
            hi = lo + min_size
        slices.append(slice(lo, hi))
    return slices[0], slices[1]


class InBoxMetric(CumulativeIterationMetric):
    """A per-image metric computed only inside each image's abnormality boxes, cumulative over batches.

    For every image the wrapped metric is computed on the crop of each box (of prediction and reference
    alike) and the box values are averaged into one value per image. An image without boxes (or whose boxes
    are all skipped) gets NaN, and ``aggregate`` reduces over the images that have a value (so ``"mean"`` is
    the mean over images with boxes, and NaN if there are none). Boxes smaller than the metric's minimum
    input (``min_size``: 1 for PSNR, the window for SSIM/UQI, 176 for 5-scale MS-SSIM, 31 for LPIPS-AlexNet)
    are grown around their centre to that size by default, or skipped: see :func:`box_crop_slices`.
    Box-wise MS-SSIM therefore mostly measures context around the box; SSIM, PSNR, UQI and LPIPS are the
    meaningful in-box metrics.

    Example::

        in_box_psnr = InBoxMetric(PSNRMetric())
        in_box_psnr(sr, hr, boxes=[torch.tensor([[10, 20, 60, 90]]), torch.zeros(0, 4)])
        in_box_psnr.aggregate()  # mean over images with boxes

    Args:
        metric: a MONAI-style iteration metric (e.g. ``PSNRMetric()``, ``SSIMMetric()``, ``UQIMetric()``,
            ``LPIPSMetric()``; its own buffer is not touched) or any callable ``(y_pred, y) -> (B, 1)`` values.
        min_size: smallest crop side; default ``metric.min_size`` if the metric has one, else 1.
        small_box: ``"expand"`` (default) or ``"skip"`` for boxes with a side below ``min_size``.
        reduction: MONAI reduction applied by ``aggregate`` over the non-NaN per-image values.
        get_not_nans: whether ``aggregate`` also returns the count of images with a value.
    """

    def __init__(
        self,
        metric: IterationMetric | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        min_size: int | None = None,
        small_box: str = "expand",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        if small_box not in ("expand", "skip"):
            raise ValueError(f"small_box must be 'expand' or 'skip', got {small_box!r}.")
        self.metric = metric
        self.min_size = int(min_size if min_size is not None else getattr(metric, "min_size", 1))
        self.small_box = small_box
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _per_image(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if isinstance(self.metric, IterationMetric):
            # IterationMetric.__call__ computes without adding to the wrapped metric's cumulative buffer
            values = IterationMetric.__call__(self.metric, y_pred, y)
        else:
            values = self.metric(y_pred, y)
        return torch.as_tensor(values).reshape(-1)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, boxes: Sequence | None = None
    ) -> torch.Tensor:
        """Per-image in-box values, shape (B, 1); ``boxes`` is a list (len B) of (N_i, 4) boxes, N_i >= 0."""
        y_pred, y = check_image_pair(y_pred, y, name=type(self).__name__)
        if boxes is None or len(boxes) != y.shape[0]:
            raise ValueError(
                f"InBoxMetric needs boxes=[...] with one (N_i, 4) entry per image, got "
                f"{'none' if boxes is None else len(boxes)} for a batch of {y.shape[0]}."
            )
        out = torch.full((y.shape[0], 1), float("nan"))
        for i, image_boxes in enumerate(boxes):
            if image_boxes is None:
                continue
            arr = np.asarray(torch.as_tensor(image_boxes).detach().cpu(), dtype=np.float64).reshape(-1, 4)
            crops = [box_crop_slices(b, y.shape[2:], self.min_size, self.small_box) for b in arr]
            values = [
                self._per_image(y_pred[i : i + 1, :, sx, sy], y[i : i + 1, :, sx, sy])
                for sx, sy in (c for c in crops if c is not None)
            ]
            if values:
                out[i, 0] = torch.cat(values).double().mean().float()
        return out

    def _compute_list(self, y_pred, y=None, boxes=None):  # type: ignore[override]
        """Lists of channel-first images: each image is paired with its own entry of ``boxes``."""
        if boxes is None or len(boxes) != len(y_pred):
            raise ValueError("InBoxMetric needs boxes=[...] with one (N_i, 4) entry per image.")
        return torch.cat([self._compute_tensor(p[None], t[None], boxes=[b]) for p, t, b in zip(y_pred, y, boxes)])

    def aggregate(self, reduction: MetricReduction | str | None = None):
        """Reduce the per-image values over images that have a value (NaN when no image has one)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("InBoxMetric.aggregate: no values yet; call the metric on a batch first.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        if (reduction or self.reduction) != MetricReduction.NONE:
            # MONAI's reduction gives 0 where every value is NaN; that would read as a real score
            f = torch.where(not_nans > 0, f, torch.full_like(f, float("nan")))
        return (f, not_nans) if self.get_not_nans else f
