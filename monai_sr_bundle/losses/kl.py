"""The KL term of a variational autoencoder as a loss of the train config's weighted sum."""

from __future__ import annotations

import torch
from torch import nn


class LatentKLLoss(nn.Module):
    """The KL divergence that ``module``'s last training forward left on it (``module.kl``); the prediction
    and the target are not used, so the term sits beside the pixel and LPIPS terms of a weighted sum.

    Args:
        module: a module that sets ``kl`` in each training forward (e.g. ``LatentAutoencoder``).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.source = [module]  # a reference, not a submodule: the loss holds no parameters of the network

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.source[0].kl
