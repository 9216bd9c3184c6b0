"""A method's training stages as the bundle configs that train them (its overlay's ``stages``,
:attr:`~monai_sr_bundle.methods.Method.stages`): the files of a stage as a recorded command names them, the
train config parsed for the surfaces that train in process (the MONAI Label trainer, the NVFlare client), a
stage's config merged and resolved, as ``monai-sr config`` prints it, and the paths the configs ask of a method
(:func:`default_weights`, :func:`output_folder`)."""

from __future__ import annotations

import os
from pathlib import Path

from monai_sr_bundle import methods
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.errors import InputError

CONFIGS = BUNDLE_ROOT / "configs"


def default_weights(method: methods.Method) -> str | None:
    """The weights a run of ``method`` reads or publishes unless told others (``ckpt_path``): its shipped
    file; None for a method without parameters."""
    return str(method.weights_path) if method.trainable else None


def output_folder(root: str, kind: str, method: methods.Method, weights: str | os.PathLike | None = None) -> str:
    """``<root>/<kind>/<stem of weights>`` (the method's own weights unless ``weights`` names others): a
    training run's or an evaluation's folder, named after the weights it makes or scores, so that two
    methods, scales, modalities or stages never share one."""
    return f"{root}/{kind}/{Path(weights if weights is not None else method.weights_path).stem}"


def stage_configs(method: methods.Method, stage: str | None = None) -> list[str]:
    """The config files of ``method``'s ``stage`` (default: its last, which publishes the method's weights),
    relative to the bundle root as a recorded command names them: ``inference.json``, the stage's base
    (its first file), the method's overlay, then the stage's other files
    (:attr:`~monai_sr_bundle.methods.Method.stages`)."""
    stage = stage or (list(method.stages) or [None])[-1]
    check_stage(method, stage)
    base, *wiring = method.stages[stage]
    overlay = method.overlay.resolve()
    overlay = overlay.relative_to(BUNDLE_ROOT) if overlay.is_relative_to(BUNDLE_ROOT) else overlay
    return [
        f"{CONFIGS.name}/inference.json",
        f"{CONFIGS.name}/{base}",
        str(overlay),
        *(f"{CONFIGS.name}/{f}" for f in wiring),
    ]


def train_configs(method: str, stage: str | None = None) -> list[str]:
    """The config files (absolute paths) that train ``method``'s ``stage``, by default its last."""
    return [str(BUNDLE_ROOT / f) for f in stage_configs(methods.get(method), stage)]


def resolved_config(method: methods.Method, stage: str = "inference") -> dict:
    """``method``'s config for ``stage`` (``inference`` or one of its training stages) merged as ``monai.bundle
    run`` merges its files, with every reference to a plain value replaced by that value: what a run uses, at a
    glance, instead of three or four files read side by side. Expressions (``$``) and objects (``_target_``)
    stay as written: they are code, built when the run starts."""
    from monai.bundle import ConfigParser

    if stage == "inference":
        files = [str(CONFIGS / "inference.json"), str(method.overlay)]
    else:
        files = [str(BUNDLE_ROOT / f) for f in stage_configs(method, stage)]
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"bundle_root": str(BUNDLE_ROOT), "method": method.name, "scale": method.scale})
    parser["modality"] = method.modality

    def plain(value) -> bool:
        if isinstance(value, dict):
            return "_target_" not in value and all(map(plain, value.values()))
        if isinstance(value, list):
            return all(map(plain, value))
        return not (isinstance(value, str) and value[:1] in "@$%")

    def resolve(value, depth: int = 0):
        if isinstance(value, dict):
            return {k: resolve(v, depth) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, depth) for v in value]
        if isinstance(value, str) and value.startswith("@") and depth < 16:
            target = resolve(parser.get(value[1:], value), depth + 1)
            return target if plain(target) else value
        return value

    return resolve(parser.get())


def train_parser(method: str | None = None, multi_gpu: bool = False):
    """The bundle's train config for ``method`` (default: the default method), parsed lazily, with
    ``bundle_root`` at this package and the ``method`` key set, as ``--method`` does on the command line;
    ``multi_gpu``: with ``configs/multi_gpu_train.json`` last, for a process that torchrun started."""
    from monai.bundle import ConfigParser

    method = method or methods.default_name()
    parser = ConfigParser()
    extra = [str(BUNDLE_ROOT / "configs" / "multi_gpu_train.json")] if multi_gpu else []
    parser.read_config(train_configs(method) + extra)
    parser["bundle_root"] = str(BUNDLE_ROOT)
    parser["method"] = method
    return parser


def check_stage(method: methods.Method, stage: str | None) -> None:
    """Refuse a stage the method does not declare (a GAN trained without its discriminator, a latent method's
    denoiser on an untrained latent), naming the config files of the stages it has."""
    if not method.stages:
        raise InputError(
            f'method {method.name!r} declares no training stages (its overlay {method.overlay} has no "stages"); '
            f"train one of {', '.join(methods.trainable_names())}."
        )
    if stage not in method.stages:
        declared = "; ".join(
            f'{name}: --config_file "[{",".join(repr(f) for f in stage_configs(method, name))}]"'
            for name in method.stages
        )
        raise InputError(
            f"method {method.name!r} has no {stage!r} stage (its overlay {method.overlay} declares its stages); "
            f"train it, in this order, with {declared}."
        )
