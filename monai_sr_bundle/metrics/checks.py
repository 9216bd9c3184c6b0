"""Input checks shared by the metrics: one clear sentence instead of a silent NaN or a broadcast."""

from __future__ import annotations

import torch
from monai.data import MetaTensor

__all__ = ["check_image_pair", "CheckedInputsMixin"]


def _plain(x: torch.Tensor) -> torch.Tensor:
    """Drop MetaTensor metadata: metric values carry none, and plain tensors are faster."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def check_image_pair(y_pred: torch.Tensor, y: torch.Tensor, name: str = "metric") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a prediction / reference pair of 2D image batches and return them as plain float tensors.

    Args:
        y_pred: predicted (super-resolved) images, shape (B, C, X, Y).
        y: reference (high-resolution) images, same shape.
        name: the metric's name, used in error messages.

    Raises:
        ValueError: when either is not a tensor, the shapes differ or are not (B, C, X, Y), or a value is NaN
            or infinite. Non-finite values are rejected rather than turned into NaN metric values, because
            MONAI's reductions skip NaNs: a method that produced NaN images would otherwise look better.
    """
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        got = f"{type(y_pred).__name__} and {type(y).__name__}"
        raise ValueError(f"{name}: y_pred and y must be torch tensors, got {got}.")
    if y_pred.shape != y.shape:
        got = f"{tuple(y_pred.shape)} and {tuple(y.shape)}"
        raise ValueError(f"{name}: y_pred and y must have the same shape, got {got}.")
    if y_pred.ndim != 4:
        raise ValueError(f"{name}: expected 2D image batches shaped (B, C, X, Y), got shape {tuple(y_pred.shape)}.")
    y_pred, y = _plain(y_pred).float(), _plain(y).float()
    for label, t in (("y_pred", y_pred), ("y", y)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: {label} contains NaN or infinite values; fix the image before measuring it.")
    return y_pred, y


class CheckedInputsMixin:
    """Runs :func:`check_image_pair` before a MONAI ``RegressionMetric`` computes its per-image values."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs):  # type: ignore[override]
        y_pred, y = check_image_pair(y_pred, y, name=type(self).__name__)
        return super()._compute_tensor(y_pred, y, **kwargs)  # type: ignore[misc]
