"""PSNR, SSIM and MS-SSIM: MONAI's own metrics with the project's defaults and input checks.

The computations are MONAI's (``monai.metrics.PSNRMetric``, ``SSIMMetric``, ``MultiScaleSSIMMetric``); these
subclasses only fix the conventions (2D, data range 1.0), reject bad input with one clear sentence
(see :func:`check_image_pair`) and expose ``min_size``, the smallest side an image may have, which
:class:`InBoxMetric` uses to grow small boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import MultiScaleSSIMMetric as _MonaiMSSSIM
from monai.metrics import PSNRMetric as _MonaiPSNR
from monai.metrics import SSIMMetric as _MonaiSSIM
from monai.utils import MetricReduction

from .checks import CheckedInputsMixin, check_image_pair

__all__ = ["PSNRMetric", "SSIMMetric", "MultiScaleSSIMMetric", "masked_psnr"]


def masked_psnr(y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR (data range 1) over the pixels where ``mask`` is true, e.g. where artifacts were burnt into the LR
    image; NaN for an empty mask, so that such an image is left out of a mean instead of counted as perfect."""
    y_pred, y = check_image_pair(y_pred, y, "masked PSNR")
    mask = torch.as_tensor(mask, dtype=torch.bool, device=y.device).expand_as(y)
    if not mask.any():
        return torch.tensor(float("nan"))
    mse = (y_pred - y)[mask].square().mean()
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def _check_min_size(y_pred: torch.Tensor, min_size: int, what: str) -> None:
    if min(y_pred.shape[2:]) < min_size:
        raise ValueError(f"{what} needs images of at least {min_size} px per side, got {tuple(y_pred.shape[2:])}.")


class PSNRMetric(CheckedInputsMixin, _MonaiPSNR):
    """Peak signal-to-noise ratio per image, in dB (higher is better); MONAI's ``PSNRMetric``.

    PSNR = 10 log10(max_val^2 / MSE), the MSE taken over channels and pixels of each image. Identical images
    give ``inf``.

    Args:
        max_val: data range of the images (1.0 for the project's [0, 1] intensities).
        reduction: MONAI reduction applied by ``aggregate`` (``"mean"``; ``"none"`` gives per-image values).
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.
    """

    min_size = 1

    def __init__(
        self, max_val: float = 1.0, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False
    ) -> None:
        super().__init__(max_val=max_val, reduction=reduction, get_not_nans=get_not_nans)


class SSIMMetric(CheckedInputsMixin, _MonaiSSIM):
    """Structural similarity per image (Wang et al., "Image quality assessment: from error visibility to
    structural similarity", IEEE TIP 2004); MONAI's ``SSIMMetric`` in 2D.

    The local statistics use an ``win_size`` Gaussian window (sigma ``kernel_sigma``) and population
    (co)variances; the SSIM map is taken over the "valid" region only (no padding) and averaged. This equals
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1)``, which also crops the border of half a window before averaging.

    Args:
        data_range: data range of the images.
        kernel_type: ``"gaussian"`` or ``"uniform"``.
        win_size: window size in pixels.
        kernel_sigma: standard deviation of the Gaussian window.
        k1, k2: SSIM stability constants.
        reduction: MONAI reduction applied by ``aggregate``.
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.
    """

    def __init__(
        self,
        data_range: float = 1.0,
        kernel_type: str = "gaussian",
        win_size: int = 11,
        kernel_sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            data_range=data_range,
            kernel_type=kernel_type,
            win_size=win_size,
            kernel_sigma=kernel_sigma,
            k1=k1,
            k2=k2,
            reduction=reduction,
            get_not_nans=get_not_nans,
        )
        self.min_size = int(max(self.kernel_size))

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_min_size(y_pred, self.min_size, f"SSIM with a {self.min_size}-pixel window")
        return super()._compute_metric(y_pred, y)


class MultiScaleSSIMMetric(CheckedInputsMixin, _MonaiMSSSIM):
    """Multi-scale SSIM per image (Wang, Simoncelli & Bovik, "Multiscale structural similarity for image
    quality assessment", Asilomar 2003); MONAI's ``MultiScaleSSIMMetric`` in 2D.

    With the default 5 scales and 11-pixel window the coarsest scale (1/16) must still hold a window, so
    images need at least 11 * 16 = 176 px per side (256 and 512 work; 128 does not); smaller images raise a
    ValueError saying so; use fewer ``weights`` or :class:`SSIMMetric` for them. Downsampling is MONAI's 2x2
    average pooling without padding, so for sides that become odd at some scale the result differs slightly
    from ``pytorch_msssim.ms_ssim`` (which pads); for power-of-two sides they agree.

    Args:
        data_range: data range of the images.
        kernel_type: ``"gaussian"`` or ``"uniform"``.
        kernel_size: window size in pixels.
        kernel_sigma: standard deviation of the Gaussian window.
        k1, k2: SSIM stability constants.
        weights: per-scale exponents (one scale per weight), the paper's by default.
        reduction: MONAI reduction applied by ``aggregate``.
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.
    """

    def __init__(
        self,
        data_range: float = 1.0,
        kernel_type: str = "gaussian",
        kernel_size: int = 11,
        kernel_sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        weights: Sequence[float] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333),
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            data_range=data_range,
            kernel_type=kernel_type,
            kernel_size=kernel_size,
            kernel_sigma=kernel_sigma,
            k1=k1,
            k2=k2,
            weights=weights,
            reduction=reduction,
            get_not_nans=get_not_nans,
        )
        # floor-halving (n - 1) times must leave at least one window: side >= k * 2^(n-1)
        self.min_size = int(max(self.kernel_size)) * 2 ** (len(weights) - 1)

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        what = f"MS-SSIM with {len(self.weights)} scales and a {max(self.kernel_size)}-pixel window"
        _check_min_size(y_pred, self.min_size, what)
        return super()._compute_metric(y_pred, y)
