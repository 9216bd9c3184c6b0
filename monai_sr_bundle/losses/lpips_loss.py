"""LPIPS as a training loss: the learned perceptual distance the project reports, made an objective, as the
latent-diffusion SR paper trains its denoiser with an LPIPS term on the decoded image."""

from __future__ import annotations

import os

import torch
from torch import nn

from monai_sr_bundle.losses.batch import SRBatch
from monai_sr_bundle.metrics.lpips import load_lpips


class LPIPSLoss(nn.Module):
    """The mean over the batch of LPIPS(pred, target), the batch's ``target`` (the HR image).

    Args:
        net: ``"alex"`` (the LPIPS default, the network the benchmarks report) or ``"vgg"``.
        weights_path: the LPIPS archive; default ``$MONAI_SR_DATA/weights/lpips_<net>_full_v0.1.npz``.

    The LPIPS network is the process's one frozen instance (:func:`~monai_sr_bundle.metrics.lpips.load_lpips`,
    shared with the metric, its archive read once): gradients reach the prediction only.
    """

    def __init__(self, net: str = "alex", weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.lpips = load_lpips(net, weights_path)

    def forward(self, pred: torch.Tensor, batch: SRBatch) -> torch.Tensor:
        return self.lpips(pred, batch.target).mean()
