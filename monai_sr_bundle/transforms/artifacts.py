"""Synthetic burned-in artifacts (circles, letters, digits, lines) for artifact-removing SR training.

The anomaly-focused, distribution-aware diffusion SR method (ADSR, MIDL 2024: an SR3 U-Net with a VAE
branch) trains on low-resolution inputs that carry synthetic artifacts (circles, letters, digits and lines)
against clean high-resolution targets, so the model learns to remove burned-in markers and annotations
rather than to reproduce them.

Apply :class:`RandArtifactsd` to the LR key only; the HR target must stay clean (the published code added
the artifacts to the targets as well, which teaches the opposite).

Geometry is drawn in coordinates relative to the image, so one random draw renders consistently on
images of different sizes (e.g. an LR image and its pre-upsampled copy).
"""

from __future__ import annotations

import string
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor
from PIL import Image, ImageDraw, ImageFont

from monai_sr_bundle.errors import InputError

__all__ = ["ARTIFACT_KINDS", "ArtifactSpec", "render_artifact", "RandArtifacts", "RandArtifactsd"]

ARTIFACT_KINDS: tuple[str, ...] = ("circle", "letter", "digit", "line")

_CHARS = {"letter": string.ascii_uppercase, "digit": string.digits}


@dataclass(frozen=True)
class ArtifactSpec:
    """One drawn artifact, in image-relative geometry.

    Args:
        kind: one of :data:`ARTIFACT_KINDS`.
        value: intensity burned in, in [0, 1].
        center: (x, y) centre as fractions of the spatial size.
        size: circle diameter, text height or line length, as a fraction of the shorter spatial side.
        thickness: stroke width in pixels (circle outline, line).
        angle: line direction in radians.
        filled: whether a circle is filled (a disc) rather than outlined.
        text: the characters of a letter/digit artifact.
    """

    kind: str
    value: float
    center: tuple[float, float]
    size: float
    thickness: int = 1
    angle: float = 0.0
    filled: bool = False
    text: str = ""


def _range(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """A scalar or a (lo, hi) pair as a validated (lo, hi) tuple."""
    if isinstance(value, (int, float)):
        return float(value), float(value)
    vals = tuple(float(v) for v in value)
    if len(vals) != 2 or vals[0] > vals[1]:
        raise InputError(
            f"RandArtifacts `{name}` must be a number or a (low, high) pair with low <= high, got {value!r}."
        )
    return vals  # type: ignore[return-value]


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font, at ``size`` where FreeType is available (the glyph is rescaled anyway)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError, AttributeError):  # old Pillow or no FreeType: bitmap font
        return ImageFont.load_default()


def _glyph(text: str, height: int) -> Image.Image:
    """``text`` rendered white-on-black ('L' mode), tightly cropped, rescaled to ``height`` pixels."""
    font = _font(int(min(max(height, 10), 96)))
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        return Image.new("L", (1, 1), 255)
    glyph = canvas.crop(box)
    width = max(1, int(round(glyph.width * height / glyph.height)))
    return glyph.resize((width, height), Image.BILINEAR)


def render_artifact(spec: ArtifactSpec, spatial_shape: Sequence[int]) -> np.ndarray:
    """Rasterise one artifact as a float32 coverage mask in [0, 1] of shape ``spatial_shape`` (X, Y).

    PIL draws in (x, y) = (column, row); its (W, H) canvas is transposed to the (X, Y) tensor layout.

    Args:
        spec: the artifact to draw.
        spatial_shape: (X, Y) of the target image.
    """
    sx, sy = int(spatial_shape[0]), int(spatial_shape[1])
    side = min(sx, sy)
    canvas = Image.new("L", (sx, sy), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = spec.center[0] * (sx - 1), spec.center[1] * (sy - 1)
    width = int(max(1, min(spec.thickness, max(1, side // 8))))  # keep strokes sane on tiny images
    if spec.kind == "circle":
        r = max(1.0, spec.size * side / 2)
        bbox = [cx - r, cy - r, cx + r, cy + r]
        if spec.filled:
            draw.ellipse(bbox, fill=255)
        else:
            draw.ellipse(bbox, outline=255, width=width)
    elif spec.kind == "line":
        half = max(1.0, spec.size * side / 2)
        dx, dy = half * np.cos(spec.angle), half * np.sin(spec.angle)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=width)
    elif spec.kind in _CHARS:
        glyph = _glyph(spec.text, max(4, int(round(spec.size * side))))
        fit = min(1.0, sx / glyph.width, sy / glyph.height)
        if fit < 1.0:
            glyph = glyph.resize((max(1, int(glyph.width * fit)), max(1, int(glyph.height * fit))), Image.BILINEAR)
        x0 = int(np.clip(round(cx - glyph.width / 2), 0, sx - glyph.width))
        y0 = int(np.clip(round(cy - glyph.height / 2), 0, sy - glyph.height))
        canvas.paste(glyph, (x0, y0))
    else:
        raise InputError(f"Unknown artifact kind {spec.kind!r}; use one of {', '.join(ARTIFACT_KINDS)}.")
    return np.asarray(canvas, dtype=np.float32).T / 255.0


class RandArtifacts(RandomizableTransform):
    """Burn random circles, letters, digits and lines into a channel-first 2D image (C, X, Y).

    Mimics burned-in annotations and markers (side markers, arrows, rulers, text) for the artifact-removal
    training of ADSR (MIDL 2024): use it on the LR input only, never on the HR target. Each artifact is
    composited as ``img * (1 - m) + value * m`` with an anti-aliased coverage mask ``m``, identically on all
    channels. Output keeps the input's dtype and MetaTensor metadata; intensities are assumed in [0, 1].

    Args:
        prob: probability of adding artifacts at all.
        num_artifacts: number of artifacts per image, an int or an inclusive (low, high) range.
        kinds: subset of ``("circle", "letter", "digit", "line")`` to draw from, uniformly.
        intensity: burned-in value, a number or a (low, high) range; near 1.0 (bright, like burned-in
            annotations) by default.
        dark_prob: probability that an artifact is dark instead, with value ``1 - intensity``.
        size_range: (low, high) size as a fraction of the shorter spatial side (circle diameter,
            text height, line length).
        thickness: stroke width in pixels for lines and circle outlines, an int or an inclusive range;
            capped at 1/8 of the shorter side.
        circle_fill_prob: probability that a circle is a filled disc rather than an outline.
        text_length: number of characters of a letter/digit artifact, an int or an inclusive range.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 0.5,
        num_artifacts: int | Sequence[int] = (1, 3),
        kinds: Sequence[str] = ARTIFACT_KINDS,
        intensity: float | Sequence[float] = (0.9, 1.0),
        dark_prob: float = 0.0,
        size_range: Sequence[float] = (0.05, 0.25),
        thickness: int | Sequence[int] = (1, 3),
        circle_fill_prob: float = 0.3,
        text_length: int | Sequence[int] = (1, 2),
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        unknown = [k for k in kinds if k not in ARTIFACT_KINDS]
        if not kinds or unknown:
            raise InputError(
                f"RandArtifacts `kinds` must be a non-empty subset of {', '.join(ARTIFACT_KINDS)}, got {kinds!r}."
            )
        self.kinds = kinds
        self.num_artifacts = tuple(int(v) for v in _range(num_artifacts, "num_artifacts"))
        self.intensity = _range(intensity, "intensity")
        self.dark_prob = float(dark_prob)
        self.size_range = _range(size_range, "size_range")
        self.thickness = tuple(int(v) for v in _range(thickness, "thickness"))
        self.circle_fill_prob = float(circle_fill_prob)
        self.text_length = tuple(int(v) for v in _range(text_length, "text_length"))
        if self.num_artifacts[0] < 0 or self.thickness[0] < 1 or self.text_length[0] < 1 or self.size_range[0] <= 0:
            raise InputError(
                "RandArtifacts needs num_artifacts >= 0, thickness >= 1, text_length >= 1 and size_range > 0."
            )
        self.specs: list[ArtifactSpec] = []

    def randomize(self, data: Any = None) -> None:
        """Decide whether to apply, then draw the artifact list (image-size independent)."""
        super().randomize(None)
        self.specs = []
        if not self._do_transform:
            return
        for _ in range(int(self.R.randint(self.num_artifacts[0], self.num_artifacts[1] + 1))):
            kind = self.kinds[int(self.R.randint(len(self.kinds)))]
            value = float(self.R.uniform(*self.intensity))
            if self.R.rand() < self.dark_prob:
                value = 1.0 - value
            text = ""
            if kind in _CHARS:
                n = int(self.R.randint(self.text_length[0], self.text_length[1] + 1))
                text = "".join(_CHARS[kind][int(i)] for i in self.R.randint(len(_CHARS[kind]), size=n))
            self.specs.append(
                ArtifactSpec(
                    kind=kind,
                    value=value,
                    center=(float(self.R.uniform(0.0, 1.0)), float(self.R.uniform(0.0, 1.0))),
                    size=float(self.R.uniform(*self.size_range)),
                    thickness=int(self.R.randint(self.thickness[0], self.thickness[1] + 1)),
                    angle=float(self.R.uniform(0.0, np.pi)),
                    filled=bool(self.R.rand() < self.circle_fill_prob),
                    text=text,
                )
            )

    def render_mask(self, spatial_shape: Sequence[int]) -> np.ndarray:
        """Union coverage (X, Y) in [0, 1] of the currently drawn artifacts, e.g. for artifact-removal metrics."""
        keep = np.ones(tuple(int(s) for s in spatial_shape), dtype=np.float32)
        for spec in self.specs:
            keep *= 1.0 - render_artifact(spec, spatial_shape)
        return 1.0 - keep

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first 2D image (C, X, Y), float in [0, 1].
            randomize: draw new artifacts first; False reuses the last draw (as the dict form does).
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if img.ndim != 3:
            raise InputError(f"RandArtifacts needs a channel-first 2D image (C, X, Y); got shape {tuple(img.shape)}.")
        if randomize:
            self.randomize()
        if not self._do_transform or not self.specs:
            return img
        plain = img.as_tensor() if isinstance(img, MetaTensor) else img
        out = plain.to(torch.float32)
        for spec in self.specs:
            m = torch.from_numpy(render_artifact(spec, img.shape[1:])).to(out.device)
            out = out * (1.0 - m) + spec.value * m
        result, *_ = convert_to_dst_type(out, dst=img, dtype=img.dtype)
        return result


class RandArtifactsd(RandomizableTransform, MapTransform):
    """Dictionary form of :class:`RandArtifacts`: the same artifacts on every key in ``keys``, no others.

    Use ``keys="lr"`` so that the HR target stays clean (ADSR, MIDL 2024). Keys of different sizes get the
    same artifacts at the same relative places.

    Args:
        keys: keys of the images to corrupt (typically only the LR input).
        prob, num_artifacts, kinds, intensity, dark_prob, size_range, thickness, circle_fill_prob,
            text_length: as in :class:`RandArtifacts`.
        mask_key: if given, store the (1, X, Y) artifact coverage of the first key there (zeros when no
            artifact was drawn), e.g. to measure artifact removal.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = RandArtifacts.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        num_artifacts: int | Sequence[int] = (1, 3),
        kinds: Sequence[str] = ARTIFACT_KINDS,
        intensity: float | Sequence[float] = (0.9, 1.0),
        dark_prob: float = 0.0,
        size_range: Sequence[float] = (0.05, 0.25),
        thickness: int | Sequence[int] = (1, 3),
        circle_fill_prob: float = 0.3,
        text_length: int | Sequence[int] = (1, 2),
        mask_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.artifacts = RandArtifacts(
            prob=1.0,
            num_artifacts=num_artifacts,
            kinds=kinds,
            intensity=intensity,
            dark_prob=dark_prob,
            size_range=size_range,
            thickness=thickness,
            circle_fill_prob=circle_fill_prob,
            text_length=text_length,
        )
        self.mask_key = mask_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandArtifactsd:
        super().set_random_state(seed, state)
        self.artifacts.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            self.artifacts.randomize(None)
        else:
            self.artifacts.specs = []
        first = None
        for key in self.key_iterator(d):
            if first is None:
                first = key
            d[key] = self.artifacts(d[key], randomize=False)
        if self.mask_key is not None and first is not None:
            ref = d[first]
            mask = torch.from_numpy(self.artifacts.render_mask(ref.shape[1:]))[None]
            d[self.mask_key] = MetaTensor(mask, affine=ref.affine.clone()) if isinstance(ref, MetaTensor) else mask
        return d
