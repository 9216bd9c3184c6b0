"""Mean and standard deviation across images, for "mean ± sd" results tables."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["summarize"]


def summarize(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of per-image values, ignoring NaNs.

    ``values`` is anything array-like, typically ``metric.aggregate(reduction="none")`` (shape (N, 1)); it is
    flattened. With no non-NaN value both results are NaN; with one, the sd is NaN. Infinite values (PSNR of
    identical images) propagate: the mean is inf and the sd NaN.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, float("nan")
    with np.errstate(invalid="ignore"):
        return mean, float(arr.std(ddof=1))
