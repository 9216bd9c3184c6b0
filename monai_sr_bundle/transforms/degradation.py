"""Low-resolution synthesis: the steps that turn an HR image into the LR input of SR, each a MONAI dictionary
transform on the LR key (:func:`monai_sr_bundle.transforms.presets.lr_synthesis` copies the HR image to it
first), so that a degradation is a list of them in a preset (``configs/degradations``).

Downsampling is antialiased bicubic by default (what ``PIL``/``torch`` call antialiased bicubic, how most SR
benchmarks make LR images); bicubic and bilinear with or without antialias, ``area`` (box average, detector
binning) and ``nearest`` are offered too, and :class:`RandResized` draws one of them per image. Blur
(Gaussian, anisotropic, generalized-Gaussian and plateau kernels: detector and focal-spot unsharpness),
quantum (Poisson) and electronic (Gaussian) noise, JPEG and lossy JPEG 2000 and quantization to fewer bits
model the radiographs users have; the random steps draw their parameters from ranges, seeded per image, and
a preset orders them (MONAI's ``RandomOrder``, ``OneOf``) and may degrade twice (a second order, as the
Real-ESRGAN and BSRGAN papers do).
"""

from __future__ import annotations

import io
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple
from PIL import Image

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.bicubic import UPSAMPLE_MODES, upsample

DOWNSAMPLE_MODES = ("bicubic_aa", "bicubic", "bilinear_aa", "bilinear", "area", "nearest")
NOISE_KINDS = ("none", "gaussian", "poisson")
#: blur kernel shapes of :class:`RandBlurd`: exp(-q/2), exp(-q^beta/2) and 1/(1 + q^beta) of the squared
#: Mahalanobis radius q
BLUR_KERNELS = ("gaussian", "generalized", "plateau")


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
    if mode == "area":
        return F.avg_pool2d(x, scale)[0].clamp(0.0, 1.0)
    return resize(x, (x.shape[-2] // scale, x.shape[-1] // scale), mode)[0].clamp(0.0, 1.0)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """A batch resized to ``size`` by ``mode`` (:data:`DOWNSAMPLE_MODES`; any factor, up or down)."""
    if mode in ("area", "nearest"):
        return F.interpolate(x, size=size, mode="area" if mode == "area" else "nearest-exact")
    kind = mode.removesuffix("_aa")
    return F.interpolate(x, size=size, mode=kind, align_corners=False, antialias=mode.endswith("_aa"))


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
        low, high: its smallest and largest valid values.
        prob: the chance that the step acts on an image (drawn per image).
    """

    def __init__(
        self,
        keys: KeysCollection,
        value: float | Sequence[float],
        name: str,
        low: float,
        allow_missing_keys: bool,
        prob: float = 1.0,
        high: float = math.inf,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.range = checked_range(type(self).__name__, name, value, low, high)
        RandomizableTransform.__init__(self, prob=_checked_prob(type(self).__name__, prob))

    def randomize(self, data=None) -> None:
        self._value = float(self.R.uniform(*self.range))
        self._seed = int(self.R.randint(0, 2**31 - 1))
        self._do_transform = self.prob >= 1 or self.R.rand() < self.prob  # no draw at prob 1: seeds as before

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize()
        d = dict(data)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            y = self._apply(_as_batch(img), torch.Generator().manual_seed(self._seed))[0]
            d[key] = zoom_geometry(img, y, 1.0)
        return d


def checked_range(owner: str, name: str, value, low: float, high: float = math.inf) -> tuple[float, float]:
    """``value``, a number or a ``(low, high)`` pair within [``low``, ``high``], as a pair; else one sentence."""
    try:
        lo, hi = (value, value) if isinstance(value, (int, float)) else tuple(value)
        valid = not isinstance(lo, bool) and not isinstance(hi, bool) and low <= lo <= hi <= high
    except (TypeError, ValueError):  # not a pair, or not numbers
        valid = False
    if not valid:
        within = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise InputError(f"{owner}: {name} must be a number {within} or a (low, high) range of such, got {value!r}.")
    return float(lo), float(hi)


def _checked_prob(owner: str, prob, name: str = "prob") -> float:
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
        raise InputError(f"{owner}: {name} must be a number in [0, 1], got {prob!r}.")
    return float(prob)


def _weights(owner: str, name: str, choices: Mapping | Sequence[str] | str, allowed: Sequence) -> dict:
    """``choices`` (one, a list, or a mapping to non-negative weights) as {choice: probability}."""
    if isinstance(choices, (str, int)):
        choices = [choices]
    weights = dict(choices) if isinstance(choices, Mapping) else dict.fromkeys(choices, 1.0)
    bad = [c for c in weights if c not in allowed]
    numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights.values())
    if bad or not weights or not numbers or sum(weights.values()) <= 0:
        raise InputError(
            f"{owner}: {name} must name some of {', '.join(map(str, allowed))} (a list, or a mapping to weights "
            f">= 0), got {choices!r}."
        )
    total = float(sum(weights.values()))
    return {c: w / total for c, w in weights.items()}


def _draw(rng: np.random.RandomState, weights: dict):
    """One choice of ``weights`` (from :func:`_weights`), drawn with the transform's own generator."""
    return list(weights)[int(rng.choice(len(weights), p=list(weights.values())))]


def blur_kernel(
    sigma: tuple[float, float], theta: float = 0.0, shape: str = "gaussian", beta: float = 1.0
) -> torch.Tensor:
    """A normalised 2D kernel (2r+1, 2r+1), r = ceil(3 * max sigma): ``shape`` (:data:`BLUR_KERNELS`) of the
    squared Mahalanobis radius for standard deviations ``sigma`` along axes turned by ``theta`` radians."""
    radius = max(1, math.ceil(3 * max(sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    x, y = torch.meshgrid(t, t, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    q = (u / sigma[0]) ** 2 + (v / sigma[1]) ** 2
    k = torch.exp(-0.5 * q) if shape == "gaussian" else torch.exp(-0.5 * q**beta)
    if shape == "plateau":
        k = 1.0 / (1.0 + q**beta)
    return (k / k.sum()).to(torch.float32)


class RandBlurd(_RandLRd):
    """Blur (the detector's and the focal spot's unsharpness), reflect-padded: by default an isotropic Gaussian
    of standard deviation ``sigma`` pixels (a number or a ``(low, high)`` range drawn per image).

    Args:
        kernels: the kernel shapes to draw from (:data:`BLUR_KERNELS`; a list, or a mapping to weights):
            a generalized Gaussian is flatter (``beta`` > 1) or peakier (< 1) than a Gaussian, a plateau
            kernel has a flat top and heavy tails, as detector blur does.
        anisotropic: the chance that the kernel is anisotropic: its two standard deviations drawn
            separately from ``sigma`` and its axes turned by a random angle.
        beta_generalized, beta_plateau: the shape exponent's range for those kernels.
        prob: the chance that an image is blurred.
    """

    def __init__(
        self,
        keys: KeysCollection,
        sigma: float | Sequence[float] = 1.0,
        kernels: Mapping | Sequence[str] | str = "gaussian",
        anisotropic: float = 0.0,
        beta_generalized: float | Sequence[float] = (0.5, 4.0),
        beta_plateau: float | Sequence[float] = (1.0, 2.0),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, sigma, "sigma", 0.0, allow_missing_keys, prob)
        owner = type(self).__name__
        self.kernels = _weights(owner, "kernels", kernels, BLUR_KERNELS)
        self.anisotropic = _checked_prob(owner, anisotropic, "anisotropic")
        self.beta = {
            "gaussian": (1.0, 1.0),
            "generalized": checked_range(owner, "beta_generalized", beta_generalized, 0.1, 10.0),
            "plateau": checked_range(owner, "beta_plateau", beta_plateau, 0.1, 10.0),
        }
        self._kernel = None

    def randomize(self, data=None) -> None:
        super().randomize(data)
        self._kernel = None
        if list(self.kernels) == ["gaussian"] and self.anisotropic == 0:
            return  # the separable Gaussian, drawing nothing more: seeds as before
        shape = _draw(self.R, self.kernels)
        sigma, theta = (self._value, self._value), 0.0
        if self.R.rand() < self.anisotropic:
            sigma, theta = (self._value, float(self.R.uniform(*self.range))), float(self.R.uniform(0, math.pi))
        beta = float(self.R.uniform(*self.beta[shape]))
        if min(sigma) > 0:
            self._kernel = blur_kernel(sigma, theta, shape, beta)

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        size = (2 * max(1, math.ceil(3 * self._value)) + 1) if self._kernel is None else self._kernel.shape[-1]
        if size // 2 >= min(x.shape[-2:]):
            raise InputError(
                f"{type(self).__name__}: a blur of sigma {self._value:.3g} needs a {size}x{size} kernel, larger than "
                f"the image {tuple(x.shape[-2:])}; lower sigma."
            )
        if self._kernel is None:
            return _gaussian_blur(x, self._value) if self._value > 0 else x
        r, c = self._kernel.shape[-1] // 2, x.shape[1]
        x = F.pad(x, (r, r, r, r), mode="reflect")
        return F.conv2d(x, self._kernel[None, None].repeat(c, 1, 1, 1), groups=c)


class RandPoissonNoised(_RandLRd):
    """Quantum noise: Poisson counts of ``peak`` photons at intensity 1 (a number or a ``(low, high)`` range
    drawn per image; fewer photons, a lower dose, is noisier), clipped to [0, 1]; on a share ``prob`` of images."""

    def __init__(
        self,
        keys: KeysCollection,
        peak: float | Sequence[float] = 1000.0,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, peak, "peak", 1e-6, allow_missing_keys, prob)

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (torch.poisson(x.clamp(min=0) * self._value, generator=generator) / self._value).clamp(0.0, 1.0)


class RandElectronicNoised(_RandLRd):
    """Electronic (additive Gaussian) noise of standard deviation ``std`` (intensity units; a number or a
    ``(low, high)`` range drawn per image), clipped to [0, 1]; on a share ``prob`` of images."""

    def __init__(
        self,
        keys: KeysCollection,
        std: float | Sequence[float] = 0.01,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, std, "std", 0.0, allow_missing_keys, prob)

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (x + torch.randn(x.shape, generator=generator) * self._value).clamp(0.0, 1.0)


def _codec(x: torch.Tensor, bits: int, encode) -> torch.Tensor:
    """Each channel of a batch (1, C, X, Y) in [0, 1] stored as ``bits``-bit integers, saved by ``encode``
    (a PIL image -> file bytes) and read back."""
    top = 2**bits - 1
    out = []
    for channel in x[0].clamp(0.0, 1.0):
        ints = (channel * top).round().numpy().astype(np.uint8 if bits == 8 else np.uint16)
        decoded = np.asarray(Image.open(io.BytesIO(encode(Image.fromarray(ints)))), dtype=np.float32)
        out.append(torch.from_numpy(decoded / top))
    return torch.stack(out)[None]


def _saved(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **options)
    return buf.getvalue()


class RandJPEGd(_RandLRd):
    """Baseline JPEG at ``quality`` (1-100; a number or a ``(low, high)`` range drawn per image), as PACS
    exports and telemedicine send radiographs: the image becomes 8-bit and carries JPEG's block artifacts;
    on a share ``prob`` of images."""

    def __init__(
        self,
        keys: KeysCollection,
        quality: float | Sequence[float] = (30, 95),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, quality, "quality", 1, allow_missing_keys, prob, high=100)

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        quality = int(round(self._value))
        return _codec(x, 8, lambda im: _saved(im, format="JPEG", quality=quality))


class RandJPEG2000d(_RandLRd):
    """Lossy (irreversible wavelet) JPEG 2000 of 16-bit samples at compression ``ratio`` (> 1; a number or a
    ``(low, high)`` range drawn per image), as DICOM's lossy transfer syntax stores radiographs; on a share
    ``prob`` of images."""

    def __init__(
        self,
        keys: KeysCollection,
        ratio: float | Sequence[float] = (5, 40),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, ratio, "ratio", 1.0, allow_missing_keys, prob)

    def _apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        ratio = self._value
        options = {"format": "JPEG2000", "irreversible": True, "quality_mode": "rates", "quality_layers": [ratio]}
        return _codec(x, 16, lambda im: _saved(im, **options))


class RandQuantized(RandomizableTransform, MapTransform):
    """Quantization to a bit depth drawn from ``bits`` (a list, or a mapping to weights; e.g. the 8, 10 and
    12 bits detectors and exports store), on a share ``prob`` of images."""

    def __init__(
        self,
        keys: KeysCollection,
        bits: Mapping | Sequence[int] | int = (8, 10, 12),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        owner = type(self).__name__
        self.bits = _weights(owner, "bits", bits, range(1, 17))
        RandomizableTransform.__init__(self, prob=_checked_prob(owner, prob))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize(None)
        depth = _draw(self.R, self.bits)
        d = dict(data)
        if not self._do_transform:
            return d
        top = 2**depth - 1
        for key in self.key_iterator(d):
            img = d[key]
            d[key] = zoom_geometry(img, (_as_batch(img)[0].clamp(0.0, 1.0) * top).round() / top, 1.0)
        return d


class RandResized(RandomizableTransform, MapTransform):
    """Resizing with a mode drawn per image from ``modes`` (:data:`DOWNSAMPLE_MODES`; a list, or a mapping to
    weights): to the HR image's size over ``scale`` (the LR size), or, given ``zoom``, to the HR size times
    a factor drawn from ``zoom`` (an intermediate size: a second-order degradation degrades again from
    there). ``hr_key`` is only read, for its size and geometry."""

    def __init__(
        self,
        keys: KeysCollection,
        scale: int = 4,
        modes: Mapping | Sequence[str] | str = DOWNSAMPLE_MODES,
        zoom: float | Sequence[float] | None = None,
        hr_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        owner = type(self).__name__
        if isinstance(scale, bool) or int(scale) != scale or scale < 1:
            raise InputError(f"{owner}: scale must be a positive whole number, got {scale!r}.")
        self.scale, self.hr_key = int(scale), hr_key
        self.modes = _weights(owner, "modes", modes, DOWNSAMPLE_MODES)
        self.zoom = None if zoom is None else checked_range(owner, "zoom", zoom, 1.0 / self.scale, 4.0)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        mode = _draw(self.R, self.modes)
        hr = data[self.hr_key]
        if self.zoom is None:
            factor, size = 1.0 / self.scale, tuple(n // self.scale for n in hr.shape[-2:])
        else:
            factor = float(self.R.uniform(*self.zoom))
            size = tuple(max(1, round(n * factor)) for n in hr.shape[-2:])
        d = dict(data)
        for key in self.key_iterator(d):
            y = resize(_as_batch(d[key]), size, mode)[0].clamp(0.0, 1.0)
            d[key] = zoom_geometry(hr, y, factor)
        return d


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
