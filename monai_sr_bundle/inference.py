"""The one SR step every surface shares (the bundle, the CLI, Slicer, MONAI Label, evaluation, the
benchmarks): a :class:`Predictor` is a method loaded once (:meth:`monai_sr_bundle.methods.Method.predictor`)
that super-resolves loaded images, with the input's geometry (spacing divided by the scale); the checks an
input passes first. Files in and files out are :mod:`monai_sr_bundle.batch`'s.

The method and its weights come from :mod:`monai_sr_bundle.methods`, the tiling from
:mod:`monai_sr_bundle.tiling`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from math import inf
from pathlib import Path

import torch
from monai.data import MetaTensor
from torch import nn

from monai_sr_bundle import engine
from monai_sr_bundle.engine import PRECISIONS
from monai_sr_bundle.errors import InputError, shown
from monai_sr_bundle.request import SRRequest, check_noise_level, check_sampling
from monai_sr_bundle.tiling import SRInferer
from monai_sr_bundle.transforms.degradation import zoom_geometry

logger = logging.getLogger(__name__)


def check_device(value: str) -> str:
    """``value`` as a device of this machine: ``auto`` (the first GPU if there is one, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``; else one sentence, before anything loads (torch's own errors for a missing GPU, an
    unknown name or ``meta``, whose tensors hold no data, come mid-run as tracebacks)."""
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"device {value!r} must be auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"device {value!r}: this machine has {torch.cuda.device_count()} GPU(s).")
    return value


def check_size(shape: Sequence[int], name: str, scale: int) -> None:
    """Refuse an image too small to super-resolve at ``scale``; ``shape`` is spatial (X, Y[, Z]), so a header's
    shape can be checked before any pixel is decoded."""
    if min(shape[:2]) < 8 * scale:
        raise InputError(
            f"{name}: image {tuple(shape[:2])} is smaller than {8 * scale} px (8x the scale {scale}) in-plane."
        )


def validate_input(img: torch.Tensor, name: str, scale: int, allow_volume: bool = False) -> None:
    """Refuse inputs that SR cannot handle sensibly, with one sentence naming the input."""
    if img.ndim not in (3, 4):
        raise InputError(f"{name}: expected a 2D image or a 3D volume, got array shape {tuple(img.shape)}.")
    if img.ndim == 4 and not allow_volume:
        raise InputError(
            f"{name}: is a 3D volume {tuple(img.shape[1:])} and the methods are 2D; to super-resolve it in-plane, "
            "slice by slice, ask for it (--slice_by_slice True)."
        )
    check_size(img.shape[1:], name, scale)
    if not torch.isfinite(img).all():
        raise InputError(f"{name}: the image contains NaN or infinite values.")
    if float(img.max() - img.min()) == 0.0:
        raise InputError(f"{name}: the image is constant (no detail to super-resolve); check the file.")


def _busiest_part(network: nn.Module) -> nn.Module:
    """What :meth:`Predictor.compile` compiles: a sampler's denoiser (it runs once per step), else the network."""
    return getattr(network, "denoiser", network)


class Predictor:
    """A method loaded once, what every surface calls for SR (the CLI, the bundle, MONAI Label, evaluation, the
    benchmarks): its network on ``device`` in eval mode, the weights it came from, the reader's intensity map
    they were trained with and the tiling the method needs. Sampling options and the noise level are defaults
    that each call's :class:`~monai_sr_bundle.request.SRRequest` may change, checked in one place
    (:meth:`check`); the network is never changed by a call, so one predictor serves every request.

    Args:
        method: the method (:func:`monai_sr_bundle.methods.get`).
        network: its loaded network (:meth:`~monai_sr_bundle.methods.Method.load`, or the same compiled with
            TensorRT or running its parts on ONNX Runtime).
        weights: the file ``network`` was loaded from (None: the shipped weights; none for interpolation).
        device: where images go.
        tile_size: LR tile edge; memory grows with its square (None: the method's,
            :attr:`~monai_sr_bundle.methods.Method.tile_size`; on an engine an image up to
            :func:`engine.whole_size` a side runs whole).
        intensity: the reader's map to [0, 1] (default: the one recorded with the weights, else the
            modality's, :meth:`~monai_sr_bundle.methods.Method.intensity_of`).
        sampler, steps, seed: a stochastic method's defaults (refused for a deterministic one).
        precision: ``auto`` (bf16 on an engine where the CPU computes it natively and the method keeps its
            quality, else fp32), ``fp32``, or ``bf16`` / ``fp16`` (autocast in PyTorch: faster on GPUs with
            tensor cores; fp16 only on a GPU); images and results stay float32.
        runtime: what runs the network (:data:`~monai_sr_bundle.engine.RUNTIMES`): ``auto`` (the fastest engine
            installed for the device, :func:`~monai_sr_bundle.engine.resolve`), ``torch``, ``openvino`` or
            ``onnxruntime`` (its graph exported once and cached).
        compile: ``torch.compile`` the network (:meth:`compile`); the first call of each tile shape compiles.
        noise_level: a degradation-aware method's default noise level (grey levels of 255; None or ``"auto"``:
            estimated from each whole image, :func:`~monai_sr_bundle.networks.noise.estimate_noise_level`),
            which each call may change; refused for other methods.
    """

    def __init__(
        self,
        method,
        network: nn.Module,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        tile_size: int | None = None,
        intensity: str | Sequence[float] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int | None = None,
        precision: str = "auto",
        compile: bool = False,
        noise_level: float | str | None = None,
        runtime: str = "auto",
    ) -> None:
        if weights is None and method.trainable:
            weights = method.weights_path
        ready = engine.runtime_of(network)
        if ready:  # the bundle's inference_onnx.json hands over the method already on ONNX Runtime
            self.runtime, precision = ready, "fp32" if precision == "auto" else precision
        else:
            self.runtime, precision = engine.resolve(method, runtime, device, precision)
        if compile and self.runtime != "torch":
            raise InputError(f"compile speeds up PyTorch, and this network runs on {self.runtime}: drop compile.")
        if not ready:
            network = engine.accelerate(method, network, weights, self.runtime, precision)
        if method.trainable:
            logger.info("%s runs on %s in %s", method.name, self.runtime, precision)
        self.method, self.network, self.device = method, network, device
        self.tile_size = method.tile_size if tile_size is None else int(tile_size)
        self.whole_size = engine.whole_size(method, self.runtime) if tile_size is None else 0
        self.precision, self.compiled = precision, bool(compile)
        if compile:
            self.compile()
        self.weights = None if weights is None else Path(weights)
        self.intensity = method.intensity_of(self.weights) if intensity is None else intensity
        self.defaults = self._checked(SRRequest(noise_level=noise_level, sampler=sampler, steps=steps, seed=seed))

    def __getstate__(self) -> dict:
        """A compiled call cannot be pickled: a worker process gets the network uncompiled and compiles its own."""
        state = dict(self.__dict__)
        if self.compiled:
            state["network"] = network = copy.deepcopy(self.network)
            _busiest_part(network)._compiled_call_impl = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.compiled:
            self.compile()

    def __repr__(self) -> str:
        return f"Predictor({self.method!r}, weights={self.weights}, runtime={self.runtime}, sampling={self.sampling})"

    @property
    def scale(self) -> int:
        return self.method.scale

    @property
    def sampling(self) -> dict:
        """The sampling options each call starts from."""
        return self.defaults.sampling

    @staticmethod
    def check(method, request: SRRequest) -> SRRequest:
        """The one check of a request's options for ``method``, each refusal one sentence, so that the CLI, the
        Slicer worker, MONAI Label and the bundle say the same: sampling options only for a stochastic method
        (:func:`~monai_sr_bundle.request.check_sampling`), a noise level only for a degradation-aware one
        (returned as a number, None to estimate it), a positive output limit. Static, so a surface asks it
        before any weights load; each call asks it again through :meth:`request`. Precision and runtime are
        checked where they choose what loads (:func:`~monai_sr_bundle.engine.resolve`)."""
        check_sampling(method, **request.sampling, samples=request.samples)
        limit = request.max_output_mp
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit < inf:
            raise InputError(f"max_output_mp must be a positive number of megapixels, got {shown(limit)}.")
        return replace(request, noise_level=check_noise_level(method, request.noise_level))

    def _checked(self, request: SRRequest) -> SRRequest:
        """:meth:`check`, and a sampler's steps against those the network was trained with."""
        request = self.check(self.method, request)
        if request.sampler is not None or request.steps is not None:
            self.network.make_sampler(request.sampler, request.steps)
        return request

    def request(self, given: SRRequest | None = None, **options) -> SRRequest:
        """What one call runs with: ``given`` (else an :class:`~monai_sr_bundle.request.SRRequest` of
        ``options``) over this predictor's defaults, checked."""
        given = SRRequest(**options) if given is None else given
        defaults = {k: getattr(self.defaults, k) for k in ("noise_level", "sampler", "steps", "seed")}
        return self._checked(replace(given, **{k: v for k, v in defaults.items() if getattr(given, k) is None}))

    def inferer(self, request: SRRequest | None = None, progress: bool = False) -> SRInferer:
        """The tiling inferer of a call's checked ``request`` (:meth:`request`; None: the defaults); ``progress``
        shows a stochastic method's steps."""
        options = dict((request or self.defaults).sampling)
        seed = options.pop("seed", None)
        if self.method.stochastic and progress:
            options["progress"] = True
        return self.method.inferer(self.tile_size, seed=seed, whole_size=self.whole_size, **options)

    def _noise_level(self, image: torch.Tensor, level: float | None) -> float | None:
        """The noise level a degradation-aware network gets for a loaded image (C, X, Y[, Z]): the checked
        ``level``, else estimated on the whole image (the mean over a volume's slices), so every tile gets the
        same; None for other methods."""
        if not self.method.noise_aware:
            return None
        if level is None:
            from monai_sr_bundle.networks.noise import estimate_noise_level

            x = torch.as_tensor(image, dtype=torch.float32)
            x = x[None] if x.ndim == 3 else x.permute(3, 0, 1, 2)
            level = float(estimate_noise_level(x).mean())
        return level

    def __call__(
        self, image: MetaTensor, progress: bool = False, request: SRRequest | None = None, **options
    ) -> MetaTensor:
        """SR of one loaded image (C, X, Y[, Z]) as ``request`` (or ``options``, its fields) asks
        (:meth:`request`) -> MetaTensor with geometry and intensity map carried over; a degradation-aware
        method's noise level used is in its ``meta["noise_level"]``."""
        request = self.request(request, **options)
        level = self._noise_level(image, request.noise_level)
        inferer = self.inferer(request, progress)
        if level is not None:
            inferer.network_kwargs["noise_level"] = level
        with torch.inference_mode(), self.autocast():
            out = inferer(image[None].to(self.device), self.network)[0].float().cpu()
        if level is not None and isinstance(out, MetaTensor):
            out.meta["noise_level"] = round(level, 3)
        return out

    def compile(self) -> None:
        """``torch.compile`` the part that runs most, in place (the weights' keys stay): a sampler's denoiser,
        which runs once per step with the same shapes, so on a GPU as CUDA graphs (``reduce-overhead``);
        else the whole network."""
        part = _busiest_part(self.network)
        graphs = part is not self.network and torch.device(self.device).type == "cuda"
        part.compile(mode="reduce-overhead" if graphs else None)

    def autocast(self):
        """The context the network runs in: autocast to the predictor's precision in PyTorch, or nothing for
        fp32 and on an engine (which computes in its own precision)."""
        import contextlib

        if self.precision == "fp32" or self.runtime != "torch":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=PRECISIONS[self.precision])

    def maps(
        self, image: MetaTensor, progress: bool = False, request: SRRequest | None = None, **options
    ) -> dict[str, MetaTensor]:
        """``samples`` SR draws of one loaded image (``request``'s, or ``options``': :meth:`request`) -> the mean
        SR image (``"sr"``) and the uncertainty maps of :mod:`monai_sr_bundle.uncertainty`, each with
        the SR's geometry. A map's ``intensity_range`` is (0, the image's range), so it is written as a spread in
        the input's units."""
        from monai_sr_bundle.uncertainty import uncertainty_maps

        request = self.request(request, **options)
        inferer = self.inferer(request, progress)
        batch = image[None].to(self.device)
        with torch.inference_mode(), self.autocast():
            maps = uncertainty_maps(batch, inferer.draw(batch, self.network, request.samples or 1).float(), self.scale)
        out = {}
        for key, value in maps.items():
            result = zoom_geometry(image, value[0].cpu(), self.scale)
            if key != "sr" and "intensity_range" in result.meta:
                lo, hi = result.meta["intensity_range"]
                result.meta["intensity_range"] = (0.0, float(hi) - float(lo))
            out[key] = result
        return out
