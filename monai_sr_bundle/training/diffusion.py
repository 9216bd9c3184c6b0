"""The diffusion stages (``configs/train_diffusion.json``; a latent method trains ``configs/train_autoencoder.json``
first, then ``configs/train_latent.json`` on its frozen autoencoder) on MONAI's ``SupervisedTrainer``: the
prepare-batch noises the HR target at random timesteps and conditions on the LR image, the trainer runs
:class:`DenoisingStep` (the module it trains, through its ``forward``, so ``DistributedDataParallel`` can wrap
it) for the denoiser's estimate, and the train config's loss compares it with what it should have found (the
noise drawn, the clean sample or the velocity, as the network's ``prediction`` says), or, for a method whose
loss is on the image (``loss_space``), the SR image it implies with the clean HR. The batch is the one every
method trains on, by name (:func:`~monai_sr_bundle.losses.batch.named_batch`: its ``target`` the denoiser's, its
``mask`` the box mask), so the CLI, the MONAI Label trainer and the NVFlare client train a diffusion method
unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from monai.engines.utils import PrepareBatch
from torch import nn

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.losses.batch import named_batch
from monai_sr_bundle.weights import load_weights


class DiffusionPrepareBatch(PrepareBatch):
    """``(noisy sample, named batch), kwargs {condition, timesteps}`` from an SR batch, the batch's ``target``
    what the denoiser should find.

    The sample is the network's (``network.sample_of(hr, condition)``), so a method that diffuses a residual
    or a latent says so in one place; timesteps are uniform over the training schedule, drawn from torch's
    global generator (seeded by the train config's ``set_determinism``).

    Args:
        network: the diffusion method being trained (``condition``, ``sample_of``, ``denoise``,
            ``train_steps``, ``betas``, ``prediction``).
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.schedule = network.schedule

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        batch = named_batch(batchdata, device, non_blocking)
        hr = batch.hr
        with torch.no_grad():
            condition = self.network.condition(batch.lr)
            sample = self.network.sample_of(hr, condition)
        noise = torch.randn_like(sample)
        t = torch.randint(0, self.network.train_steps, (len(sample),), device=sample.device)
        noisy = self.schedule.add_noise(original_samples=sample, noise=noise, timesteps=t)
        if self.network.loss_space == "image":
            batch["target"] = hr
        elif self.network.prediction == "sample":
            batch["target"] = sample
        elif self.network.prediction == "v_prediction":
            batch["target"] = self.schedule.get_velocity(sample, noise, t)
        else:
            batch["target"] = noise
        return noisy, batch, (), {"condition": condition, "timesteps": t}


class DenoisingStep(nn.Module):
    """The module a diffusion stage trains: ``forward(noisy, condition, timesteps)`` is the method's denoiser
    estimate, or for a method whose loss is on the image (``loss_space``) the SR image that estimate implies;
    never a sampled SR image. Its parameters are the method's (``method``), whose state dict the checkpoints
    and the published weights hold.

    Args:
        method: the diffusion SR method being trained (``denoise``, ``estimate_image``, ``loss_space``).
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, noisy: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        step = self.method.estimate_image if self.method.loss_space == "image" else self.method.denoise
        return step(noisy, condition, timesteps)


class AutoencoderPrepareBatch(PrepareBatch):
    """``(HR image, named batch)`` from an SR batch: a latent method's autoencoder stage reconstructs the HR
    image it will later encode, the batch's ``target``; the LR image is not used."""

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        batch = named_batch(batchdata, device, non_blocking)
        return batch.hr, batch


class ReconstructionPrepareBatch(PrepareBatch):
    """``(HR image, HR image)``: the autoencoder stage's validation, whose metrics compare the reconstruction
    with the HR image as tensors (an evaluator's metrics read its label; only a trainer's loss takes the
    named batch)."""

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        hr = batchdata["label"].to(device=device, non_blocking=non_blocking)
        return hr, hr


def frozen_autoencoder(network, weights: str | os.PathLike | None):
    """``network`` with its autoencoder frozen, first loaded from ``weights`` (the autoencoder stage's; None
    keeps the one ``network`` holds, e.g. from its full weights when training goes on)."""
    if weights is not None:
        if not Path(weights).is_file():
            raise InputError(
                f"{weights}: no autoencoder weights; train the autoencoder first (configs/train_autoencoder.json "
                "after configs/train.json) or pass --autoencoder_weights."
            )
        try:
            load_weights(network.autoencoder, weights)
        except InputError as e:
            raise InputError(
                f"{str(e).rstrip('.')}; the autoencoder stage and the method's overlay must agree on its channels, "
                "block and latent_channels."
            ) from e
    network.autoencoder.requires_grad_(False)
    return network


def autoencoder_weights(method: methods.Method, init_weights: str | os.PathLike | None) -> str | None:
    """The autoencoder a latent stage freezes: the autoencoder stage's published weights, or none to load when
    training goes on from ``init_weights`` (a latent method's full weights hold its autoencoder)."""
    return str(method.autoencoder_weights_path) if init_weights is None else None
