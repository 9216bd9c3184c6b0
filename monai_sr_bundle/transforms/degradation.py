"""Low-resolution synthesis: the steps that turn an HR image into the LR input of SR, each a MONAI dictionary
transform on the LR key (:func:`monai_sr_bundle.transforms.presets.lr_synthesis` copies the HR image to it
first), so that a degradation is a list of them in a preset (``configs/degradations``).

Downsampling is antialiased bicubic by default (what ``PIL``/``torch`` call antialiased bicubic, how most SR
benchmarks make LR images); ``bicubic`` without antialias and ``area`` (box average, detector binning) are
offered too. Blur, quantum (Poisson) and electronic (Gaussian) noise model a softer, noisier acquisition;
the random steps draw their parameters from ranges, seeded per image.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.bicubic import UPSAMPLE_MODES, upsample

DOWNSAMPLE_MODES = ("bicubic_aa", "bicubic", "area")
NOISE_KINDS = ("none", "gaussian", "poisson")


def _as_batch(img: torch.Tensor) -> torch.Tensor:
    if img.ndim != 3:
        raise InputError(f"expected a 2D image shaped (C, X, Y), got shape {tuple(img.shape)}.")
    return torch.as_tensor(img, dtype=torch.float32)[None]


def downsample(img: torch.Tensor, scale: int, mode: str = "bicubic_aa") -> torch.Tensor:
    """Shrink a (C, X, Y) image by an integer ``scale``; X and Y must be multiples of ``scale``."""
    if mode not in DOWNSAMPLE_MODES:
        raise InputError(f"unknown downsample mode {mode!r}; use one of {DOWNSAMPLE_MODES}.")
    x = _as_batch(img)
    if x.shape[-1] % scale or x.shape[-2] % scale:
        raise InputError(f"image size {tuple(x.shape[-2:])} is not a multiple of the scale {scale}; crop it first.")
    size = (x.shape[-2] // scale, x.shape[-1] // scale)
    if mode == "area":
        y = F.avg_pool2d(x, scale)
    else:
        y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=mode == "bicubic_aa")
    return y[0].clamp(0.0, 1.0)


def crop_to_scale(img: torch.Tensor, scale: int) -> torch.Tensor:
    """``img`` (..., X, Y) without the last rows and columns that keep X and Y from being multiples of
    ``scale`` (a 1841x1955 radiograph at x4), so that an HR image and its LR image stay aligned."""
    x, y = img.shape[-2:]
    return img[..., : x - x % scale, : y - y % scale] if x % scale or y % scale else img


def zoom_geometry(src: torch.Tensor, out: torch.Tensor, zoom: float) -> torch.Tensor:
    """Give ``out`` (resized from ``src`` by ``zoom`` in-plane) the metadata of ``src`` with its affine
    updated: spacing divided by ``zoom`` and the origin moved so that the image corners stay in place."""
    if not isinstance(src, MetaTensor):
        return out
    affine = src.affine.clone().to(torch.float64)  # (4, 4), or (B, 4, 4) for a batch
    n = affine.shape[-1] - 1
    step = torch.eye(n + 1, dtype=torch.float64)
    for axis in range(min(2, n)):
        step[axis, axis] = 1.0 / zoom
        step[axis, n] = 0.5 / zoom - 0.5
    result = MetaTensor(out, meta=dict(src.meta))
    result.affine = affine @ step
    return result


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)


class _RandLRd(MapTransform, RandomizableTransform):
    """A seeded random step of LR synthesis on ``keys`` with one parameter, a number or a ``(low, high)`` range:
    ``randomize`` draws it (``self._value``) and a torch seed from ``self.R``, so one ``set_random_state``
    fixes the bytes the step makes (evaluation seeds per image).

    Args:
        keys: the images to degrade (the LR key).
        value: the parameter, or its range.
        name: its name in the subclass's signature, for the error.
        low: its smallest valid value.
    """

    def __init__(
        self, keys: KeysCollection, value: float | Sequence[float], name: str, low: float, allow_missing_keys: bool
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        try:
            lo, hi = (value, value) if isinstance(value, (int, float)) else tuple(value)
            valid = not isinstance(lo, bool) and not isinstance(hi, bool) and low <= lo <= hi
        except (TypeError, ValueError):  # not a pair, or not numbers
            valid = False
        if not valid:
            raise InputError(
                f"{type(self).__name__}: {name} must be a number >= {low:g} or a (low, high) range of such, "
                f"got {value!r}."
            )
        self.range = (float(lo), float(hi))

    def randomize(self, data=None) -> None:
        self._value = float(self.R.uniform(*self.range))
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize()
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            y = self._apply(_as_batch(img), torch.Generator().manual_seed(self._seed))[0]
            d[key] = zoom_geometry(img, y, 1.0)
        return d


class RandBlurd(_RandLRd):
    """Isotropic Gaussian blur (the detector's and the focal spot's unsharpness) of standard deviation
    ``sigma`` pixels, a number or a ``(low, high)`` range drawn per image; reflect-padded."""

    def __init__(self, keys: KeysCollection, sigma: float | Sequence[float] = 1.0, allow_missing_keys: bool = False):
        super().__init__(keys, sigma, "sigma", 0.0, allow_missing_keys)

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _gaussian_blur(x, self._value) if self._value > 0 else x


class RandPoissonNoised(_RandLRd):
    """Quantum noise: Poisson counts of ``peak`` photons at intensity 1 (a number or a ``(low, high)`` range
    drawn per image; fewer photons, a lower dose, is noisier), clipped to [0, 1]."""

    def __init__(self, keys: KeysCollection, peak: float | Sequence[float] = 1000.0, allow_missing_keys: bool = False):
        super().__init__(keys, peak, "peak", 1e-6, allow_missing_keys)

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (torch.poisson(x.clamp(min=0) * self._value, generator=generator) / self._value).clamp(0.0, 1.0)


class RandElectronicNoised(_RandLRd):
    """Electronic (additive Gaussian) noise of standard deviation ``std`` (intensity units; a number or a
    ``(low, high)`` range drawn per image), clipped to [0, 1]."""

    def __init__(self, keys: KeysCollection, std: float | Sequence[float] = 0.01, allow_missing_keys: bool = False):
        super().__init__(keys, std, "std", 0.0, allow_missing_keys)

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (x + torch.randn(x.shape, generator=generator) * self._value).clamp(0.0, 1.0)


class Resized(MapTransform):
    """Shrink ``keys`` by the integer ``scale`` with ``mode`` (:data:`DOWNSAMPLE_MODES`), or with ``up`` enlarge
    them by it (:data:`~monai_sr_bundle.networks.bicubic.UPSAMPLE_MODES`: an input pre-upsampled to the HR size,
    as RUNet takes it); spacing follows the size (:func:`zoom_geometry`)."""

    def __init__(
        self,
        keys: KeysCollection,
        scale: int = 4,
        mode: str = "bicubic_aa",
        up: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(scale, bool) or int(scale) != scale or scale < 1:
            raise InputError(f"Resized: scale must be a positive whole number, got {scale!r}.")
        modes = UPSAMPLE_MODES if up else DOWNSAMPLE_MODES
        if mode not in modes:
            raise InputError(f"Resized: unknown {'up' if up else 'down'}sampling mode {mode!r}; use one of {modes}.")
        self.scale, self.mode, self.up = int(scale), mode, bool(up)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if self.up:
                y = upsample(_as_batch(img), self.scale, self.mode)[0].clamp(0.0, 1.0)
            else:
                y = downsample(img, self.scale, self.mode)
            d[key] = zoom_geometry(img, y, self.scale if self.up else 1.0 / self.scale)
        return d


class CropToScaled(MapTransform):
    """:func:`crop_to_scale` on ``keys``: an HR image whose size is not a multiple of the scale (a 1841x1955
    radiograph at x4) loses its last rows and columns, so that it stays aligned with its LR image."""

    def __init__(self, keys: KeysCollection, scale: int = 4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scale = int(scale)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = crop_to_scale(d[key], self.scale)
        return d


class RandSRCropd(RandomizableTransform, MapTransform):
    """Random aligned patch pairs from a whole LR image (``lr_key``) and its HR image (``hr_key``).

    Cropping after degrading the whole image keeps training patches free of the border effects that
    degrading a small HR patch would add (at x4 a 12-px LR patch would be mostly border), so the network
    learns what whole-image inference needs.

    Args:
        lr_key: key of the LR image (C, x, y).
        hr_key: key of the HR image (C, scale*x, scale*y).
        lr_size: LR patch edge; the HR patch edge is ``lr_size * scale``.
        scale: the SR factor linking the two images.
        num_samples: pairs per image; a list of dicts is returned, as ``RandSpatialCropSamplesd`` does.
        mask_keys: further items on the HR grid (the box mask), cut from the HR image's window; absent
            ones are skipped.
    """

    def __init__(
        self,
        lr_key: str = "image",
        hr_key: str = "label",
        lr_size: int = 16,
        scale: int = 4,
        num_samples: int = 1,
        mask_keys: Sequence[str] = (),
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, [lr_key, hr_key])
        self.lr_key, self.hr_key = lr_key, hr_key
        self.lr_size, self.scale, self.num_samples = int(lr_size), int(scale), int(num_samples)
        self.mask_keys = ensure_tuple(mask_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]]:
        lr, hr = data[self.lr_key], data[self.hr_key]
        x, y = lr.shape[-2:]
        if tuple(hr.shape[-2:]) != (x * self.scale, y * self.scale):
            raise InputError(f"HR size {tuple(hr.shape[-2:])} is not {self.scale}x the LR size {(x, y)}.")
        if min(x, y) < self.lr_size:
            raise InputError(f"LR image {(x, y)} is smaller than the patch size {self.lr_size}.")
        s, n = self.scale, self.lr_size
        out = []
        for _ in range(self.num_samples):
            i, j = int(self.R.randint(0, x - n + 1)), int(self.R.randint(0, y - n + 1))
            d = dict(data)
            d[self.lr_key] = lr[..., i : i + n, j : j + n]
            for key in (self.hr_key, *(k for k in self.mask_keys if k in data)):
                d[key] = data[key][..., i * s : (i + n) * s, j * s : (j + n) * s]
            out.append(d)
        return out
