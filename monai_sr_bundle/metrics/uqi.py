"""Universal image quality index (UQI)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.metrics.regression import RegressionMetric
from monai.utils import MetricReduction

from .checks import CheckedInputsMixin, check_image_pair

__all__ = ["UQIMetric", "compute_uqi"]

# variance sums at or below this are "numerically flat" windows (data in [0, 1]; the smallest real variance
# of an 8-bit window, one pixel off by 1/255, is ~2e-7, while float64 round-off is ~1e-16)
_FLAT_TOL = 1e-12


def compute_uqi(y_pred: torch.Tensor, y: torch.Tensor, win_size: int = 8) -> torch.Tensor:
    """Per-image universal quality index, shape (B, 1); see :class:`UQIMetric`.

    Args:
        y_pred: predicted images, (B, C, X, Y).
        y: reference images, same shape.
        win_size: side of the square sliding window (8 in the paper).
    """
    y_pred, y = check_image_pair(y_pred, y, name="UQI")
    if min(y.shape[2:]) < win_size:
        raise ValueError(
            f"UQI with a {win_size}-pixel window needs images of at least {win_size} px per side, "
            f"got {tuple(y.shape[2:])}."
        )
    b, c = y.shape[:2]
    x1 = y_pred.double().reshape(b * c, 1, *y.shape[2:])
    x2 = y.double().reshape(b * c, 1, *y.shape[2:])

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, kernel_size=win_size, stride=1)

    mu1, mu2 = local_mean(x1), local_mean(x2)
    # population (co)variances: the paper's 1/(N-1) factor cancels between numerator and denominator
    var_sum = local_mean(x1 * x1) - mu1 * mu1 + local_mean(x2 * x2) - mu2 * mu2
    cov = local_mean(x1 * x2) - mu1 * mu2
    mean_sq_sum = mu1 * mu1 + mu2 * mu2

    flat = var_sum <= _FLAT_TOL
    dark = mean_sq_sum == 0
    q = torch.ones_like(mu1)  # both windows flat and zero: identical, Q = 1
    luminance_only = flat & ~dark
    q = torch.where(luminance_only, 2 * mu1 * mu2 / torch.where(dark, 1.0, mean_sq_sum), q)
    regular = ~flat & ~dark
    full = 4 * cov * mu1 * mu2 / torch.where(regular, var_sum * mean_sq_sum, 1.0)
    q = torch.where(regular, full, q)
    return q.reshape(b, c, -1).mean(dim=(1, 2)).unsqueeze(1).float()


class UQIMetric(CheckedInputsMixin, RegressionMetric):
    """Universal image quality index (Wang & Bovik, "A universal image quality index", IEEE Signal
    Processing Letters 9(3), 2002), cumulative over batches. Range [-1, 1], higher is better, 1 iff identical.

    In each ``win_size`` x ``win_size`` window (sliding by one pixel, no padding) of each channel,
    ``Q = 4 cov(x, y) mean(x) mean(y) / ((var(x) + var(y)) (mean(x)^2 + mean(y)^2))``; the image's value is
    the mean over all windows (and channels). The paper leaves Q undefined where a denominator is zero; as in
    the authors' reference code, a window where both images are flat gets the luminance term
    ``2 mean(x) mean(y) / (mean(x)^2 + mean(y)^2)``, and 1 where both are also zero (e.g. black borders).
    Statistics are computed in float64; windows with var(x) + var(y) <= 1e-12 count as flat.

    Args:
        win_size: side of the square sliding window (8 in the paper).
        reduction: MONAI reduction applied by ``aggregate`` (``"none"`` gives per-image values).
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.
    """

    def __init__(
        self, win_size: int = 8, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.win_size = int(win_size)
        self.min_size = self.win_size

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return compute_uqi(y_pred, y, win_size=self.win_size)
