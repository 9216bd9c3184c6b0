"""The losses of GAN training: the adversarial game (SRGAN's standard one or ESRGAN's relativistic average
one) and the generator's weighted sum of content terms (pixel, perceptual). SRGAN and ESRGAN differ by these
settings in their overlays, not by training code."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_sr_bundle.errors import InputError


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


class AdversarialLoss(nn.Module):
    """Both sides of the GAN game on the discriminator's logits.

    Standard (SRGAN, Ledig et al. 2017): the discriminator tells HR from SR, the generator is rewarded when
    its SR is taken for real. Relativistic average (ESRGAN, Wang et al. 2018, after Jolicoeur-Martineau
    2018): the discriminator judges whether an HR image is more realistic than the average SR one and the
    other way round; the generator's loss is the mirror image, so it also learns from the real logits.

    Args:
        weight: the generator's adversarial weight (SRGAN 1e-3, ESRGAN 5e-3); the discriminator's loss is
            unweighted.
        relativistic: the relativistic average game instead of the standard one.
    """

    def __init__(self, weight: float = 1e-3, relativistic: bool = False) -> None:
        super().__init__()
        if not weight >= 0:
            raise InputError(f"the adversarial weight must be a number >= 0, got {weight!r}.")
        self.weight, self.relativistic = float(weight), bool(relativistic)

    def generator(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The generator's weighted adversarial loss; the relativistic game needs ``real_logits``."""
        if not self.relativistic:
            return self.weight * _bce(fake_logits, True)
        if real_logits is None:
            raise ValueError("the relativistic generator loss needs the discriminator's logits of real images.")
        real_logits = real_logits.detach()
        loss = _bce(real_logits - fake_logits.mean(), False) + _bce(fake_logits - real_logits.mean(), True)
        return self.weight * loss / 2

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss (MONAI's ``d_loss_function(real_logits, fake_logits)``)."""
        if self.relativistic:
            real_logits, fake_logits = real_logits - fake_logits.mean(), fake_logits - real_logits.mean()
        return (_bce(real_logits, True) + _bce(fake_logits, False)) / 2


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
