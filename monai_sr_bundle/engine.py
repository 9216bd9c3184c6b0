"""The inference engine behind the :class:`~monai_sr_bundle.inference.Predictor`: a method's network exported
once to ONNX and run by OpenVINO or ONNX Runtime, which reach about three times PyTorch eager's speed on the
same CPU (docs/benchmarks.md). The network code stays PyTorch; the engine is a deployment detail a user can
name (``--runtime``) and the log states.

The exported graph is cached on disk (``$MONAI_SR_CACHE``, else ``~/.cache/monai-sr``) under a name made of
what made it: the weights' sha256, the method, scale and modality, and the versions of torch and of this
module's export format, so new weights or a new version export anew and the next session reuses the file. A
cached graph is trusted only after it reproduces PyTorch on a small known input (a corrupt, truncated or
foreign file is rebuilt with one warning, never run); it is written to a temporary file and renamed, so two
processes filling the cache at once leave one good file. A sampling method's loop stays PyTorch's; its denoiser
(and a latent method's decoder) is exported and cached the same way and runs on the engine at every step.

Precision: on a CPU with native bf16 (AVX-512 BF16 or AMX), ``auto`` runs OpenVINO in bf16 where the method's
PSNR stays within 0.05 dB of fp32, measured by benchmarks/engines.py on NIH and external images (the method's
overlay then says ``"engine_bf16": true``), fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monai_sr_bundle import onnx_runtime
from monai_sr_bundle.errors import InputError

logger = logging.getLogger(__name__)

#: the runtimes a surface may name; ``auto``: the fastest installed for the device
RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
#: what ``auto`` tries on a CPU, fastest first (measured: docs/benchmarks.md)
CPU_ENGINES = ("openvino", "onnxruntime")
#: the environment's default runtime when a surface says ``auto`` (a deployment's or a test run's choice)
RUNTIME_ENV = "MONAI_SR_RUNTIME"
#: where exported graphs are cached
CACHE_ENV = "MONAI_SR_CACHE"
#: bumped whenever the export changes what a cached graph holds, so older files are not reused
EXPORT_FORMAT = 1
#: how far an fp32 engine may stray from PyTorch on the known-answer check before its graph is rebuilt
CHECK_TOLERANCE = 1e-3
#: on an engine, a network that stitches exactly takes an image whole up to this many LR pixels a side: a 512 px
#: radiograph in 256 px tiles is 9 windows with their halos, 1.9x its pixels, and an engine holds RUNet's whole
#: 512 px image at x4 in < 2 GB; larger images keep the method's tiles (512 px tiles took a 1955 x 1841 CR from
#: 2.5 to 3.1 GB at the same speed: benchmarks/engines.py)
WHOLE_SIZE = 512
#: loggers of the ONNX exporter whose progress notes and warnings (optimizer passes, packages it does not need)
#: say nothing a user can act on
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")
#: the ONNX module (the import name of each runtime's package)
_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}


#: ``--precision`` -> the autocast type (fp32: none)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: str | torch.device) -> None:
    """Refuse an unknown precision, and fp16 off a GPU (CPU autocast computes in bfloat16 only)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise InputError(
            f"precision fp16 runs on a GPU only, and the device is {device}; use bf16 (CPU autocast) or fp32."
        )
    if precision == "bf16" and torch.device(device).type == "cpu" and not cpu_has_bf16():
        logger.warning(
            "precision bf16 on a CPU without bf16 instructions is emulated: expect it tens of times slower than "
            "fp32 (srcnn here: 155 s instead of 0.65 s for a 512 px output); bf16 is for GPUs."
        )


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); torch's own private probe, when it has it."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def installed(runtime: str) -> bool:
    """Whether ``runtime``'s package can be imported here (torch always can)."""
    return runtime == "torch" or importlib.util.find_spec(_PACKAGES[runtime]) is not None


def check_runtime(runtime: str | None) -> str:
    """``runtime`` as asked (None: ``auto``), refused in one sentence unless one of :data:`RUNTIMES`."""
    runtime = "auto" if runtime is None else str(runtime).strip().lower()
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}.")
    return runtime


def resolve(method, runtime: str | None, device, precision: str = "auto") -> tuple[str, str]:
    """The runtime and precision that serve ``method`` on ``device``: ``auto`` is ``$MONAI_SR_RUNTIME`` when
    set, else the fastest engine installed on a CPU for a method whose network exports, and PyTorch on a GPU.
    A sampling method's exported parts (its denoiser, a latent method's decoder) go to the engine under ``auto``
    only where it pays: in bf16, on OpenVINO (about 2x PyTorch per step; in fp32 an engine's step gains little
    or nothing: docs/benchmarks.md). A runtime named explicitly that cannot serve is refused in one
    sentence. Precision ``auto`` is bf16 on OpenVINO where the CPU has native bf16 and the method keeps its
    quality in it (its overlay's ``engine_bf16``), else fp32."""
    asked = check_runtime(runtime)
    chosen = check_runtime(os.environ.get(RUNTIME_ENV) or "auto") if asked == "auto" else asked
    on_cpu = torch.device(device).type == "cpu"
    native = on_cpu and cpu_has_bf16() and method.config.get("engine_bf16") is True  # benchmarks/engines.py
    if chosen == "auto":
        engines = [r for r in CPU_ENGINES if installed(r)] if on_cpu and method.trainable else []
        if method.stochastic:  # its steps pay on an engine in bf16 only
            engines = [r for r in engines if r == "openvino" and native and precision in ("auto", "bf16")]
        chosen = engines[0] if engines else "torch"
        if on_cpu and method.exportable and method.trainable and not engines:
            logger.warning("no inference engine installed (pip install openvino): running PyTorch eager")
    elif chosen != "torch":
        why = None
        if not on_cpu:
            why = f"it runs on the CPU and the device is {device}; use --runtime torch (or inference_trt.json)"
        elif not method.trainable:
            why = f"method {method.name!r} has no network to run"
        elif not installed(chosen):
            why = f"it is not installed here (pip install {_PACKAGES[chosen]})"
        if why and asked != "auto":
            raise InputError(f"runtime {chosen!r} cannot serve this request: {why}.")
        chosen = "torch" if why else chosen  # the environment's default serves what it can
    if precision == "auto":
        precision = "bf16" if chosen == "openvino" and native else "fp32"
    elif precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS)}.")
    elif chosen == "onnxruntime" and precision != "fp32":
        raise InputError("ONNX Runtime computes in fp32 on a CPU; use --runtime openvino for bf16, or fp32.")
    elif chosen == "openvino" and precision == "fp16":
        raise InputError("precision fp16 runs on a GPU only; OpenVINO on a CPU takes bf16 or fp32.")
    if chosen == "torch":
        check_precision(precision, device)
    return chosen, precision


def whole_size(method, runtime: str) -> int:
    """Up to how many LR pixels a side ``method`` takes an image in one call on ``runtime`` when the caller names
    no tile size: :data:`WHOLE_SIZE` on an engine, 0 (its tiles) on PyTorch and for a sampler (blended tiles
    change with their size)."""
    return 0 if runtime == "torch" or method.stochastic else WHOLE_SIZE


@contextlib.contextmanager
def _quiet_exporter():
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def compiled_parts(method) -> list[str] | None:
    """What an engine compiler (TensorRT) may take of ``method``'s network: the whole network (None) when it
    exports, else the parts its class names (a sampler's loop does not export; its denoiser does)."""
    return None if method.exportable else list(method.network_class.export_parts)


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$MONAI_SR_CACHE``, else ``~/.cache/monai-sr``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "monai-sr").expanduser()


def graph_key(method, weights: str | os.PathLike) -> str:
    """The cached graph's name: the method, modality and scale, and a digest of the weights' sha256 and the
    versions that shape the export."""
    from monai_sr_bundle.hashing import sha256

    made_of = f"{sha256(weights)}|{method.name}|{method.modality}|{method.scale}|{torch.__version__}|{EXPORT_FORMAT}"
    return f"{method.name}_{method.modality}_x{method.scale}-{hashlib.sha256(made_of.encode()).hexdigest()[:16]}"


def _inputs(network: nn.Module, batch: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """An example input of the network (and a noise-aware one's levels, one per image)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, getattr(network, "in_channels", 1), h, w, generator=g)
    if getattr(network, "noise_aware", False):
        return x, torch.rand(batch, generator=g) * 8
    return (x,)


def export(network: nn.Module, path: Path) -> Path:
    """Export ``network`` (eval mode, CPU) to ONNX at ``path`` with dynamic batch and sides (checked afterwards,
    on the runtime that serves it: :func:`_checked`)."""
    example = _inputs(network, 2, 24, 20)
    batch = torch.export.Dim("batch", min=1, max=256)
    h, w = torch.export.Dim("h", min=4, max=16384), torch.export.Dim("w", min=4, max=16384)
    dynamic = ({0: batch, 2: h, 3: w}, {0: batch})[: len(example)]
    with _quiet_exporter():
        return onnx_runtime.write_graph(
            network, example, path, ["image", "noise_level"][: len(example)], "pred", dynamic
        )


class EngineNetwork(nn.Module):
    """An exported graph on OpenVINO or ONNX Runtime behind the network's own call (``forward(lr)``, or
    ``forward(lr, noise_level)`` for a noise-aware one), so the tiling inferer drives it unchanged. It pickles
    as its file and options (a worker process opens its own session)."""

    def __init__(self, path: str | os.PathLike, runtime: str, precision: str = "fp32", noise_aware: bool = False):
        super().__init__()
        self.path, self.runtime, self.precision, self.noise_aware = Path(path), runtime, precision, noise_aware
        self._open()

    def _open(self) -> None:
        threads = torch.get_num_threads()
        if self.runtime == "openvino":
            import openvino as ov

            core = ov.Core()
            config = {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            }
            self._compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
            self._local = threading.local()
            self._run = self._run_openvino
            self._names = [port.get_any_name() for port in self._compiled.inputs]
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self._run = self._run_onnxruntime
            self._names = [port.name for port in self._session.get_inputs()]

    def _run_openvino(self, feed: dict) -> np.ndarray:
        # one request per thread, kept: a request per call held its buffers past the call (a 1955 x 1841 CR at x4
        # peaked at 11.8 GB); requests are not shared between threads (MONAI Label's worker thread, tests)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request.infer(feed)[self._compiled.output(0)].copy()

    def _run_onnxruntime(self, feed: dict) -> np.ndarray:
        return self._session.run(None, feed)[0]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_compiled", "_session", "_run", "_local")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def run(self, *inputs: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        """The graph on its inputs, given in its order or by name; floats go in as float32, integers as they are."""
        given = dict(zip(self._names, inputs)) | named
        feed = {}
        for name, value in given.items():
            value = value.detach().cpu()
            feed[name] = np.ascontiguousarray((value if not value.is_floating_point() else value.float()).numpy())
        return torch.from_numpy(np.asarray(self._run(feed), dtype=np.float32)).to(inputs[0].device)

    def forward(self, x: torch.Tensor, noise_level=None) -> torch.Tensor:
        if not self.noise_aware:
            return self.run(x)
        from monai_sr_bundle.networks.noise import noise_levels

        return self.run(x, noise_levels(x.detach().float().cpu(), noise_level))


class EnginePart(EngineNetwork):
    """A sampling method's exported part (:func:`~monai_sr_bundle.onnx_runtime.sampler_parts`) on the engine, called
    as the torch part it replaces: the denoiser ``(sample, timesteps=t)`` once per step, a latent method's decoding
    ``(latent)``; the sampler loop around it stays PyTorch's."""

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        return self.run(*inputs, **named)


def runtime_of(network: nn.Module) -> str | None:
    """The engine a network already runs on (an exported graph, or a sampler's exported parts), else None."""
    for module in network.modules():
        if isinstance(module, EngineNetwork):
            return module.runtime
        if isinstance(module, onnx_runtime.OnnxNetwork):
            return "onnxruntime"
    return None


def accelerate(
    method, network: nn.Module, weights: str | os.PathLike | None, runtime: str, precision: str
) -> nn.Module:
    """``network`` (loaded, eval mode) served by ``runtime`` (resolved by :func:`resolve`): itself for torch,
    else its cached graph on the engine, exported first when the cache has no good one; for a sampling method,
    the network with its exported parts (denoiser, a latent method's decoder) on the engine."""
    if runtime == "torch":
        return network
    stem = cache_dir() / graph_key(method, Path(weights if weights is not None else method.weights_path))
    network = network.cpu().eval()
    if method.exportable:
        noise_aware = bool(getattr(network, "noise_aware", False))
        path = Path(f"{stem}.onnx")
        return _served(
            path, runtime, precision, network, _inputs(network, 1, 21, 18, seed=1), lambda p: export(network, p),
            lambda prec: EngineNetwork(path, runtime, prec, noise_aware),
        )  # fmt: skip
    for part in onnx_runtime.sampler_parts(method, network):
        path = Path(f"{stem}_{part.name}.onnx")

        def export_part(p: Path, part=part) -> Path:
            with _quiet_exporter():
                return onnx_runtime.export_part(part, p)

        served = _served(
            path, runtime, precision, part.module, part.check, export_part,
            lambda prec, path=path: EnginePart(path, runtime, prec),
        )  # fmt: skip
        onnx_runtime.put_part(network, part.name, served)
    return network


def _served(path: Path, runtime: str, precision: str, module: nn.Module, check: tuple, export_to, opener) -> nn.Module:
    """The graph at ``path`` on ``runtime`` in ``precision`` (``opener(precision)``), reused when it reproduces
    ``module`` on ``check``, else exported anew (``export_to(path)``) and checked."""
    engine = _checked(path, runtime, module, check, opener) if path.is_file() else None
    if engine is None:
        logger.info("exporting %s for %s (once for these weights)", path, runtime)
        try:
            export_to(path)
        except OSError as e:
            raise InputError(
                f"the engine's cache {path.parent} cannot be written ({e.strerror or e}); set {CACHE_ENV} to a "
                "writable folder or use --runtime torch."
            ) from e
        engine = _checked(path, runtime, module, check, opener, cached=False)
    return engine if precision == "fp32" else opener(precision)


def _checked(path: Path, runtime: str, module: nn.Module, check: tuple, opener, cached: bool = True):
    """The graph at ``path`` on ``runtime`` in fp32 if it reproduces ``module`` on ``check`` (the known answer);
    a cached one that does not (unreadable, truncated, foreign) is None with one warning, a fresh export that
    does not is refused."""
    try:
        engine = opener("fp32")
        with torch.inference_mode():
            expected, got = module(*check), engine(*check)
        gap = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
        if not gap < CHECK_TOLERANCE:
            raise ValueError(f"its output differs from PyTorch's by {gap:.2g}")
        return engine
    except Exception as e:  # whatever is wrong with a file, it is rebuilt, never run
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        if not cached:
            raise InputError(f"{path.name} does not run on {runtime} ({reason}); use --runtime torch.") from e
        logger.warning("cached graph %s is not usable (%s): exporting it again", path, reason)
        return None
