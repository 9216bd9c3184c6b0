"""Per-pixel error maps between a super-resolved image and its reference, and their display scaling."""

from __future__ import annotations

import torch

from .checks import check_image_pair

__all__ = ["error_map", "error_map_to_display", "DISPLAY_VMAX"]

# Fixed display ceilings (data range 1.0): an absolute error of 0.1 (10 % of the range), or the squared
# error 0.01 = 0.1^2, shows as white. Fixed rather than per-image, so maps of different methods compare.
DISPLAY_VMAX = {"abs": 0.1, "squared": 0.01}


def error_map(sr: torch.Tensor, hr: torch.Tensor, kind: str = "abs") -> torch.Tensor:
    """Per-pixel error ``|sr - hr|`` (``kind="abs"``) or ``(sr - hr)^2`` (``"squared"``), averaged over
    channels: (B, C, X, Y) in, (B, 1, X, Y) out, in intensity units (data range 1.0).

    Raises:
        ValueError: for an unknown ``kind``, mismatched or non-(B, C, X, Y) shapes, or NaN / infinite values.
    """
    if kind not in DISPLAY_VMAX:
        raise ValueError(f"error_map kind must be one of {sorted(DISPLAY_VMAX)}, got {kind!r}.")
    sr, hr = check_image_pair(sr, hr, name="error_map")
    diff = sr - hr
    err = diff.abs() if kind == "abs" else diff * diff
    return err.mean(dim=1, keepdim=True)


def error_map_to_display(err: torch.Tensor, kind: str = "abs", vmax: float | None = None) -> torch.Tensor:
    """Map an :func:`error_map` to [0, 1] for display with a fixed scale: ``clip(err / vmax, 0, 1)``.

    Args:
        err: an error map from :func:`error_map`.
        kind: the map's kind, which picks the default ``vmax`` (:data:`DISPLAY_VMAX`: 0.1 for ``"abs"``,
            0.01 for ``"squared"``).
        vmax: error shown as white; give the same value for every map that will be compared.
    """
    if vmax is None:
        if kind not in DISPLAY_VMAX:
            raise ValueError(f"error_map_to_display kind must be one of {sorted(DISPLAY_VMAX)}, got {kind!r}.")
        vmax = DISPLAY_VMAX[kind]
    if not vmax > 0:
        raise ValueError(f"error_map_to_display vmax must be positive, got {vmax}.")
    return (err / vmax).clamp(0.0, 1.0)
