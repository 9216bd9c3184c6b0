"""Mean and standard deviation across images, for "mean ± sd" results tables, and a bootstrap interval of the
mean where the images are few (chest CT slices)."""

from __future__ import annotations

import math

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
    with fewer than two pairs or when every difference is 0, and 0 when they are all one other value)."""
    a, b = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs as many values on each side, got {a.size} and {b.size}.")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    if d.size < 2:
        return float("nan") if d.size == 0 else float(d[0]), float("nan"), int(d.size)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return mean, float("nan") if mean == 0 else 0.0, int(d.size)
    return mean, student_t_p(mean / (sd / math.sqrt(d.size)), d.size - 1), int(d.size)


def student_t_p(t: float, df: int) -> float:
    """Two-sided p-value of ``t`` under Student's t with ``df`` degrees of freedom: the regularized incomplete
    beta I_x(df/2, 1/2) at x = df / (df + t^2). Computed here so that the package needs no SciPy, which MONAI
    imports at start-up wherever it is installed (about a second of CPU in every process here)."""
    if math.isinf(t):
        return 0.0
    return _incomplete_beta(df / 2, 0.5, df / (df + t * t), t * t / (df + t * t))


def _incomplete_beta(a: float, b: float, x: float, y: float) -> float:
    """Regularized incomplete beta I_x(a, b), ``y`` = 1 - x given as computed without cancellation, by its
    continued fraction (modified Lentz) on the side of x where it converges fast (x below (a + 1) / (a + b + 2);
    beyond, I_x(a, b) = 1 - I_y(b, a))."""
    if x <= 0 or y <= 0:
        return float(y <= 0)
    if x > (a + 1) / (a + b + 2):
        return 1 - _incomplete_beta(b, a, y, x)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 1000):
        step = 1.0
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            step = c * d
            fraction *= step
        if abs(step - 1) < 1e-15:
            break
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    return math.exp(log_front) * fraction / a
