"""A method's overlay ``configs/methods/<name>.json`` as a file: where overlays are found, and whether one fits the
configs its stages train with, checked on its JSON alone (nothing is built or imported).

An overlay is a bundle config: it names the method's network and, for a trainable method, its training
stages, and sets the train config's keys where the method differs from their defaults (``configs/train.json``
holds every setting with its default). The file name is the method's name, written nowhere else::

    {"network_def": {"_target_": "monai_sr_bundle.networks.MyNet", "scale": "@scale"},
     "stages": {"gan": ["train.json", "train_gan.json"]},
     "learning_rate": 0.0005, "max_epochs": 20,
     "losses#perceptual": {"_target_": "monai_sr_bundle.losses.PerceptualLoss", "_mode_": "callable",
                           "weight": 0.006}}

``stages`` maps each stage, in training order, to its config files: the stage's base (``train.json``), then
the files that wire its modules (each stage's files set the config key ``stage`` to its name). A stage trains
with ``configs/inference.json``, the base, the overlay, then the stage's other files
(:func:`monai_sr_bundle.stages.stage_configs`), so the overlay overrides the defaults and a stage file has
the last word on its wiring; the last stage publishes the method's weights. Every reader (CLI, MONAI Label
trainer, NVFlare client, zoo export) asks :attr:`~monai_sr_bundle.methods.Method.stages`.
Further overlay folders (a site's own methods) are listed in ``$MONAI_SR_METHODS`` (``os.pathsep``-separated).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.jsonfile import read_json_object

METHODS_DIR = BUNDLE_ROOT / "configs" / "methods"
#: the overlay's own keys; any other key must be one the configs of its stages define
OVERLAY_KEYS = ("network_def", "discriminator_def", "stages", "default", "description", "parameters")


def overlay_dirs() -> list[Path]:
    """The package's overlay folder, then those of ``$MONAI_SR_METHODS``."""
    extra = [Path(p) for p in os.environ.get("MONAI_SR_METHODS", "").split(os.pathsep) if p]
    return [METHODS_DIR, *extra]


def overlays() -> dict[str, Path]:
    """Method name -> overlay file, sorted by name; a name defined twice is refused."""
    found: dict[str, Path] = {}
    for folder in overlay_dirs():
        for path in sorted(folder.glob("*.json")):
            if path.stem in found:
                raise InputError(
                    f"method {path.stem!r} is defined twice, in {found[path.stem]} and {path}; rename one."
                )
            found[path.stem] = path
    return dict(sorted(found.items()))


def read_overlay(name: str, overlay: Path) -> tuple[dict, dict[str, list[str]]]:
    """The overlay of method ``name`` and its ``stages``, refused in one sentence when a network definition has
    no ``_target_``, a stage names no config file of ``configs/``, or a key fits none of its stages' configs."""
    config = read_json_object(overlay, f"method {name!r}: its overlay {overlay}")
    for key in ("network_def", *(["discriminator_def"] if "discriminator_def" in config else [])):
        definition = config.get(key)
        if not isinstance(definition, dict) or not isinstance(definition.get("_target_"), str):
            raise InputError(
                f'method {name!r}: its overlay {overlay} needs "{key}" with a "_target_" (the network class).'
            )
    stages = _checked_stages(name, overlay, config.get("stages", {}))
    _check_settings(name, overlay, config, stages)
    return config, stages


def _checked_stages(name: str, overlay: Path, stages) -> dict[str, list[str]]:
    """The overlay's ``stages`` if they map names to lists of config files that exist in ``configs/``."""
    where = f'method {name!r}: "stages" in {overlay}'
    if not isinstance(stages, dict):
        raise InputError(
            f'{where} must map each stage, in training order, to its config files, e.g. {{"gan": '
            '["train.json", "train_gan.json"]}.'
        )
    for stage, files in stages.items():
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise InputError(f'{where}: stage {stage!r} must list its config files, e.g. ["train.json"].')
        missing = [f for f in files if not (BUNDLE_ROOT / "configs" / f).is_file()]
        if missing:
            raise InputError(
                f"{where}: stage {stage!r} names {', '.join(missing)}, not found in {BUNDLE_ROOT / 'configs'}."
            )
    return {stage: list(files) for stage, files in stages.items()}


def _check_settings(name: str, overlay: Path, config: dict, stages: dict[str, list[str]]) -> None:
    """Refuse an overlay key that none of the configs its stages train with defines or reads (a typo would
    otherwise add a key nothing reads, and the setting would silently stay at its default), and a stage
    setting the overlay leaves unset: a stage file reads its own settings (``adversarial_weight``,
    ``autoencoder_learning_rate``, ...) from the overlay, which declares them, since it comes after the
    base ``train.json`` and before the stage's files."""
    files = {"inference.json", *(f for stage in stages.values() for f in stage)}
    known = set(OVERLAY_KEYS).union(*(_config_keys(f) | _config_refs(f) for f in files))
    unknown = sorted(k for k in config if k.lstrip("+").split("#", 1)[0] not in known)
    if unknown:
        raise InputError(
            f"method {name!r}: {', '.join(unknown)} in its overlay {overlay} "
            f"{'is no key' if len(unknown) == 1 else 'are no keys'} of the configs its stages train with "
            f"({', '.join(sorted(files))}); see configs/train.json for the settings there are."
        )
    own = {k.lstrip("+").split("#", 1)[0] for k in config}
    for stage, stage_files in stages.items():
        stage_files = ["inference.json", *stage_files]
        read = set().union(*(_config_refs(f) for f in stage_files))
        unset = sorted(read - own - set().union(*(_config_keys(f) for f in stage_files)))
        if unset:
            raise InputError(
                f"method {name!r}: its {stage!r} stage ({', '.join(stage_files[1:])}) reads "
                f"{', '.join(unset)}, which its overlay {overlay} must set."
            )


@lru_cache(maxsize=32)
def _config_keys(name: str) -> frozenset[str]:
    """The top-level keys (``+`` and ``#`` paths at their root) of the bundle config ``configs/<name>``."""
    return frozenset(k.lstrip("+").split("#", 1)[0] for k in read_json_object(BUNDLE_ROOT / "configs" / name, name))


def _config_refs(name: str) -> frozenset[str]:
    """The keys (at their root) that the bundle config ``configs/<name>`` reads with ``@`` references."""
    return frozenset(re.findall(r"@([A-Za-z_]\w*)", (BUNDLE_ROOT / "configs" / name).read_text(encoding="utf-8")))
