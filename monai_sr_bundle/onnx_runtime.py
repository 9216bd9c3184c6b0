"""ONNX Runtime inference of an exported method."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from monai_sr_bundle.errors import InputError


class OnnxNetwork(nn.Module):
    """An exported ONNX model behind the torch call interface, so the same inferer drives ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        if not Path(path).is_file():
            raise InputError(
                f"{path}: ONNX model not found; export it first ('python -m monai.bundle onnx_export', or for a "
                "diffusion method configs/export_denoiser.json)."
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.takes_level = any(i.name == "noise_level" for i in self.session.get_inputs())

    def forward(self, x: torch.Tensor, noise_level=None) -> torch.Tensor:
        """The graph on ``x``; a degradation-aware network's ``noise_level`` goes in when the graph was exported
        with it as an input (``noise_level``, (B,)), else the graph estimates the level itself, tile by tile,
        and a given level is not used (logged once)."""
        feed = {self.input_name: x.detach().cpu().numpy().astype("float32")}
        if self.takes_level and noise_level is not None:
            level = torch.as_tensor(noise_level, dtype=torch.float32).reshape(-1).expand(x.shape[0])
            feed["noise_level"] = level.numpy()
        elif noise_level is not None and not getattr(self, "_told", False):
            self._told = True
            logging.getLogger(__name__).warning(
                "this ONNX graph takes the image alone: it estimates the noise level on each tile itself, and the "
                "level given (%s) is not used",
                noise_level,
            )
        (y,) = self.session.run(None, feed)
        return torch.from_numpy(y).to(x.device)


class OnnxDenoiser(nn.Module):
    """An exported diffusion denoiser (``sample``, ``timesteps`` -> ``noise``) behind the torch call of the
    denoiser it replaces, so a diffusion method's own sampler loop runs each step on ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        self.onnx = OnnxNetwork(path, threads)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        feed = {"sample": x.detach().cpu().numpy().astype("float32"), "timesteps": timesteps.cpu().numpy()}
        (y,) = self.onnx.session.run(None, feed)
        return torch.from_numpy(y).to(x.device)


class OnnxAutoencoder(nn.Module):
    """A latent method's autoencoder with its exported decoder (``latent`` -> ``image``, on ONNX Runtime or an
    engine); the encoder, which runs once per image rather than once per sampler call, stays in torch."""

    def __init__(self, autoencoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.torch_autoencoder, self.decoder = autoencoder, decoder

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.torch_autoencoder.encode(image)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)


class _Decoding(nn.Module):
    """An autoencoder's ``decode`` as a module's forward, which is what the exporter traces."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latent)


@dataclass(frozen=True)
class Part:
    """What of a sampling method exports as one graph (its sampler loop does not): ``name`` (``denoiser``, or a
    latent method's ``decoder``), the ``module`` traced, an ``example`` input to trace, a ``check`` input of
    other sizes that the graph must reproduce, the graph's input ``names`` and the ``dynamic`` axes."""

    name: str
    module: nn.Module
    example: tuple
    check: tuple
    names: tuple[str, ...]
    dynamic: dict


def denoiser_part(network: nn.Module) -> Part:
    """A diffusion method's denoiser (``sample``, ``timesteps`` -> its estimate), with dynamic batch and sides."""
    denoiser = network.denoiser.eval()
    step = network.multiple // network.unshuffle  # what the U-Net's halvings need of each side
    batch, h, w = torch.export.Dim("batch"), torch.export.Dim("h", min=1) * step, torch.export.Dim("w", min=1) * step
    g, c = torch.Generator().manual_seed(0), denoiser.in_channels
    return Part(
        "denoiser",
        denoiser,
        (torch.randn(2, c, 8 * step, 6 * step, generator=g), torch.tensor([10, network.train_steps - 1])),
        (torch.randn(1, c, 5 * step, 7 * step, generator=g), torch.tensor([network.train_steps // 2])),
        ("sample", "timesteps"),
        {"x": {0: batch, 2: h, 3: w}, "timesteps": {0: batch}},
    )


def decoder_part(network: nn.Module) -> Part:
    """A latent method's decoder (latent -> image in [0, 1]), with dynamic batch and sides."""
    channels = network.autoencoder.latent_channels
    batch, h, w = torch.export.Dim("batch"), torch.export.Dim("h", min=2), torch.export.Dim("w", min=2)
    g = torch.Generator().manual_seed(0)
    return Part(
        "decoder",
        _Decoding(network.autoencoder).eval(),
        (torch.randn(2, channels, 12, 8, generator=g),),
        (torch.randn(1, channels, 7, 10, generator=g),),
        ("latent",),
        {"latent": {0: batch, 2: h, 3: w}},
    )


def sampler_parts(method, network: nn.Module) -> list[Part]:
    """The parts of a sampling ``method`` that run on an engine: its denoiser, and a latent method's decoder."""
    return [denoiser_part(network), *([decoder_part(network)] if method.latent else [])]


def put_part(network: nn.Module, name: str, served: nn.Module) -> None:
    """Put ``served`` (the exported part ``name`` on a runtime) in place of the torch part, so the method's own
    sampler loop runs it."""
    if name == "decoder":
        network.autoencoder = OnnxAutoencoder(network.autoencoder, served)
    else:
        network.denoiser = served


def write_graph(
    module: nn.Module,
    example: tuple,
    path: str | os.PathLike,
    names: Sequence[str],
    output: str,
    dynamic: dict | tuple,
    check: Callable[[str], None] | None = None,
) -> Path:
    """Export ``module`` (torch's dynamo exporter, inputs ``names``, one ``output``, ``dynamic`` shapes) to
    ``path`` as one file: written to a temporary file in the same folder, given to ``check`` (which raises to
    keep it out) and renamed into place, so two processes exporting at once leave one good file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        torch.onnx.export(
            module,
            example,
            tmp,
            input_names=list(names),
            output_names=[output],
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,  # one file: renamed into place whole, no data file left beside it
            verbose=False,
        )
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def export_part(part: Part, path: str | os.PathLike) -> Path:
    """Export ``part`` and keep it at ``path`` only if ONNX Runtime matches torch to 1e-4 on its check input."""
    import numpy as np

    def check(tmp: str) -> None:
        with torch.inference_mode():
            expected = part.module(*part.check).numpy()
        (got,) = OnnxNetwork(tmp).session.run(None, {n: v.numpy() for n, v in zip(part.names, part.check)})
        gap = float(np.abs(got - expected).max())
        if gap >= 1e-4:
            raise InputError(
                f"{path}: the exported {part.name} differs from torch by {gap:.2e} (>= 1e-4); not written."
            )

    return write_graph(part.module, part.example, path, part.names, "output", part.dynamic, check)


def onnx_path(method, weights: str | os.PathLike | None = None) -> str:
    """Where the ONNX export of ``weights`` (default: the method's own) lies: beside them, ``.onnx``."""
    return str(Path(weights if weights is not None else method.weights_path).with_suffix(".onnx"))


def decoder_path(onnx_file: str | os.PathLike) -> str:
    """Where a latent method's exported decoder lies: beside its denoiser's ``onnx_file``."""
    return str(Path(onnx_file).with_name(Path(onnx_file).stem + "_decoder.onnx"))


def export_parts(method, network: nn.Module, denoiser_path: str | os.PathLike, decoder_path: str | os.PathLike) -> list:
    """Export what of a sampling ``method`` ONNX Runtime runs: its denoiser, and a latent method's decoder."""
    paths = {"denoiser": denoiser_path, "decoder": decoder_path}
    return [export_part(part, paths[part.name]) for part in sampler_parts(method, network)]


def export_denoiser(network: nn.Module, path: str | os.PathLike) -> Path:
    """Export a diffusion method's denoiser to ``path``, checked against torch."""
    return export_part(denoiser_part(network), path)


def export_decoder(network: nn.Module, path: str | os.PathLike) -> Path:
    """Export a latent method's decoder to ``path``, checked against torch."""
    return export_part(decoder_part(network), path)


def onnx_network(
    method,
    onnx_path: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    decoder_path: str | os.PathLike | None = None,
) -> nn.Module:
    """The method on ONNX Runtime: the exported network itself, or for a method whose sampler loop does
    not export (diffusion) the method with its denoiser exported and, for a latent method, its decoder
    (``decoder_path``)."""
    if method.exportable:
        return OnnxNetwork(onnx_path)
    return onnx_parts(method.load(weights, "cpu"), onnx_path, decoder_path if method.latent else None)


def onnx_parts(
    network: nn.Module, denoiser_path: str | os.PathLike, decoder_path: str | os.PathLike | None = None
) -> nn.Module:
    """A loaded diffusion method with its exported denoiser, and a latent method's exported decoder
    (``decoder_path``), put in place of the torch ones, so its own sampler loop runs them on ONNX Runtime."""
    put_part(network, "denoiser", OnnxDenoiser(denoiser_path))
    if decoder_path is not None:
        put_part(network, "decoder", OnnxNetwork(decoder_path))
    return network
