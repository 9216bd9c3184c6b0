"""The noise level in training and at a user's word: :class:`EstimateNoised` stores each image's level (the
estimate of :mod:`monai_sr_bundle.networks.noise`) before it is cut into patches, :class:`RandNoiseLevelScaled`
teaches what a lower or higher level means, and :func:`checked_noise_level` checks a level a user gives."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from monai_sr_bundle.errors import InputError, shown
from monai_sr_bundle.networks.noise import estimate_noise_level

#: the largest level any surface accepts (grey levels of 255): far beyond any radiograph's noise
MAX_NOISE_LEVEL = 50.0
#: where a batch carries each image's level (B,), from :class:`EstimateNoised` to the network's ``noise_level``
NOISE_LEVEL_KEY = "noise_level"


def checked_noise_level(value, source: str = "noise level") -> float | None:
    """A level a user gave (None or ``"auto"``: estimate it), refused in one sentence unless a finite number in
    [0, :data:`MAX_NOISE_LEVEL`]."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        level = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too large for a float
        level = math.nan
    if not 0 <= level <= MAX_NOISE_LEVEL:  # also refuses NaN
        raise InputError(
            f"{source} must be 'auto' or a number of grey levels (of 255) from 0 (clean) to "
            f"{MAX_NOISE_LEVEL:g}, got {shown(value)}."
        )
    return level


class EstimateNoised(MapTransform):
    """Store the noise level of the image at ``keys`` (C, X, Y) under ``level_key`` (a 0-d float tensor),
    estimated on the whole image, before it is cropped to patches, as the predictor estimates it at inference
    time."""

    def __init__(self, keys: KeysCollection = "image", level_key: str = NOISE_LEVEL_KEY) -> None:
        super().__init__(keys)
        self.level_key = level_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            d[self.level_key] = estimate_noise_level(image[None].float())[0]
        return d


class RandNoiseLevelScaled(RandomizableTransform, MapTransform):
    """With probability ``prob``, multiply the stored level by a factor drawn from ``factor`` (low, high): the
    network learns what a level lower than the image's means (keep more of the noise, and detail) and a
    higher one (smooth more), which is what a user's override asks for; 0 then means "treat it as clean"."""

    def __init__(self, level_key: str = NOISE_LEVEL_KEY, factor=(0.0, 2.0), prob: float = 0.3) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, level_key)
        low, high = (float(f) for f in factor)
        if not 0 <= low <= high:
            raise InputError(f"noise-level factor must be a range (low, high) with 0 <= low <= high, got {factor!r}.")
        self.level_key, self.factor = level_key, (low, high)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize(None)
        d = dict(data)
        if self._do_transform:
            d[self.level_key] = d[self.level_key] * float(self.R.uniform(*self.factor))
        return d
