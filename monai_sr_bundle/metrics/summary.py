"""Mean and standard deviation across images, for "mean ± sd" results tables, and a bootstrap interval of the
mean where the images are few (chest CT slices)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["bootstrap_interval", "summarize"]


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


def bootstrap_interval(values, level: float = 0.68, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped): the central ``level`` of the
    means of ``resamples`` resamples with replacement, seeded so that a table is reproducible (0.68: the span
    of mean ± 1 standard error for a normal mean). NaNs when no value is left."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(arr, size=(resamples, arr.size), replace=True).mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def paired_t_test(a, b) -> tuple[float, float, int]:
    """Two-sided paired t-test of per-image values ``a`` against ``b`` (same images, same order; pairs with a
    NaN on either side dropped): the mean difference a - b, its p-value and the number of pairs (p is NaN
    with fewer than two pairs or no spread)."""
    from scipy.stats import ttest_rel

    a, b = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs as many values on each side, got {a.size} and {b.size}.")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size < 2:
        return float("nan") if a.size == 0 else float(a[0] - b[0]), float("nan"), int(a.size)
    return float((a - b).mean()), float(ttest_rel(a, b).pvalue), int(a.size)
