"""The training loss as config blocks, each with its weight (as BasicSR's ``pixel_opt`` / ``perceptual_opt``):
the train config's ``losses`` maps a block's name to its loss class with ``"_mode_": "callable"``, its
``weight`` and its arguments, so a method adds, drops or reweighs a term in its overlay
(``"losses#perceptual": {...}``) and a new loss is a new class, with no edit to a config's expressions::

    "losses": {"pixel": {"_target_": "monai_sr_bundle.losses.PixelLoss", "_mode_": "callable", "weight": 1.0}}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial

import torch
from torch import nn

from monai_sr_bundle.errors import InputError, first_line
from monai_sr_bundle.losses.batch import SRBatch


class WeightedSumLoss(nn.Module):
    """``sum_b weight_b * loss_b(pred, batch)`` over the blocks, in their order; a block with weight 0 (or
    ``null``) is never built, so a perceptual term switched off loads no VGG16 weights. ``batch`` is the
    prepare-batch's :class:`~monai_sr_bundle.losses.batch.SRBatch` (the engine's label), so every term may read
    the LR image, the box mask or any other item by name; a term that needs a network besides the one trained
    (a teacher) takes it as an argument of its block, a reference to the stage's ``auxiliary`` networks.

    Args:
        losses: block name -> the loss class bound to its arguments (a ``"_mode_": "callable"`` config
            component: a ``functools.partial`` with ``weight`` among its keywords), or None.
        source: where the blocks are set, for the error messages (the train configs and the method's overlay).
        device: where the terms run (a perceptual term's VGG16 on the GPU that trains).

    Raises:
        InputError: a block without a number ``weight`` >= 0, with an argument its class does not take, or
            that builds no torch module; every weight 0; a prediction not of its target's shape.
    """

    def __init__(
        self,
        losses: Mapping[str, Callable | None],
        source: str = "the train config",
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if not isinstance(losses, Mapping):
            raise InputError(f"losses in {source} must map block names to loss blocks, got {losses!r}.")
        terms, self.weights, self.record = {}, {}, {}
        for name, block in losses.items():
            if block is None:
                continue
            where = f"the loss block losses#{name} in {source}"
            args = dict(block.keywords) if isinstance(block, partial) else None
            if args is None or "weight" not in args:
                raise InputError(
                    f'{where} must be a loss class with "_mode_": "callable" and a "weight", e.g. '
                    '{"_target_": "monai_sr_bundle.losses.PixelLoss", "_mode_": "callable", "weight": 1.0}.'
                )
            weight = args.pop("weight")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise InputError(f"{where}: weight must be a number >= 0, got {weight!r}.")
            if weight == 0:
                continue
            try:
                term = block.func(*block.args, **args)
            except Exception as e:  # an unknown argument or a bad value, as the loss class reports it
                raise InputError(f"{where} cannot be built ({first_line(e)}).") from e
            if not isinstance(term, nn.Module):
                raise InputError(f"{where} built a {type(term).__name__}, not a torch module.")
            terms[name], self.weights[name] = term, float(weight)
            self.record[name] = {"loss": block.func.__name__, "weight": float(weight), **_plain(args)}
        if not terms:
            raise InputError(f"every loss block in {source} has weight 0: nothing would be trained.")
        self.terms = nn.ModuleDict(terms).to(device)

    def forward(self, pred: torch.Tensor, batch: SRBatch) -> torch.Tensor:
        if batch.target.shape != pred.shape:
            raise InputError(
                f"the training target {tuple(batch.target.shape)} must have the prediction's shape {tuple(pred.shape)}."
            )
        return sum(self.weights[name] * term(pred, batch) for name, term in self.terms.items())


def _plain(args: dict) -> dict:
    """The arguments that a provenance record can hold as JSON (not the modules a block reads from)."""
    kept = {}
    for key, value in args.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        kept[key] = value
    return kept
