"""The batch a loss term sees: the training batch by name, beside the prediction; every prepare-batch of a
stage names it with :func:`named_batch`."""

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


#: the key of the abnormality-box mask on the HR grid (``BoxesToMaskd`` in the train config), its own item
#: through the transforms; the loss terms read it as the named batch's ``mask``
BOX_MASK_KEY = "box_mask"
#: the batch's keys under the names a loss term reads them by (:class:`~monai_sr_bundle.losses.batch.SRBatch`)
BATCH_NAMES = {"image": "lr", "label": "hr", BOX_MASK_KEY: "mask"}


def named_batch(batchdata: dict, device=None, non_blocking: bool = False) -> SRBatch:
    """The collated batch by name (``lr``, ``hr``, ``mask``; every other item under its own key), its tensors
    on ``device`` without MONAI's metadata (a loss needs none, and the engine strips it from its label only
    when the label is a tensor). Every prepare-batch of a stage builds its label here."""
    named = SRBatch()
    for key, value in batchdata.items():
        if isinstance(value, torch.Tensor):
            value = value.as_subclass(torch.Tensor).to(device=device, non_blocking=non_blocking)
        named[BATCH_NAMES.get(key, key)] = value
    return named
