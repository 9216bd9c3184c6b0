"""Low-resolution synthesis: the degradation model that turns an HR image into the LR input of SR.

The default is bicubic downsampling with antialiasing (what ``PIL``/``torch`` call antialiased bicubic),
which is how most SR benchmarks make LR images; ``bicubic`` without antialias (MATLAB-free papers that
call ``F.interpolate`` directly) and ``area`` (box average, a detector-binning model) are also offered.
Optional Gaussian blur and Gaussian/Poisson noise model a softer, noisier acquisition.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

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


class Degrade(RandomizableTransform):
    """HR (C, X, Y) -> LR (C, X/scale, Y/scale): blur, downsample, noise, optional pre-upsampling.

    Args:
        scale: integer SR factor.
        downsample: one of ``bicubic_aa`` (default), ``bicubic`` (no antialias), ``area``.
        blur_sigma: Gaussian blur sigma in HR pixels before downsampling; a ``(lo, hi)`` pair draws it.
        noise: ``none``, ``gaussian`` (std ``noise_std``, may be a range) or ``poisson`` (``poisson_peak``
            photons at intensity 1; fewer photons = noisier).
        pre_upsample: if set, the LR image is resized back to HR size with this mode (for methods that
            consume pre-upsampled input).
    """

    def __init__(
        self,
        scale: int = 4,
        downsample: str = "bicubic_aa",
        blur_sigma: float | Sequence[float] = 0.0,
        noise: str = "none",
        noise_std: float | Sequence[float] = 0.0,
        poisson_peak: float = 1000.0,
        pre_upsample: str | None = None,
    ) -> None:
        super().__init__(prob=1.0)
        if int(scale) != scale or scale < 1:
            raise InputError(f"scale must be a positive integer, got {scale!r}.")
        if downsample not in DOWNSAMPLE_MODES:
            raise InputError(f"unknown downsample mode {downsample!r}; use one of {DOWNSAMPLE_MODES}.")
        if noise not in NOISE_KINDS:
            raise InputError(f"unknown noise kind {noise!r}; use one of {NOISE_KINDS}.")
        if pre_upsample is not None and pre_upsample not in UPSAMPLE_MODES:
            raise InputError(f"unknown pre_upsample mode {pre_upsample!r}; use one of {UPSAMPLE_MODES}.")
        self.scale = int(scale)
        self.mode = downsample
        self.blur_sigma = blur_sigma
        self.noise = noise
        self.noise_std = noise_std
        self.poisson_peak = float(poisson_peak)
        self.pre_upsample = pre_upsample

    def _draw(self, value: float | Sequence[float]) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        lo, hi = value
        return float(self.R.uniform(lo, hi))

    def randomize(self, data=None) -> None:
        self._sigma = self._draw(self.blur_sigma)
        self._std = self._draw(self.noise_std)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        x = _as_batch(img)
        if self._sigma > 0:
            x = _gaussian_blur(x, self._sigma)
        y = downsample(x[0], self.scale, self.mode)[None]
        gen = torch.Generator().manual_seed(self._seed)
        if self.noise == "gaussian" and self._std > 0:
            y = y + torch.randn(y.shape, generator=gen) * self._std
        elif self.noise == "poisson":
            y = torch.poisson(y.clamp(min=0) * self.poisson_peak, generator=gen) / self.poisson_peak
        y = y.clamp(0.0, 1.0)
        if self.pre_upsample:
            y = upsample(y, self.scale, self.pre_upsample).clamp(0.0, 1.0)
        return zoom_geometry(img, y[0], 1.0 if self.pre_upsample else 1.0 / self.scale)


class Degraded(MapTransform, RandomizableTransform):
    """Dictionary form of :class:`Degrade`: reads ``keys`` (the HR image) and writes the LR image to
    ``lr_key``. The HR target is left as it is, except that an HR image whose size is not a multiple of the
    scale (a 1841x1955 radiograph at x4) loses its last rows and columns, as evaluation crops it, so that the
    pair stays aligned."""

    def __init__(
        self, keys: KeysCollection = "hr", lr_key: str = "lr", allow_missing_keys: bool = False, **kwargs
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if len(self.keys) != 1:
            raise InputError("Degraded takes exactly one HR key.")
        self.lr_key = lr_key
        self.degrade = Degrade(**kwargs)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.degrade.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = crop_to_scale(d[key], self.degrade.scale)
            d[self.lr_key] = self.degrade(d[key])
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
    """

    def __init__(
        self, lr_key: str = "image", hr_key: str = "label", lr_size: int = 16, scale: int = 4, num_samples: int = 1
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, [lr_key, hr_key])
        self.lr_key, self.hr_key = lr_key, hr_key
        self.lr_size, self.scale, self.num_samples = int(lr_size), int(scale), int(num_samples)

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
            d[self.hr_key] = hr[..., i * s : (i + n) * s, j * s : (j + n) * s]
            out.append(d)
        return out
