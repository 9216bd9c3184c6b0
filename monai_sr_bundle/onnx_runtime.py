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
