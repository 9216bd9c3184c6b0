"""The method registry: one :class:`Method` per overlay ``configs/methods/<name>.json``, the one list that
every surface reads (CLI, bundle configs, MONAI Label, 3D Slicer, NVFlare, model card).

What an overlay holds and how it is checked is :mod:`monai_sr_bundle.overlays`; weight storage is
:mod:`monai_sr_bundle.weights`.

What a surface needs to know is derived from the network rather than declared twice: ``family`` is the
network's module (``networks/<family>.py``), ``trainable`` whether it has parameters, ``stochastic`` and
``exportable`` its class attributes of those names, ``halo`` the LR context a tile needs. For this package's
networks the first four are read from the class's source (:mod:`monai_sr_bundle.traits`, a network without
parameters says ``trainable = False``), so listing the methods imports neither torch nor MONAI; other networks
are built.
"""

from __future__ import annotations

import copy
import os
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from monai_sr_bundle.constants import BUNDLE_ROOT, DEFAULT_TILE_SIZE, MODALITIES
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.overlays import overlays, read_overlay
from monai_sr_bundle.request import check_scale
from monai_sr_bundle.traits import built_traits, declared_traits
from monai_sr_bundle.weights import load_weights, weights_record

if TYPE_CHECKING:  # torch and MONAI are imported where a network is built: listing methods needs neither
    import torch
    from torch import nn


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


def for_request(name: str | None, scale: int = 4, modality: str = "cxr") -> Method:
    """The method a run asks for (the default one when it names none): what the CLI's ``sr`` and Slicer's worker
    both start with."""
    return get(name or default_name(), scale, modality)


def trainable_names() -> list[str]:
    return [name for name in names() if get(name).trainable]


def baseline_name() -> str:
    """The reference the learned methods are compared with: the first method without parameters
    (interpolation)."""
    untrained = [name for name in names() if not get(name).trainable]
    if not untrained:
        raise InputError("no method without parameters (an interpolation baseline) is registered.")
    return untrained[0]


def get(name: str, scale: int = 4, modality: str = "cxr", bundle_root: str | os.PathLike | None = None) -> Method:
    """The method ``name`` at ``scale`` for ``modality``; an unknown name or modality is refused with the list.
    Resolved once per overlay version: a server asks for every request, and the capabilities build a network."""
    found = overlays()
    if name not in found:
        raise InputError(f"unknown method {name!r}; available: {', '.join(found)} ('monai-sr methods' describes them).")
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; the weights families are {', '.join(MODALITIES)}.")
    return _resolved(name, str(found[name]), found[name].stat().st_mtime_ns, scale, modality, str(bundle_root or ""))


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
        self.name, self.overlay, self.modality = name, Path(overlay), str(modality)
        self.scale = check_scale(name, scale)
        self.bundle_root = Path(bundle_root or BUNDLE_ROOT)
        self.config, self.stages = read_overlay(name, self.overlay)

    def __repr__(self) -> str:
        return f"Method({self.name!r}, scale={self.scale}, modality={self.modality!r})"

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
        package's (:func:`~monai_sr_bundle.traits.declared_traits`), else found on a built network."""
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
        :data:`~monai_sr_bundle.constants.DEFAULT_TILE_SIZE`."""
        return int(getattr(self._probe, "tile_size", DEFAULT_TILE_SIZE))

    @property
    def noise_aware(self) -> bool:
        """Whether the network takes a ``noise_level`` (:mod:`monai_sr_bundle.networks.noise`): a
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
        """The reader's map to [0, 1] that ``weights`` were trained with, as their
        :func:`~monai_sr_bundle.weights.weights_record` says; the modality's
        (:data:`~monai_sr_bundle.constants.MODALITIES`) when nothing is recorded or there are no weights."""
        recorded = weights_record(weights).get("intensity") if weights is not None else None
        return recorded if recorded is not None else MODALITIES[self.modality]

    def trainable_network(self, weights: str | os.PathLike | None = None) -> nn.Module:
        """A network to train, fresh or from ``weights``; a method without parameters is refused."""
        if not self.trainable:
            raise InputError(f"method {self.name!r} has nothing to train; train one of {', '.join(trainable_names())}.")
        return self.network(weights)

    def load(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
        """The network in eval mode on ``device`` with its weights: ``weights`` if given, else the shipped
        ones (a method without parameters takes none). Sampling options are not the network's: they go with
        each call (:meth:`predictor`)."""
        if self.trainable and weights is None:
            if not self.weights_path.is_file():
                raise InputError(
                    f"method {self.name!r} has no {self.modality} x{self.scale} weights "
                    f"({self.weights_name}); train it first or pass weights."
                )
            weights = self.weights_path
        return self.network(weights).to(device).eval()

    def predictor(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
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

        runtime, precision = engine.resolve(self, runtime, device, precision)  # before loading weights
        network = self.load(weights, device)
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

    def inferer(
        self, tile_size: int | None = None, seed: int | None = None, progress: bool = False, whole_size: int = 0,
        **network_kwargs,
    ):  # fmt: skip
        """The tiling inferer this method needs: exact core-crop with its halo (tiles starting where the network's
        ``tile_align`` says), or seeded blending; tiles of ``tile_size`` (None: :attr:`tile_size`), no larger
        than the network's ``max_tile`` when it declares one, an image up to ``whole_size`` a side in one call
        (:func:`~monai_sr_bundle.engine.whole_size`); ``network_kwargs`` go with every network call (a
        diffusion method's ``sampler``, ``steps``, ``progress``; a noise-aware one's ``noise_level``), checked
        before (:meth:`~monai_sr_bundle.inference.Predictor.check`)."""
        from monai_sr_bundle.tiling import SRInferer

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
            whole_size=whole_size,
        )
