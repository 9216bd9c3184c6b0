"""ADSR's training loss (MIDL 2024): L = lambda_R L_R + lambda_B L_B + lambda_VAE (L_VR + L_KL), on the SR image
the denoiser's estimate implies (``SR3.estimate_image``) against the clean HR target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.losses.box_weighted import split_target

#: the paper's lambdas
DEFAULT_WEIGHTS = {"reconstruction": 0.4, "box": 0.3, "vae": 0.3}


class AnomalyFocusedLoss(nn.Module):
    """``reconstruction`` x MSE(sr, hr) + ``box`` x L_B + ``vae`` x (branch reconstruction + branch KL).

    L_B is the MSE inside the abnormality boxes (the mask in the target's last channel), per image over its
    box pixels, averaged over the images that have boxes: an image without boxes adds nothing (and a batch
    without any, zero), never a NaN. The VAE terms are the ones the network's branch left from this
    forward pass (``VAEBottleneck.kl`` / ``reconstruction``); a network without the branch adds none.

    Args:
        network: the method being trained (its ``branch`` holds the VAE terms).
        weights: any of ``reconstruction``, ``box``, ``vae`` (the paper's 0.4 / 0.3 / 0.3 by default).
    """

    def __init__(self, network: nn.Module, weights: dict | None = None) -> None:
        super().__init__()
        weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
        if unknown or not all(isinstance(w, (int, float)) and w >= 0 for w in weights.values()):
            raise InputError(f"loss weights must be numbers >= 0 named {', '.join(DEFAULT_WEIGHTS)}, got {weights!r}.")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.branch = network.branch

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hr, mask = split_target(pred, target)
        loss = self.weights["reconstruction"] * F.mse_loss(pred, hr)
        if mask is not None:
            area = mask.flatten(1).sum(1)
            boxed = area > 0
            if boxed.any():
                per_image = (mask * (pred - hr).square()).flatten(1).sum(1)[boxed] / (area[boxed] * pred.shape[1])
                loss = loss + self.weights["box"] * per_image.mean()
        if self.branch is None:
            return loss
        return loss + self.weights["vae"] * (self.branch.reconstruction + self.branch.kl)
