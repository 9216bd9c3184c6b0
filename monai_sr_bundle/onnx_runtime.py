"""ONNX Runtime inference of an exported method."""

from __future__ import annotations

import os
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
                f"{path}: ONNX model not found; export it first with 'python -m monai.bundle onnx_export'."
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (y,) = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype("float32")})
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


def export_denoiser(network: nn.Module, path: str | os.PathLike) -> Path:
    """Export a diffusion method's denoiser to ``path`` with dynamic batch and sides (torch's dynamo exporter)
    and check it against torch on a random input; an ONNX model that differs by 1e-4 or more is not kept."""
    import numpy as np

    denoiser, path = network.denoiser.eval(), Path(path)
    step = network.multiple // network.unshuffle  # what the U-Net's halvings need of each side
    x = torch.randn(2, denoiser.in_channels, 8 * step, 6 * step)
    t = torch.tensor([10, network.train_steps - 1])
    batch, h, w = torch.export.Dim("batch"), torch.export.Dim("h", min=1) * step, torch.export.Dim("w", min=1) * step
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        denoiser,
        (x, t),
        str(tmp),
        input_names=["sample", "timesteps"],
        output_names=["noise"],
        dynamic_shapes={"x": {0: batch, 2: h, 3: w}, "timesteps": {0: batch}},
        dynamo=True,
    )
    x, t = torch.randn(1, denoiser.in_channels, 5 * step, 7 * step), torch.tensor([500])
    with torch.inference_mode():
        expected = denoiser(x, timesteps=t).numpy()
    gap = float(np.abs(OnnxDenoiser(tmp)(x, t).numpy() - expected).max())
    if gap >= 1e-4:
        tmp.unlink()
        raise InputError(f"{path}: the exported denoiser differs from torch by {gap:.2e} (>= 1e-4); not written.")
    os.replace(tmp, path)
    return path


def onnx_network(
    method, onnx_path: str | os.PathLike, weights: str | os.PathLike | None = None, **sampling
) -> nn.Module:
    """The method on ONNX Runtime: the exported network itself, or for a method whose sampler loop does
    not export (diffusion) the method with its denoiser exported (``sampling``: ``steps``, ``sampler``)."""
    if method.exportable:
        return OnnxNetwork(onnx_path)
    network = method.load(weights, "cpu", **sampling)
    network.denoiser = OnnxDenoiser(onnx_path)
    return network
