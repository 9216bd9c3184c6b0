"""A router between two trained networks by how noisy the input is: the baseline a single condition-aware
network has to beat (two specialists, each right on half of the radiographs, and a rule that picks one)."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.transforms.noise import estimate_noise_level


class NoiseRouter(nn.Module):
    """``clean`` for inputs whose noise level (grey levels of 255) is at most ``threshold``, else ``degraded``.

    The level is the whole image's (the predictor estimates it once and passes it to every tile, so all tiles
    of an image take one route), or estimated from ``lr`` when none is given. Both networks run and the route
    selects per image (``torch.where``), so the exported graph holds the rule: twice one network's time.
    The state dict is the two networks' under ``clean.`` and ``degraded.``.

    Args:
        clean: the network for clean LR (e.g. ``runet``'s).
        degraded: the network for degraded LR (e.g. ``runet_real``'s).
        threshold: the noise level above which ``degraded`` serves.
    """

    #: takes ``noise_level``: the route
    noise_aware = True
    winograd_speedup = False

    def __init__(self, clean: nn.Module, degraded: nn.Module, threshold: float = 2.4) -> None:
        super().__init__()
        self.clean, self.degraded, self.threshold = clean, degraded, float(threshold)
        self.halo = max(clean.halo, degraded.halo)
        self.scale = clean.scale

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor | float | None = None) -> torch.Tensor:
        if noise_level is None:
            level = estimate_noise_level(x)
        else:
            level = torch.as_tensor(noise_level, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        noisy = (level > self.threshold)[:, None, None, None]
        return torch.where(noisy, self.degraded(x), self.clean(x))
