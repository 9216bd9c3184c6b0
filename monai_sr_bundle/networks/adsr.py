"""ADSR: anomaly-focused, distribution-aware diffusion SR with artifact removal ("Anomaly-focused single image
super-resolution with artifact removal for chest X-rays using a distribution-aware diffusion model", MIDL
2024): SR3 whose denoiser has a VAE branch beside its bottleneck.

The paper's branch (encoder BLVE, latent BLVL, decoder BLVD) reads the bottleneck's input; its output is
concatenated with the bottleneck's output before the up path. Here the latent is per position (3x3
convolutions to a mean and log-variance map) instead of the paper's fully connected layer, so the denoiser
still takes any input size and tiled inference works; and a 1x1 convolution maps the concatenation back to
the width the up path expects (the authors' published branch has mismatched channels and does not run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.sr3 import SR3

#: log-variance clamp: exp() of it stays finite in float32 and the KL term cannot explode early in training
LOGVAR_RANGE = (-30.0, 20.0)


class VAEBottleneck(nn.Module):
    """The denoiser's middle block with the VAE branch beside it; same call signature as the block it wraps.

    Each call leaves the branch's two loss terms on the module for the training loss to read (a denoiser's
    forward returns one tensor): ``kl``, the KL divergence of the per-position posterior to N(0, I) (summed
    over latent channels, averaged over positions and the batch), and ``reconstruction``, the mean squared
    error of the branch's decoding of the bottleneck input (the input is a target here, not trained through
    this term). Training draws the latent (reparameterised); evaluation uses its mean, so a seeded sampler
    gives the same image twice.

    Args:
        middle: the U-Net's middle block (``hidden_states, temb, context`` in, same shape out).
        channels: its width.
        latent_channels: channels of the latent map.
    """

    def __init__(self, middle: nn.Module, channels: int, latent_channels: int) -> None:
        super().__init__()
        if isinstance(latent_channels, bool) or not isinstance(latent_channels, int) or latent_channels < 1:
            raise InputError(f"the VAE branch needs latent_channels, a whole number >= 1, got {latent_channels!r}.")
        self.middle = middle
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, 2 * latent_channels, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.fuse = nn.Conv2d(2 * channels, channels, 1)
        # the fusion starts as the bottleneck's output alone: an ADSR starts as the SR3 it extends
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.bias.zero_()
            self.fuse.weight[:, :channels, 0, 0] = torch.eye(channels)
        self.kl = self.reconstruction = torch.zeros(())

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, context=None) -> torch.Tensor:
        out = self.middle(hidden_states=hidden_states, temb=temb, context=context)
        mean, logvar = self.encoder(hidden_states).chunk(2, dim=1)
        logvar = logvar.clamp(*LOGVAR_RANGE)
        latent = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        branch = self.decoder(latent)
        self.kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(dim=1).mean()
        self.reconstruction = F.mse_loss(branch, hidden_states.detach())
        return self.fuse(torch.cat([out, branch], dim=1))


class ADSR(SR3):
    """SR3 (see :class:`~monai_sr_bundle.networks.sr3.SR3`, whose arguments it takes) with the VAE branch of
    :class:`VAEBottleneck` beside the denoiser's bottleneck, trained on the SR image its estimate implies
    (``loss_space``) with the loss blocks of its overlay (pixel MSE, :class:`~monai_sr_bundle.losses.BoxLoss` and
    the branch's terms through :class:`~monai_sr_bundle.losses.TrainingTermsLoss`). The clean-sample prediction
    is the default: recovering the image from a noise estimate divides its error by sqrt(alpha_bar), up to
    157 times at the noisiest step of the linear schedule.

    Args:
        latent_channels: channels of the branch's per-position latent.
        vae: with the VAE branch; without it (the paper's ablation) the network is SR3's, trained with the
            rest of the anomaly-focused loss on the image.
        **sr3: SR3's arguments.
    """

    loss_space = "image"

    def __init__(self, latent_channels: int = 8, vae: bool = True, prediction: str = "sample", **sr3) -> None:
        if not isinstance(vae, bool):
            raise InputError(f"ADSR's vae says whether it has the VAE branch: true or false, got {vae!r}.")
        super().__init__(prediction=prediction, **sr3)
        unet = self.denoiser
        if vae:
            unet.middle_block = VAEBottleneck(unet.middle_block, unet.block_out_channels[-1], latent_channels)

    @property
    def branch(self) -> VAEBottleneck | None:
        """The VAE branch, whose ``kl`` and ``reconstruction`` the training loss reads after each forward
        (None without one)."""
        middle = self.denoiser.middle_block
        return middle if isinstance(middle, VAEBottleneck) else None
