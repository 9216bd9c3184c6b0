"""The batch a loss term sees: the training batch by name, beside the prediction."""

from __future__ import annotations

import torch


class SRBatch(dict):
    """A training batch by name, handed to every loss term as ``term(pred, batch)``: ``lr`` (the LR image),
    ``hr`` (the HR image), ``mask`` (the abnormality-box mask on the HR grid, where the batch has boxes),
    ``target`` (what the prediction is compared with: the HR image unless a stage sets another, e.g. a
    diffusion step's noise), and every other item of the batch under its own key (``noise_level``,
    ``boxes``), so a term reads the LR image or the mask by name, not from extra channels.

    It is a ``dict`` because the prepare-batch hands it to MONAI's engines as the label: ``SupervisedTrainer``
    (and ``AdversarialTrainer``'s content loss) pass the label to the loss as it is, and decollate a mapping
    like any batch dict after the iteration, so the engines, their handlers and a ``DistributedDataParallel``
    network (which only sees the inputs) run unchanged; validation has its own evaluator and batches.
    """

    @property
    def lr(self) -> torch.Tensor:
        return self["lr"]

    @property
    def hr(self) -> torch.Tensor:
        return self["hr"]

    @property
    def mask(self) -> torch.Tensor | None:
        return self.get("mask")

    @property
    def target(self) -> torch.Tensor:
        return self["target"] if "target" in self else self["hr"]
