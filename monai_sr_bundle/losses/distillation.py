"""Knowledge distillation for SR: the student's SR pulled toward a frozen teacher's SR of the same LR batch,
so a small or fast network learns what a larger one does (as in Gao et al., "Image Super-Resolution Using
Knowledge Distillation", ACCV 2018, on the output)."""

from __future__ import annotations

import torch
from torch import nn

from monai_sr_bundle.losses.batch import SRBatch
from monai_sr_bundle.losses.pixel import PixelLoss


class DistillationLoss(nn.Module):
    """``mean(dist(pred - teacher(lr)))``, ``dist`` the absolute (``l1``) or squared (``mse``) difference, the
    teacher run without gradients on the batch's ``lr``.

    Args:
        teacher: the stage's auxiliary network (``"teacher": "@auxiliary#teacher"`` in the block; built frozen
            by :func:`~monai_sr_bundle.training.loop.auxiliary_network`); kept as a reference, not a submodule, so
            it is in no state dict of the loss and stays in eval mode.
        distance: ``"l1"`` or ``"mse"``.
    """

    def __init__(self, teacher: nn.Module, distance: str = "l1") -> None:
        super().__init__()
        self.pixel = PixelLoss(distance)
        self.teacher = [teacher]

    def forward(self, pred: torch.Tensor, batch: SRBatch) -> torch.Tensor:
        with torch.no_grad():
            wanted = self.teacher[0](batch.lr)
        return self.pixel(pred, SRBatch(hr=wanted))
