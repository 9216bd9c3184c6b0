"""Named LR-synthesis presets: ``configs/degradations/<name>.json`` in the bundle, read by the ``degradation``
key of the train and evaluate configs (``--degradation realistic_x4``), and the one function that composes
a degradation for training, evaluation, the demo and the benchmarks (:func:`lr_synthesis`).

A preset is a JSON object with a ``description``, the ``scale`` it is made for (omitted: any scale) and
``transforms``: MONAI dictionary transforms as the bundle configs write them (``_target_`` and arguments;
``@scale`` is the SR factor), applied in order to the LR image, which starts as a copy of the HR image::

    {"description": "blur, then x4 antialiased bicubic, then quantum noise",
     "scale": 4,
     "transforms": [
         {"_target_": "monai_sr_bundle.transforms.degradation.RandBlurd", "sigma": [0.5, 1.5]},
         {"_target_": "monai_sr_bundle.transforms.degradation.Resized", "scale": "@scale"},
         {"_target_": "monai_sr_bundle.transforms.degradation.RandPoissonNoised", "peak": 2000.0}]}

A transform's ``keys`` default to the LR key; none may touch the HR target, which stays as read (cropped to a
multiple of the scale). A preset's optional ``processing`` steps come first and act on the HR image itself
(their ``keys`` default to the HR key): a hospital's look varied in training
(:mod:`monai_sr_bundle.transforms.processing`), before the LR image is made from it, so the pair stays a pair.
A step may compose others (MONAI's ``RandomOrder``, ``OneOf`` with ``weights``,
``Compose``, each with its ``transforms``): the realistic presets shuffle noise and compression and degrade
twice, and ``OneOf`` keeps a share of clean bicubic pairs in training. Random transforms are seeded through
the composition (``set_random_state``), so the same seed gives the same LR bytes in training and evaluation. A
step that draws artifacts stores where it drew them under ``mask_key`` = :data:`ARTIFACT_MASK_KEY` (evaluation
scores the region). Naming presets keeps experiments comparable: a results table says which degradation
it was measured on.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, CopyItemsd, MapTransform, apply_transform

from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.errors import InputError, first_line, innermost
from monai_sr_bundle.jsonfile import read_json_object
from monai_sr_bundle.transforms.degradation import CropToScaled

__all__ = [
    "ARTIFACT_MASK_KEY",
    "DEFAULT_PRESET",
    "PRESET_DIR",
    "PRESET_KEYS",
    "LRSynthesis",
    "available_presets",
    "load_preset",
    "lr_synthesis",
]

PRESET_DIR = BUNDLE_ROOT / "configs" / "degradations"
#: keys a preset may hold
PRESET_KEYS = ("description", "scale", "processing", "transforms")
#: the degradation when none is given: antialiased bicubic downsampling at the SR scale
DEFAULT_PRESET = "bicubic"
#: where a preset's artifact step stores the (1, X, Y) coverage of what it drew on the LR image
ARTIFACT_MASK_KEY = "artifact_mask"


def available_presets() -> list[str]:
    """Names of the presets in ``configs/degradations``, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json")) if PRESET_DIR.is_dir() else []


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A degradation preset by name (``"bicubic"``, with or without ``.json``) or path to a JSON file, as a
    fresh dict; a missing file, other keys or transforms that are not a list of ``_target_`` objects are
    refused in one sentence naming the file."""
    path = Path(name_or_path)
    if not path.is_file():
        stem = path.name[:-5] if path.name.endswith(".json") else path.name
        path = PRESET_DIR / f"{stem}.json"
    if not path.is_file():
        raise InputError(
            f"Degradation preset {str(name_or_path)!r} not found; available presets: "
            f"{', '.join(available_presets()) or '(none)'} (or give a path to a JSON file)."
        )
    what = f"Degradation preset {str(path)!r}"
    return _checked(read_json_object(path, what, PRESET_KEYS), what)


def _checked(preset: dict, what: str) -> dict:
    unknown = sorted(set(preset) - set(PRESET_KEYS))
    if unknown:
        raise InputError(f"{what} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(PRESET_KEYS)}.")
    for key in ("processing", "transforms"):
        steps = preset.get(key, [] if key == "processing" else None)
        if not isinstance(steps, list):
            raise InputError(f"{what}: `{key}` must be a list of MONAI dictionary transforms ({{'_target_': ...}}).")
        for i, step in enumerate(steps):
            if not isinstance(step, dict) or not isinstance(step.get("_target_"), str):
                raise InputError(f"{what}: {key}#{i} must be an object with a `_target_` (a transform class).")
    scale = preset.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or scale < 1):
        raise InputError(f"{what}: `scale` must be a positive whole number, got {scale!r}.")
    return preset


def pipeline(steps: list) -> Compose:
    """One flat ``Compose`` of the train config's steps, where a step may be a list of steps (a method's
    ``conditioning``, the patch augmentations, an optional content scale): flat, so that ``CacheDataset``
    caches every deterministic step before the first random one."""
    return Compose([t for step in steps for t in (step if isinstance(step, (list, tuple)) else [step])])


def validation_degradation(val_degradation: str | os.PathLike | Mapping | None, degradation):
    """The degradation validation images get: ``val_degradation`` when the method sets one (a fixed preset
    beside a random training mix, so model selection is not at the mercy of the draw), else the training one."""
    return val_degradation or degradation


def lr_synthesis(
    degradation: str | os.PathLike | Mapping | None, scale: int, hr_key: str = "label", lr_key: str = "image"
) -> LRSynthesis:
    """The degradation ``degradation`` (a preset name or path, a mapping with a preset's keys, None for
    :data:`DEFAULT_PRESET`) at ``scale``: a dictionary transform that makes ``lr_key`` from ``hr_key``. A
    preset made for another scale, a step that cannot be built, is no MONAI dictionary transform or would
    touch the HR key is refused in one sentence naming the preset and the step (``transforms#i``)."""
    if isinstance(degradation, Mapping):
        what, preset = "the degradation", _checked(copy.deepcopy(dict(degradation)), "the degradation")
    else:
        what, preset = f"degradation {str(degradation or DEFAULT_PRESET)!r}", load_preset(degradation or DEFAULT_PRESET)
    if preset.get("scale", scale) != scale:
        raise InputError(f"{what} is made for x{preset['scale']}, not x{scale}; pick one for x{scale}.")
    processing = preset.get("processing", [])
    for i, step in enumerate(processing):
        _default_keys(step, f"processing#{i}", what, lr_key, hr_key)
    for i, step in enumerate(preset["transforms"]):
        _default_keys(step, f"transforms#{i}", what, hr_key, lr_key)
    parser = ConfigParser({"scale": int(scale), "processing": processing, "transforms": preset["transforms"]})
    built = {}
    for key in ("processing", "transforms"):
        built[key] = []
        for i, step in enumerate(parser[key]):
            made = _built(parser, f"{key}#{i}", step, what)
            _check_built(made, step, f"{what}: {key}#{i}")
            built[key].append(made)
    return LRSynthesis(built["transforms"], scale, hr_key, lr_key, what, processing=built["processing"])


def _built(parser: ConfigParser, key: str, step: dict, what: str) -> Any:
    """The step at ``key``, the steps it composes first, so that an error names the innermost one."""
    for i, inner in enumerate(step.get("transforms") if isinstance(step.get("transforms"), list) else ()):
        _built(parser, f"{key}#transforms#{i}", inner, what)
    try:
        return parser.get_parsed_content(key)
    except Exception as e:  # MONAI wraps the class's own error: report the innermost sentence
        raise InputError(f"{what}: {key} ({step['_target_']}) cannot be built ({first_line(e)}).") from e


def _default_keys(step: Any, where: str, what: str, hr_key: str, lr_key: str) -> None:
    """Give each transform of ``step`` the key ``lr_key`` unless it names keys, looking into the ``transforms``
    of a composing step (``RandomOrder``, ``OneOf``, ``Compose``); one that names ``hr_key`` is refused (a
    processing step is checked with the two swapped: it acts on the HR image and must leave the LR alone)."""
    if not isinstance(step, dict) or not isinstance(step.get("_target_"), str):
        raise InputError(f"{what}: {where} must be an object with a `_target_` (a transform class).")
    if isinstance(step.get("transforms"), list):
        for i, inner in enumerate(step["transforms"]):
            _default_keys(inner, f"{where}#transforms#{i}", what, hr_key, lr_key)
        return
    keys = step.setdefault("keys", lr_key)
    if hr_key in ([keys] if isinstance(keys, str) else list(keys)):
        raise InputError(
            f"{what}: {where} ({step['_target_']}) would change the image {hr_key!r}; this part of a degradation "
            f"acts on {lr_key!r} only."
        )


def _check_built(built: Any, step: dict, where: str) -> None:
    """A built step is a MONAI dictionary transform, or a composition (its ``transforms``) of such."""
    if isinstance(built, Compose) and isinstance(step.get("transforms"), list):
        for i, (inner, spec) in enumerate(zip(built.transforms, step["transforms"])):
            _check_built(inner, spec, f"{where}#transforms#{i}")
    elif not isinstance(built, MapTransform):
        raise InputError(f"{where} ({step['_target_']}) is a {type(built).__name__}, not a MONAI dictionary transform.")


class LRSynthesis(Compose):
    """HR ``hr_key`` -> LR ``lr_key``: the HR image cropped to a multiple of ``scale`` and processed by the
    ``processing`` steps, copied to ``lr_key``, then the degradation ``steps`` on the copy. Seed it per image
    with ``set_random_state``; a step that changes the HR image after all, or refuses the image (a blur kernel
    larger than it), is one sentence naming the degradation (``what``)."""

    def __init__(
        self,
        steps: list,
        scale: int,
        hr_key: str = "label",
        lr_key: str = "image",
        what: str = "",
        processing: list | None = None,
    ) -> None:
        super().__init__([*(processing or []), CopyItemsd(keys=hr_key, names=lr_key), *steps])
        self.crop = CropToScaled(keys=hr_key, scale=scale)
        self.hr_key, self.what, self.processed = hr_key, what or "the degradation", len(processing or [])

    def __call__(self, data, *args, **kwargs):
        d = self.crop(data)
        try:
            for step in self.transforms[: self.processed]:
                d = apply_transform(step, d)
            hr = d[self.hr_key]
            out = d
            for step in self.transforms[self.processed :]:
                out = apply_transform(step, out)
        except RuntimeError as e:  # MONAI wraps a step's error: a step that refuses this image says why
            inner = innermost(e)
            if isinstance(inner, InputError):
                raise InputError(f"{self.what}: {first_line(inner)}") from e
            raise
        changed = out[self.hr_key]
        if changed is not hr and (
            changed.shape != hr.shape or not torch.equal(torch.as_tensor(changed), torch.as_tensor(hr))
        ):
            raise InputError(f"{self.what} changed the HR image {self.hr_key!r}; its steps may act on the LR only.")
        return out
