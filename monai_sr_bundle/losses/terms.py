"""Loss terms that a module computes in its own training forward (a variational autoencoder's KL), as a
block of the train config's weighted sum."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.losses.batch import SRBatch


class TrainingTermsLoss(nn.Module):
    """The sum of the tensors ``module``'s last training forward left in its attributes ``terms`` (e.g.
    ``LatentAutoencoder.kl``; ADSR's VAE branch ``reconstruction`` and ``kl``); the prediction and the batch
    are not used, so the term sits beside the pixel and LPIPS blocks.

    The module is the unwrapped one the train config builds, so the term reads the same tensors whether the
    trainer runs it directly or inside ``DistributedDataParallel``.

    Args:
        module: the module that sets the terms in each training forward.
        terms: the attribute names, summed in this order.
    """

    def __init__(self, module: nn.Module, terms: Sequence[str] = ("kl",)) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise InputError(f"the module whose training terms are the loss must be a torch module, got {module!r}.")
        if isinstance(terms, str) or not terms or not all(isinstance(t, str) for t in terms):
            raise InputError(f"terms must list the attribute names of the module's loss terms, got {terms!r}.")
        self.source, self.terms = [module], list(terms)  # a reference, not a submodule: no parameters of its own

    def forward(self, pred: torch.Tensor, batch: SRBatch) -> torch.Tensor:
        module = self.source[0]
        found = [getattr(module, t, None) for t in self.terms]
        missing = [t for t, v in zip(self.terms, found) if not isinstance(v, torch.Tensor)]
        if missing:
            raise InputError(
                f"{type(module).__name__} left no {', '.join(missing)} from its forward; the loss block names "
                "terms the module does not compute."
            )
        return sum(found[1:], found[0])
