"""The adversarial loss of GAN training: SRGAN's standard game or ESRGAN's relativistic average one. SRGAN
and ESRGAN differ by this setting and their content terms (``WeightedSumLoss``) in their overlays, not by
training code."""

from __future__ import annotations

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
