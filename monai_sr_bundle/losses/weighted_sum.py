"""The generator's content loss: a weighted sum of terms (pixel, perceptual), each a config key, so that a
method changes its loss by its overlay's settings. The train stage uses it for every method; the GAN stage
adds the adversarial term beside it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_sr_bundle.errors import InputError


class WeightedSumLoss(nn.Module):
    """``sum_i weight_i * loss_i(pred, target)``; a term with weight 0 is never computed and may be ``None``
    (a perceptual term switched off in config then loads no VGG16 weights).

    Args:
        losses: loss modules ``(pred, target) -> scalar``.
        weights: one weight >= 0 per loss.
    """

    def __init__(self, losses: Sequence[nn.Module | None], weights: Sequence[float]) -> None:
        super().__init__()
        if len(losses) != len(weights) or not all(isinstance(w, (int, float)) and w >= 0 for w in weights):
            raise InputError(f"need one weight >= 0 per loss term, got weights {list(weights)!r}.")
        if any(w > 0 and loss is None for loss, w in zip(losses, weights)):
            raise InputError("a loss term with a weight above 0 is missing (None).")
        kept = [(loss, float(w)) for loss, w in zip(losses, weights) if w > 0]
        if not kept:
            raise InputError("every loss term has weight 0: nothing would be trained.")
        self.terms = nn.ModuleList(loss for loss, _ in kept)
        self.weights = [w for _, w in kept]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(pred, target) for loss, w in zip(self.terms, self.weights))
