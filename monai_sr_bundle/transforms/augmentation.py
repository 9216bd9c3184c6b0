"""Training augmentation beyond the train config's crop and flip: paired augmentation of the patches named in a
method's overlay (``augmentations``), as the latent-diffusion paper trains with rot90 and cutout besides
crops and flips, every transform moving the LR patch and its HR patch together so the target stays the HR
image of the input; and content-scale augmentation of the whole HR image before its LR is made
(``content_scale``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, RandomizableTransform, RandRotate90d
from monai.utils import ensure_tuple

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.transforms.boxes import ScaleBoxes
from monai_sr_bundle.transforms.degradation import checked_range, resize, zoom_geometry


class RandSRCutoutd(RandomizableTransform, MapTransform):
    """With probability ``prob``, blank one random rectangle of the LR patch (``lr_key``) and the same region
    of its HR patch (``hr_key``, ``scale`` times larger), so the network cannot lean on any one region of a
    patch and the pair stays consistent; masks on the HR grid (``mask_keys``: the box mask) are cleared
    there, so no loss term weighs the blanked region up.

    Args:
        lr_key, hr_key: keys of the LR patch (C, x, y) and the HR patch (C, scale*x, scale*y).
        scale: the SR factor linking the two.
        max_fraction: the largest rectangle side as a fraction of the LR patch side.
        prob: chance of a cutout per patch.
        value: what the rectangle is filled with (0: black, in the library's [0, 1] intensities).
        mask_keys: masks on the HR grid to clear in the rectangle; absent ones are skipped.
    """

    def __init__(
        self,
        lr_key: str = "image",
        hr_key: str = "label",
        scale: int = 4,
        max_fraction: float = 0.25,
        prob: float = 0.5,
        value: float = 0.0,
        mask_keys: Sequence[str] = (),
    ) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, [lr_key, hr_key])
        if not 0 < max_fraction <= 1:
            raise InputError(f"cutout's max_fraction must be in (0, 1], got {max_fraction!r}.")
        self.lr_key, self.hr_key, self.scale = lr_key, hr_key, int(scale)
        self.max_fraction, self.value = float(max_fraction), float(value)
        self.mask_keys = ensure_tuple(mask_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize(None)
        d = dict(data)
        if not self._do_transform:
            return d
        x, y = d[self.lr_key].shape[-2:]
        h, w = (int(self.R.randint(1, max(1, int(side * self.max_fraction)) + 1)) for side in (x, y))
        i, j = int(self.R.randint(0, x - h + 1)), int(self.R.randint(0, y - w + 1))
        s = self.scale
        d[self.lr_key], d[self.hr_key] = d[self.lr_key].clone(), d[self.hr_key].clone()
        d[self.lr_key][..., i : i + h, j : j + w] = self.value
        d[self.hr_key][..., i * s : (i + h) * s, j * s : (j + w) * s] = self.value
        for key in (k for k in self.mask_keys if k in d):
            d[key] = d[key].clone()
            d[key][..., i * s : (i + h) * s, j * s : (j + w) * s] = 0
        return d


#: the augmentations an overlay may name, each made for the LR key ``image``, HR key ``label`` (and the box
#: mask ``box_mask`` on its grid, when there is one) and a scale
AUGMENTATIONS = {
    "rot90": lambda scale: RandRotate90d(keys=["image", "label", "box_mask"], prob=0.5, allow_missing_keys=True),
    "cutout": lambda scale: RandSRCutoutd(scale=scale, mask_keys=["box_mask"]),
}


def paired_augmentation(names: Sequence[str], scale: int) -> Compose:
    """The named augmentations in order (none: the identity), for the train config's patch pipeline."""
    if isinstance(names, str) or not all(isinstance(n, str) and n in AUGMENTATIONS for n in names):
        raise InputError(f"augmentations must be a list of {', '.join(AUGMENTATIONS)}; got {names!r}.")
    return Compose([AUGMENTATIONS[name](scale) for name in names])


class RandContentScaled(RandomizableTransform, MapTransform):
    """Content-scale augmentation: the HR image (``keys``) and its boxes (``box_keys``) shrunk by a factor drawn
    per image from ``zoom`` (antialiased bicubic) before the LR image is made from it, so a network sees the
    same anatomy at several pixel sizes (NIH's 512 px images are one; users' radiographs come at 0.1-0.2 mm
    and as 640 px exports). It never enlarges (that would invent no detail) and never shrinks an image below
    ``min_size`` pixels (the training patch)."""

    def __init__(
        self,
        keys: KeysCollection = "label",
        zoom: float | Sequence[float] = (0.5, 1.0),
        box_keys: KeysCollection = "boxes",
        min_size: int = 64,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.zoom = checked_range(type(self).__name__, "zoom", zoom, 1e-3, 1.0)
        self.box_keys, self.min_size = ensure_tuple(box_keys), int(min_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        factor = float(self.R.uniform(*self.zoom))
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            factor = max(factor, min(1.0, self.min_size / min(img.shape[-2:])))
            size = tuple(max(1, round(n * factor)) for n in img.shape[-2:])
            y = resize(torch.as_tensor(img, dtype=torch.float32)[None], size, "bicubic_aa")[0].clamp(0.0, 1.0)
            d[key] = zoom_geometry(img, y, factor)
        for key in (k for k in self.box_keys if k in d):
            d[key] = ScaleBoxes(factor)(d[key])
        return d


def content_scale(zoom: Sequence[float] | None, min_size: int) -> list:
    """The train config's content-scale step: none when ``zoom`` is None (the default, so a run without it
    draws the same random numbers as before), else :class:`RandContentScaled` of the HR image and its boxes."""
    return [] if zoom is None else [RandContentScaled("label", zoom, "boxes", min_size)]
