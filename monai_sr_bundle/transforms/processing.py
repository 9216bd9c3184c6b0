"""Hospitals' image processing as augmentation of the HR side of training.

A radiograph reaches a PACS after its site's processing: a gamma or look-up table, unsharp masking, and
multi-scale contrast enhancement (the family of Agfa's MUSICA: the detail bands of a pyramid amplified, the
coarse band compressed). A network trained on one site's processed images learns that processing as if it
were anatomy. These steps vary it on the HR image, before its LR image is made from it (a degradation
preset's ``processing``), so the pair stays a pair: the network is asked to restore what the site's image
has, whatever its look. Each step draws its parameters per image from ranges and is seeded like the
degradation steps (``set_random_state``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.config import KeysCollection

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.transforms.degradation import _gaussian_blur, _RandLRd, checked_range


class _RandProcessd(_RandLRd):
    """A processing step on ``keys`` (the HR image): ``_look`` maps a batch in [0, 1] to a new look, clipped back
    to [0, 1]."""

    def _apply(self, x: torch.Tensor, generator) -> torch.Tensor:
        return self._look(x.float()).clamp(0.0, 1.0)


class RandGammad(_RandProcessd):
    """``x ** gamma`` with ``gamma`` drawn from its range: a site's display curve."""

    def __init__(
        self, keys: KeysCollection = "label", gamma=(0.7, 1.4), prob: float = 1.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, gamma, "gamma", 0.05, allow_missing_keys, prob, high=20.0)

    def _look(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0) ** self._value


class RandSigmoidLUTd(_RandProcessd):
    """An S-shaped look-up table, ``sigmoid((x - 0.5) * slope)`` rescaled so 0 and 1 stay 0 and 1, with the
    ``slope`` drawn from its range: the contrast curves of radiography consoles (a steeper middle)."""

    def __init__(
        self, keys: KeysCollection = "label", slope=(2.0, 8.0), prob: float = 1.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, slope, "slope", 1e-3, allow_missing_keys, prob, high=100.0)

    def _look(self, x: torch.Tensor) -> torch.Tensor:
        k = self._value
        lo, hi = torch.sigmoid(torch.tensor(-0.5 * k)), torch.sigmoid(torch.tensor(0.5 * k))
        return (torch.sigmoid((x - 0.5) * k) - lo) / (hi - lo)


class RandUnsharpMaskd(_RandProcessd):
    """``x + amount * (x - blur(x, sigma))``: edge enhancement, ``amount`` from its range and ``sigma`` (HR
    pixels) from ``sigma``."""

    def __init__(
        self,
        keys: KeysCollection = "label",
        amount=(0.2, 1.0),
        sigma=(1.0, 4.0),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, amount, "amount", 0.0, allow_missing_keys, prob, high=10.0)
        self.sigma = checked_range(type(self).__name__, "sigma", sigma, 0.1, 50.0)

    def randomize(self, data=None) -> None:
        super().randomize(data)
        self._sigma = float(self.R.uniform(*self.sigma))

    def _look(self, x: torch.Tensor) -> torch.Tensor:
        return x + self._value * (x - _gaussian_blur(x, self._sigma))


class RandMultiScaleContrastd(_RandProcessd):
    """Multi-scale contrast enhancement: the image split into detail bands (differences of Gaussian blurs of
    sigma 1, 2, 4, ... HR pixels, ``bands`` of them) and the coarse rest; each band is multiplied by
    ``1 + strength * w`` with ``strength`` drawn from its range and ``w`` rising from the finest band to the
    middle ones, and the coarse rest is pulled towards its mean by ``strength / 2`` (latitude compression)."""

    def __init__(
        self,
        keys: KeysCollection = "label",
        strength=(0.2, 1.0),
        bands: int = 4,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, strength, "strength", 0.0, allow_missing_keys, prob, high=5.0)
        if isinstance(bands, bool) or not isinstance(bands, int) or not 1 <= bands <= 8:
            raise InputError(f"{type(self).__name__}: bands must be a whole number from 1 to 8, got {bands!r}.")
        self.bands = bands

    def _look(self, x: torch.Tensor) -> torch.Tensor:
        s = self._value
        levels = [x] + [_gaussian_blur(x, 2.0**k) for k in range(self.bands)]
        coarse = levels[-1]
        out = coarse + (s / 2) * -(coarse - coarse.mean(dim=(-2, -1), keepdim=True))
        for k in range(self.bands):
            w = math.sin(math.pi * (k + 1) / (self.bands + 1))  # mid bands most, as MUSICA's default curve
            out = out + (1 + s * w) * (levels[k] - levels[k + 1])
        return out


#: the steps a preset's ``processing`` is usually made of, for docs and tests
PROCESSING_STEPS: Sequence[type] = (RandGammad, RandSigmoidLUTd, RandUnsharpMaskd, RandMultiScaleContrastd)
