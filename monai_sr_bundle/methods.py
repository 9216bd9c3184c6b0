"""The method registry: one :class:`Method` per overlay ``configs/methods/<name>.json``, the one list that
every surface reads (CLI, bundle configs, MONAI Label, 3D Slicer, NVFlare, model card).

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
(:func:`monai_sr_bundle.training.stage_configs`), so the overlay overrides the defaults and a stage file has
the last word on its wiring; the last stage publishes the method's weights. Every reader (CLI, MONAI Label
trainer, NVFlare client, zoo export) asks :attr:`Method.stages`.

What a surface needs to know is derived from the network rather than declared twice: ``family`` is the
network's module (``networks/<family>.py``), ``trainable`` whether it has parameters, ``stochastic`` and
``exportable`` its class attributes of those names, ``halo`` the LR context a tile needs. For this package's
networks the first four are read from the class's source (:func:`declared_traits`, a network without parameters
says ``trainable = False``), so listing the methods imports neither torch nor MONAI; other networks are built.
Further overlay folders (a site's own methods) are listed in ``$MONAI_SR_METHODS`` (``os.pathsep``-separated).
"""

from __future__ import annotations

import ast
import copy
import os
import pickle
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from monai_sr_bundle.errors import InputError, shown
from monai_sr_bundle.jsonfile import read_json_object

if TYPE_CHECKING:  # torch and MONAI are imported where a network is built: listing methods needs neither
    from collections.abc import Mapping

    import torch
    from torch import nn

#: the bundle root (``configs/``, ``models/``): this package's folder, or, when the code is an exported zoo
#: bundle's ``scripts/`` (:mod:`monai_sr_bundle.zoo`), the folder above it
BUNDLE_ROOT = next(p for p in Path(__file__).resolve().parents[:2] if (p / "configs").is_dir())
METHODS_DIR = BUNDLE_ROOT / "configs" / "methods"
#: the overlay's own keys; any other key must be one the configs of its stages define
OVERLAY_KEYS = ("network_def", "discriminator_def", "stages", "default", "description", "parameters")
#: options that only a stochastic method's sampler takes
SAMPLING_OPTIONS = ("sampler", "steps", "seed", "samples")
#: most draws per image for the uncertainty maps (each is a whole sampling run)
MAX_SAMPLES = 64
#: the largest seed a sampler takes (torch's generators hold 64 bits)
MAX_SEED = 2**63 - 1
#: the LR tile edge when neither the caller nor the network names one (memory grows with its square)
DEFAULT_TILE_SIZE = 256
#: the weights families (``models/<method>_<modality>_x<scale>.pt``) and how each reads an image into [0, 1]
#: unless its weights record another map: chest radiographs min-max, chest CT the HU window of the lungs and
#: mediastinum (HU outside it clip). Declared here only: training records it with the weights, and inference,
#: evaluation, the CT data preparation and the federated jobs read it back (:meth:`Method.intensity`).
MODALITIES: dict[str, str | tuple[float, float]] = {"cxr": "minmax", "ct": (-1000.0, 400.0)}


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


def names() -> list[str]:
    """The methods there are, sorted."""
    return list(overlays())


def default_name() -> str:
    """The method the surfaces use when none is given: the overlay that says ``"default": true``."""
    marked = [name for name in names() if get(name).config.get("default") is True]
    if len(marked) != 1:
        raise InputError(
            f'exactly one method overlay must say "default": true; found {len(marked)} ({", ".join(marked) or "none"}).'
        )
    return marked[0]


def for_request(name: str | None, scale: int = 4, modality: str = "cxr", **sampling) -> Method:
    """The method a run asks for (the default one when it names none), its sampling options checked before any
    weights load: what the CLI's ``sr`` and Slicer's worker both start with."""
    method = get(name or default_name(), scale, modality)
    method.check_sampling(**sampling)
    return method


def trainable_names() -> list[str]:
    return [name for name in names() if get(name).trainable]


def baseline_name() -> str:
    """The reference the learned methods are compared with: the first method without parameters
    (interpolation)."""
    untrained = [name for name in names() if not get(name).trainable]
    if not untrained:
        raise InputError("no method without parameters (an interpolation baseline) is registered.")
    return untrained[0]


#: the largest SR factor any surface takes (weights exist for x2 and x4; interpolation serves any)
MAX_SCALE = 8


def get(name: str, scale: int = 4, modality: str = "cxr", bundle_root: str | os.PathLike | None = None) -> Method:
    """The method ``name`` at ``scale`` for ``modality``; an unknown name or modality is refused with the list.
    Resolved once per overlay version: a server asks for every request, and the capabilities build a network."""
    found = overlays()
    if name not in found:
        raise InputError(f"unknown method {name!r}; available: {', '.join(found)} ('monai-sr methods' describes them).")
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; the weights families are {', '.join(MODALITIES)}.")
    return _resolved(name, str(found[name]), found[name].stat().st_mtime_ns, scale, modality, str(bundle_root or ""))


def default_weights(method: Method) -> str | None:
    """The weights a run of ``method`` reads or publishes unless told others (``ckpt_path``): its shipped
    file; None for a method without parameters."""
    return str(method.weights_path) if method.trainable else None


def output_folder(root: str, kind: str, method: Method, weights: str | os.PathLike | None = None) -> str:
    """``<root>/<kind>/<stem of weights>`` (the method's own weights unless ``weights`` names others): a
    training run's or an evaluation's folder, named after the weights it makes or scores, so that two
    methods, scales, modalities or stages never share one."""
    return f"{root}/{kind}/{Path(weights if weights is not None else method.weights_path).stem}"


def compiled_parts(method: Method) -> list[str] | None:
    """What an engine compiler (TensorRT) may take of ``method``'s network: the whole network (None) when it
    exports, else the parts its class names (a sampler's loop does not export; its denoiser does)."""
    return None if method.exportable else list(method.network_class.export_parts)


@lru_cache(maxsize=128)
def _resolved(name: str, overlay: str, version: int, scale: int, modality: str, bundle_root: str) -> Method:
    return Method(name, Path(overlay), scale, modality, bundle_root or None)


class Method:
    """One SR method at one scale and modality, resolved from its overlay.

    Args:
        name: the overlay's file name.
        overlay: the overlay file.
        scale: the SR factor.
        modality: the weights family (``cxr``, ``ct``).
        bundle_root: the bundle whose ``models/`` holds the shipped weights (default: this package).
    """

    def __init__(
        self,
        name: str,
        overlay: Path,
        scale: int = 4,
        modality: str = "cxr",
        bundle_root: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or int(scale) != scale or scale < 1:
            raise InputError(f"method {name!r}: scale must be a positive whole number, got {shown(scale)}.")
        if scale > MAX_SCALE:
            raise InputError(f"method {name!r}: scale must be at most {MAX_SCALE}, got {shown(scale)}.")
        self.name, self.overlay, self.scale, self.modality = name, Path(overlay), int(scale), str(modality)
        self.bundle_root = Path(bundle_root or BUNDLE_ROOT)
        self.config = read_json_object(self.overlay, f"method {name!r}: its overlay {self.overlay}")
        for key in ("network_def", *(["discriminator_def"] if "discriminator_def" in self.config else [])):
            definition = self.config.get(key)
            if not isinstance(definition, dict) or not isinstance(definition.get("_target_"), str):
                raise InputError(
                    f'method {name!r}: its overlay {self.overlay} needs "{key}" with a "_target_" (the network class).'
                )
        self.stages: dict[str, list[str]] = self._checked_stages(self.config.get("stages", {}))
        self._check_settings()

    def __repr__(self) -> str:
        return f"Method({self.name!r}, scale={self.scale}, modality={self.modality!r})"

    def _checked_stages(self, stages) -> dict[str, list[str]]:
        """The overlay's ``stages`` if they map names to lists of config files that exist in ``configs/``."""
        where = f'method {self.name!r}: "stages" in {self.overlay}'
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

    def _check_settings(self) -> None:
        """Refuse an overlay key that none of the configs its stages train with defines or reads (a typo would
        otherwise add a key nothing reads, and the setting would silently stay at its default), and a stage
        setting the overlay leaves unset: a stage file reads its own settings (``adversarial_weight``,
        ``autoencoder_learning_rate``, ...) from the overlay, which declares them, since it comes after the
        base ``train.json`` and before the stage's files."""
        files = {"inference.json", *(f for stage in self.stages.values() for f in stage)}
        known = set(OVERLAY_KEYS).union(*(_config_keys(f) | _config_refs(f) for f in files))
        unknown = sorted(k for k in self.config if k.lstrip("+").split("#", 1)[0] not in known)
        if unknown:
            raise InputError(
                f"method {self.name!r}: {', '.join(unknown)} in its overlay {self.overlay} "
                f"{'is no key' if len(unknown) == 1 else 'are no keys'} of the configs its stages train with "
                f"({', '.join(sorted(files))}); see configs/train.json for the settings there are."
            )
        own = {k.lstrip("+").split("#", 1)[0] for k in self.config}
        for stage, stage_files in self.stages.items():
            stage_files = ["inference.json", *stage_files]
            read = set().union(*(_config_refs(f) for f in stage_files))
            unset = sorted(read - own - set().union(*(_config_keys(f) for f in stage_files)))
            if unset:
                raise InputError(
                    f"method {self.name!r}: its {stage!r} stage ({', '.join(stage_files[1:])}) reads "
                    f"{', '.join(unset)}, which its overlay {self.overlay} must set."
                )

    def _parser(self):
        """The overlay's network definitions with ``@scale`` and ``@modality`` defined, as a MONAI
        ``ConfigParser`` (a copy: parsing rewrites it)."""
        from monai.bundle import ConfigParser

        return ConfigParser(
            {
                "scale": self.scale,
                "modality": self.modality,
                **{k: copy.deepcopy(v) for k, v in self.config.items() if k.endswith("_def")},
            }
        )

    def network_spec(self) -> dict:
        """The network as ``{"class_path", "args"}`` with its arguments resolved (NVFlare's model spec)."""
        parser = self._parser()
        args = {
            k: parser.get_parsed_content(f"network_def#{k}")
            for k in self.config["network_def"]
            if not k.startswith("_")
        }
        return {"class_path": self.config["network_def"]["_target_"], "args": args}

    def network(self, weights: str | os.PathLike | None = None) -> nn.Module:
        """A new network of this method (fresh parameters, or ``weights`` loaded), in train mode."""
        network = self._build("network_def")
        self.__dict__.setdefault("_probe", network)  # what the probe is read for is the same in every build
        if weights is not None:
            if not self.trainable:
                raise InputError(
                    f"method {self.name!r} has no weights (it has no parameters); drop the weights argument."
                )
            load_weights(network, weights)
        return network

    def discriminator(self) -> nn.Module:
        """A new discriminator for GAN training (the overlay's ``discriminator_def``), in train mode."""
        if not self.adversarial:
            raise InputError(f"method {self.name!r} has no discriminator (its overlay has no discriminator_def).")
        return self._build("discriminator_def")

    def _build(self, key: str) -> nn.Module:
        """The module the overlay's ``key`` defines, or one sentence saying why it cannot be built."""
        from torch import nn

        try:
            module = self._parser().get_parsed_content(key)
        except Exception as e:  # a missing module, a wrong class name or bad arguments, as MONAI reports them
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(
                f"method {self.name!r}: its {key} in {self.overlay} cannot be built ({reason}); check "
                'its "_target_" and arguments.'
            ) from e
        if not isinstance(module, nn.Module):
            raise InputError(
                f'method {self.name!r}: "_target_" of {key} in {self.overlay} built a {type(module).__name__}, '
                "not a torch nn.Module."
            )
        return module

    @property
    def adversarial(self) -> bool:
        """Whether the method trains as a GAN (``configs/train_gan.json``): its overlay defines a discriminator."""
        return "discriminator_def" in self.config

    @property
    def latent(self) -> bool:
        """Whether the method works in an autoencoder's latent (``configs/train_autoencoder.json`` trains
        the autoencoder first, ``configs/train_diffusion.json`` then the denoiser on it)."""
        from torch import nn

        return isinstance(getattr(self._probe, "autoencoder", None), nn.Module)

    @cached_property
    def _probe(self) -> nn.Module:
        """A network of this method, read for what its architecture declares (halo, tiles, an autoencoder):
        the first one built (:meth:`network`), else one built for this."""
        return self.network()

    @property
    def network_class(self) -> type:
        """The network's class (``inference_trt.json`` asks a sampler's for its ``export_parts``)."""
        return type(self._probe)

    @cached_property
    def _traits(self) -> dict:
        """family, trainable, stochastic and exportable: declared in the network's source when it is this
        package's (:func:`declared_traits`), else found on a built network."""
        declared = declared_traits(self.config["network_def"]["_target_"])
        return declared if declared is not None else built_traits(self._probe)

    @property
    def family(self) -> str:
        """The network's module name (its file under ``networks/``); several methods may share one."""
        return self._traits["family"]

    @property
    def trainable(self) -> bool:
        return self._traits["trainable"]

    @property
    def stochastic(self) -> bool:
        return self._traits["stochastic"]

    @property
    def exportable(self) -> bool:
        """Whether ``forward`` exports to ONNX as one graph (a sampler's loop does not)."""
        return self._traits["exportable"]

    @property
    def halo(self) -> int:
        """LR pixels of context each tile needs for exact tiled SR; a network that does not declare its
        receptive field (``halo``) gets an eighth of a 256-pixel tile."""
        return int(getattr(self._probe, "halo", 32))

    @property
    def tile_size(self) -> int:
        """The LR tile edge used when a caller names none: the network's ``tile_size`` (an LR-size network with a
        wide context wants large tiles, or most of its time goes to the context), else
        :data:`DEFAULT_TILE_SIZE`."""
        return int(getattr(self._probe, "tile_size", DEFAULT_TILE_SIZE))

    @property
    def noise_aware(self) -> bool:
        """Whether the network takes a ``noise_level`` (:mod:`monai_sr_bundle.transforms.noise`): a
        degradation-aware method, whose denoising a user may set."""
        return self._traits["noise_aware"]

    @property
    def weights_name(self) -> str:
        return f"{self.name}_{self.modality}_x{self.scale}.pt"

    @property
    def weights_path(self) -> Path:
        """Where the method's shipped (or published) weights live: ``models/<name>_<modality>_x<scale>.pt``."""
        return self.bundle_root / "models" / self.weights_name

    @property
    def autoencoder_weights_path(self) -> Path:
        """Where a latent method's autoencoder stage publishes its weights (any scale shares them)."""
        return self.bundle_root / "models" / f"{self.name}_{self.modality}_autoencoder.pt"

    @property
    def weights_available(self) -> bool:
        return self.trainable and self.weights_path.is_file()

    @property
    def intensity(self) -> str | list[float]:
        """The reader's map to [0, 1] of the shipped weights (:meth:`intensity_of`)."""
        return self.intensity_of(self.weights_path)

    def intensity_of(self, weights: str | os.PathLike | None) -> str | list[float]:
        """The reader's map to [0, 1] that ``weights`` were trained with, as their :func:`weights_record` says;
        the modality's (:data:`MODALITIES`) when nothing is recorded or there are no weights (interpolation)."""
        recorded = weights_record(weights).get("intensity") if weights is not None else None
        return recorded if recorded is not None else MODALITIES[self.modality]

    def trainable_network(self, weights: str | os.PathLike | None = None) -> nn.Module:
        """A network to train, fresh or from ``weights``; a method without parameters is refused."""
        if not self.trainable:
            raise InputError(f"method {self.name!r} has nothing to train; train one of {', '.join(trainable_names())}.")
        return self.network(weights)

    def load(
        self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu", winograd: bool = False
    ) -> nn.Module:
        """The network in eval mode on ``device`` with its weights: ``weights`` if given, else the shipped
        ones (a method without parameters takes none). ``winograd`` swaps VDSR-style 3x3 convolutions for
        Winograd F(4x4, 3x3) on the CPU (same output to ~1e-5, about 2x faster after a compile per image
        size). Sampling options are not the network's: they go with each call (:meth:`predictor`)."""
        if self.trainable:
            if weights is None and not self.weights_path.is_file():
                raise InputError(
                    f"method {self.name!r} has no {self.modality} x{self.scale} weights "
                    f"({self.weights_name}); train it first or pass weights."
                )
            network = self.network(weights if weights is not None else self.weights_path)
        else:
            network = self.network(weights)
        network = network.to(device).eval()
        if winograd:
            import torch

            if torch.device(device).type != "cpu":
                raise InputError("--winograd is a CPU speed-up; drop it on a GPU.")
            if not getattr(network, "winograd_speedup", True):
                raise InputError(
                    f"--winograd speeds up VDSR-style stacks of 3x3 convolutions; method {self.name!r} gains "
                    "nothing from it: drop --winograd."
                )
            from monai_sr_bundle.winograd import winograd_inference

            network = winograd_inference(network)
        return network

    def predictor(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        winograd: bool = False,
        tile_size: int | None = None,
        precision: str = "auto",
        compile: bool = False,
        noise_level: float | str | None = None,
        runtime: str = "auto",
        **sampling,
    ):
        """The method loaded once (:meth:`load`) as the :class:`~monai_sr_bundle.inference.Predictor` every
        surface calls, its network on ``runtime`` (:mod:`monai_sr_bundle.engine`); ``sampling`` (``sampler``,
        ``steps``, ``seed``) and ``noise_level`` are its defaults, a call may change them."""
        from monai_sr_bundle import engine
        from monai_sr_bundle.inference import Predictor

        runtime, precision = engine.resolve(self, runtime, device, precision, winograd)  # before loading weights
        self.check_noise_level(noise_level)
        network = self.load(weights, device, winograd)
        return Predictor(
            self,
            network,
            weights,
            device=device,
            tile_size=tile_size,
            precision=precision,
            compile=compile,
            noise_level=noise_level,
            runtime=runtime,
            **sampling,
        )

    def check_noise_level(self, noise_level) -> float | None:
        """A noise level a user gave, as a number (None: estimate it from each image), refused in one sentence
        when it is no level (:func:`~monai_sr_bundle.transforms.noise.checked_noise_level`) or this method's
        network takes none."""
        from monai_sr_bundle.transforms.noise import checked_noise_level

        level = checked_noise_level(noise_level, f"method {self.name!r}: the noise level")
        if level is not None and not self.noise_aware:
            raise InputError(
                f"method {self.name!r} is not told how noisy its input is: drop the noise level (options of "
                "degradation-aware methods only)."
            )
        return level

    def check_sampling(self, **options) -> None:
        """Refuse sampler options (``sampler``, ``steps``, ``seed``, ``samples``) for a deterministic method,
        an unknown sampler, and numbers that are not positive whole numbers (``seed`` may be 0, ``samples``
        is at most ``MAX_SAMPLES``)."""
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - set(SAMPLING_OPTIONS))
        if unknown:
            raise InputError(f"unknown sampling option(s) {', '.join(unknown)}; use {', '.join(SAMPLING_OPTIONS)}.")
        if given and not self.stochastic:
            raise InputError(
                f"method {self.name!r} is deterministic and has no sampler: drop {', '.join(given)} "
                "(options of stochastic methods only)."
            )
        sampler = given.pop("sampler", None)
        if sampler is not None:
            from monai_sr_bundle.diffusion.samplers import SAMPLERS

            if not isinstance(sampler, str) or sampler not in SAMPLERS:
                raise InputError(
                    f"method {self.name!r}: unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}."
                )
        for key, value in given.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
                raise InputError(
                    f"method {self.name!r}: {key} must be a whole "
                    f"number{' >= 0' if key == 'seed' else ' >= 1'}, got {value!r}."
                )
        if given.get("seed", 0) > MAX_SEED:
            raise InputError(f"method {self.name!r}: seed must be at most 2**63 - 1 (torch's), got {given['seed']}.")
        if given.get("samples", 1) > MAX_SAMPLES:
            raise InputError(
                f"method {self.name!r}: samples must be at most {MAX_SAMPLES} (each is a whole sampling run), "
                f"got {given['samples']}."
            )

    def inferer(self, tile_size: int | None = None, seed: int | None = None, progress: bool = False, **network_kwargs):
        """The tiling inferer this method needs: exact core-crop with its halo (tiles starting where the network's
        ``tile_align`` says), or seeded blending; tiles of ``tile_size`` (None: :attr:`tile_size`), no larger
        than the network's ``max_tile`` when it declares one; ``network_kwargs`` go with every network call (a
        diffusion method's ``sampler``, ``steps``, ``progress``; a noise-aware one's ``noise_level``)."""
        from monai_sr_bundle.tiling import SRInferer

        self.check_sampling(seed=seed)
        merge = "blend" if self.stochastic else "crop"
        tile_size = self.tile_size if tile_size is None else int(tile_size)
        tile_size = min(tile_size, int(getattr(self._probe, "max_tile", tile_size)))
        return SRInferer(
            self.scale,
            tile_size,
            halo=self.halo,
            merge=merge,
            seed=seed or 0,
            progress=progress,
            network_kwargs=network_kwargs,
            align=int(getattr(self._probe, "tile_align", 1)),
        )

    def describe(self) -> dict:
        """What a client needs to list and offer the method."""
        return {
            "name": self.name,
            "family": self.family,
            "trainable": self.trainable,
            "stochastic": self.stochastic,
            "adversarial": self.adversarial,
            "exportable": self.exportable,
            "noise_aware": self.noise_aware,
            "scale": self.scale,
            "modality": self.modality,
            "weights": self.weights_name if self.trainable else None,
            "weights_available": self.weights_available,
            "default": self.config.get("default") is True,
        }


@lru_cache(maxsize=32)
def _config_keys(name: str) -> frozenset[str]:
    """The top-level keys (``+`` and ``#`` paths at their root) of the bundle config ``configs/<name>``."""
    return frozenset(k.lstrip("+").split("#", 1)[0] for k in read_json_object(BUNDLE_ROOT / "configs" / name, name))


def _config_refs(name: str) -> frozenset[str]:
    """The keys (at their root) that the bundle config ``configs/<name>`` reads with ``@`` references."""
    return frozenset(re.findall(r"@([A-Za-z_]\w*)", (BUNDLE_ROOT / "configs" / name).read_text(encoding="utf-8")))


#: what a surface reads of a network class without running it, with the value when the class says nothing
TRAITS = {"trainable": True, "stochastic": False, "exportable": True, "noise_aware": False}


def built_traits(network: nn.Module) -> dict:
    """The network's family (its module's name) and :data:`TRAITS` as the built network has them: trainable
    when it has parameters, the others its attributes."""
    return {
        "family": type(network).__module__.rsplit(".", 1)[-1],
        "trainable": any(True for _ in network.parameters()),
        "stochastic": bool(getattr(network, "stochastic", False)),
        "exportable": bool(getattr(network, "exportable", True)),
        "noise_aware": bool(getattr(network, "noise_aware", False)),
    }


def declared_traits(target: str) -> dict | None:
    """:func:`built_traits` of the network class ``target`` read from its source with ``ast``: its module and
    the :data:`TRAITS` assigned as literals in its body or its bases' (nearest first). None when the class, or
    a base other than ``nn.Module``, is not this package's: then only building the network tells."""
    module, _, name = target.rpartition(".")
    found = _class_source(module, name)
    traits = _declared(*found) if found else None
    return None if traits is None else {"family": found[0].rsplit(".", 1)[-1], **TRAITS, **traits}


def _declared(module: str, node: ast.ClassDef) -> dict | None:
    own = {
        stmt.targets[0].id: bool(stmt.value.value)
        for stmt in node.body
        if isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
        and stmt.targets[0].id in TRAITS
        and isinstance(stmt.value, ast.Constant)
    }
    for base in node.bases:
        if isinstance(base, ast.Attribute) and ast.unparse(base) in ("nn.Module", "torch.nn.Module"):
            continue
        found = _class_source(module, base.id) if isinstance(base, ast.Name) else None
        inherited = _declared(*found) if found else None
        if inherited is None:
            return None
        own = {**inherited, **own}
    return own


@lru_cache(maxsize=64)
def _class_source(module: str, name: str) -> tuple[str, ast.ClassDef] | None:
    """(defining module, class node) of ``module.name``, following ``from ... import`` re-exports, within
    this package's files only (nothing is imported)."""
    package, _, rest = module.partition(".")
    if package != __package__:
        return None
    path = Path(__file__).parent.joinpath(*rest.split(".")) if rest else Path(__file__).parent
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not path.is_file():
        return None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _class_source(node.module, alias.name)
    return None


#: what reading a file that holds no weights of the network raises (torch.load, load_state_dict): a text file
#: ends in an IndexError, a truncated one in an EOFError
NOT_WEIGHTS = (RuntimeError, LookupError, ValueError, EOFError, OSError, TypeError, AttributeError, pickle.PickleError)


#: the key suffix of an int8-stored weight's scales (:func:`compact_state`)
INT8_SCALE = ".int8_scale"
#: the fewest elements a weight needs to be stored in int8: the bytes are in the wide layers, while the thin
#: ones at the ends (an image's channels in and out, time embeddings) are small and carry every error into the
#: image (a sampler's 20 steps compound it: sr3's deviation from its fp16 samples is 4x lower this way)
INT8_MIN_SIZE = 16384
#: how a state dict may be stored, smallest first (:func:`compact_state`)
STORAGES = ("int8", "int8_kernel", "fp16")


def compact_state(state: Mapping[str, torch.Tensor], storage: str) -> dict[str, torch.Tensor]:
    """``state`` as shipped: ``fp16`` halves every float tensor; ``int8`` also stores each convolution or linear
    weight (2+ dimensions) of at least :data:`INT8_MIN_SIZE` elements as int8 codes and an fp16 scale per output
    channel (``<key>`` + :data:`INT8_SCALE`), a quarter of fp32; ``int8_kernel`` a scale per kernel (output and
    input channel) of a spatial convolution, 22 % more bytes for a 3x3 kernel and half the deviation of a
    sampler's draws (ADSR). The tracked tree must stay small enough for a GPU call to carry it; which storage a
    file may take is measured (``tools/compact_weights.py``), and :func:`expand_state` reads any back."""
    import torch

    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r}: choose one of {', '.join(STORAGES)}")
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
        elif storage != "fp16" and value.ndim >= 2 and value.numel() >= INT8_MIN_SIZE:
            dims = 2 if storage == "int8_kernel" and value.ndim > 2 and value[0, 0].numel() > 1 else 1
            scale = (value.float().abs().flatten(dims).amax(-1).clamp_min(1e-12) / 127).half()
            codes = value.float() / scale.float().view(*scale.shape, *(1,) * (value.ndim - dims))
            out[key] = torch.round(codes).clamp(-127, 127).to(torch.int8)
            out[key + INT8_SCALE] = scale
        else:
            out[key] = value.half()
    return out


def expand_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stored state dict (fp32, or :func:`compact_state`'s) as the fp32 tensors a network loads."""
    out = {}
    for key, value in state.items():
        if key.endswith(INT8_SCALE):
            continue
        scale = state.get(key + INT8_SCALE)
        if scale is not None:
            value = value.float() * scale.float().view(*scale.shape, *(1,) * (value.ndim - scale.ndim))
        out[key] = value.float() if value.is_floating_point() else value
    return out


#: bytes of a weights file beyond its tensors' (the pickle of their names, the zip's headers)
STORED_OVERHEAD = 1 << 20


def stored_limit(network: nn.Module, copies: int = 1) -> int:
    """The most bytes a file of ``copies`` copies of ``network``'s weights can take, every element in float64:
    what a weights file of it may hold before it is read."""
    return copies * 8 * sum(v.numel() for v in network.state_dict().values()) + STORED_OVERHEAD


def open_bounded(path: str | os.PathLike, limit: int, what: str):
    """``path`` opened for reading in binary, when it is a regular file of at most ``limit`` bytes; else one
    sentence that names ``what`` it should be. Opened without blocking (a FIFO would wait for a writer forever)
    and checked on the open file, so the file checked is the file read: a device (/dev/zero) never ends, and a
    file far larger than its network needs would be read whole."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror}); give {what}.") from e
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_size <= limit:
        return os.fdopen(fd, "rb")
    os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: not a regular file (a folder, device or pipe); give {what}.")
    raise InputError(f"{path}: {info.st_size} bytes, above the {limit} allowed for {what}; check the file.")


def read_state(path: str | os.PathLike, limit: int, what: str):
    """``torch.load(path, weights_only=True)`` of a regular file of at most ``limit`` bytes (:func:`open_bounded`)
    whose zip entries inflate to at most ``limit`` bytes: torch.load inflates each storage whole, so a few MB of
    deflated zeros could declare gigabytes; the zip's directory says their sizes first. A file that is no zip
    (the legacy format declares its sizes inside its pickle) raises ValueError, for the caller's sentence."""
    import zipfile

    import torch

    with open_bounded(path, limit, what) as f:
        try:
            inflated = sum(entry.file_size for entry in zipfile.ZipFile(f).infolist())
        except zipfile.BadZipFile as e:
            raise ValueError("not a zip archive, the format torch.save writes") from e
        if inflated > limit:
            raise InputError(
                f"{path}: its zip entries inflate to {inflated} bytes, above the {limit} allowed for {what} (a zip "
                "bomb?); check the file."
            )
        f.seek(0)
        return torch.load(f, map_location="cpu", weights_only=True)


def load_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a plain state dict (``torch.load(..., weights_only=True)``; fp32 or :func:`compact_state`'s) into
    ``network``, reading no more than a file of its weights can hold (:func:`read_state`)."""
    path = Path(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: weights file not found; train the method first or pass --weights.")
    try:
        state = read_state(path, stored_limit(network), "weights that fit this network")
        network.load_state_dict(expand_state(state))
    except InputError:
        raise
    except NOT_WEIGHTS as e:
        # torch's own first line only names the network ("Error(s) in loading state_dict for X:"); the next says what
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        if len(reason) > 160:
            reason = reason[:160].rsplit(", ", 1)[0] + ", ..."
        raise InputError(f"{path}: weights do not fit this network ({reason}).") from e
    return network


#: the manifest beside weights files: each file's name -> its sha256 and provenance (:func:`read_manifest`)
MANIFEST = "weights.json"
#: the most bytes a manifest may take (the shipped one, of every method: about 30 KB)
MANIFEST_LIMIT = 16 << 20


def read_manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """The entries of the ``weights.json`` in ``folder`` (``{}`` when there is none): a regular file holding a JSON
    object of objects, or one sentence. Writers of weights rewrite it, so they read it before their first byte."""
    manifest = Path(folder) / MANIFEST
    if not os.path.lexists(manifest):
        return {}
    what = f"the weights manifest {manifest}"
    open_bounded(manifest, MANIFEST_LIMIT, "a weights manifest (a JSON object)").close()
    entries = read_json_object(manifest, what)
    broken = next((name for name, entry in entries.items() if not isinstance(entry, dict)), None)
    if broken is not None:
        raise InputError(f"{what}: the entry of {shown(broken)} must be a JSON object; repair or remove it.")
    return entries


def weights_record(weights: str | os.PathLike) -> dict:
    """The entry of ``weights`` in the ``weights.json`` beside it (command, data, intensity, ...), or ``{}``
    when there is no manifest or no entry for it."""
    weights = Path(weights)
    return read_manifest(weights.parent).get(weights.name, {})


def describe_all(scale: int = 4, modality: str = "cxr") -> list[dict]:
    return [get(name, scale, modality).describe() for name in names()]


def networks_table(scale: int = 4, modality: str = "cxr") -> str:
    """Each method's network in words and its size, as its overlay says them (``description``, ``parameters``):
    the model card's table of networks and, for one method, the zoo bundle's."""
    lines = ["| method | network | parameters |", "|---|---|---|"]
    for name in names():
        config = get(name, scale, modality).config
        lines.append(f"| `{name}` | {config.get('description', '')} | {config.get('parameters', '')} |")
    return "\n".join(lines)


def markdown_table(scale: int = 4, modality: str = "cxr") -> str:
    """The methods as a Markdown table (the model card's list is this table)."""
    lines = ["| method | family | trainable | stochastic | ONNX export | weights |", "|---|---|---|---|---|---|"]
    for d in describe_all(scale, modality):
        weights = (
            "none needed"
            if not d["trainable"]
            else (f"`{d['weights']}`" if d["weights_available"] else "not trained yet")
        )
        yes = {True: "yes", False: "no"}
        name = f"`{d['name']}`" + (" (default)" if d["default"] else "")
        lines.append(
            f"| {name} | {d['family']} | {yes[d['trainable']]} | {yes[d['stochastic']]} | "
            f"{yes[d['exportable']]} | {weights} |"
        )
    return "\n".join(lines)
