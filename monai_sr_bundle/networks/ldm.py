"""Latent-diffusion SR (after Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
CVPR 2022): a KL autoencoder trained on chest X-rays maps an image to a latent ``factor`` times smaller per
side; a small U-Net denoises that latent, conditioned by concatenating the latent of the bicubic-upsampled
LR image; the decoder maps the denoised latent back to the SR image. Every sampler step runs on
``factor``^2 times fewer positions than a pixel-space denoiser, which is where its speed comes from.

The autoencoder is trained first, in a stage of its own (``configs/train_autoencoder.json``), and frozen
while the denoiser trains; the published weights hold both, so the method loads, tiles and averages
(FedAvg) like any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn
from torch.nn.functional import pad, pixel_shuffle, pixel_unshuffle

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.sr3 import SR3

#: the posterior's starting standard deviation. MONAI starts it at 1, as large as the latent itself, and with
#: the small KL weight only the reconstruction loss's noisy gradient pulls it down, slowly: a decoder trained
#: on latents that noisy learns to blur. Started small it stays small (the shipped one ended at a median of
#: 0.0005): noise of 0.002 in the raw latent decodes to about 60 dB below the image's range.
INITIAL_SIGMA = 0.002
#: momentum of the running latent spread (as BatchNorm's running variance): the estimate of the last few
#: hundred training batches, which the best checkpoint carries with it
SPREAD_MOMENTUM = 0.01


def dct_basis(block: int, count: int) -> torch.Tensor:
    """The ``count`` (at most ``block``^2) lowest-frequency orthonormal 2D DCT-II basis images of a ``block`` x
    ``block`` block, as rows of ``block``^2 values: a fixed stand-in for the principal components of
    image blocks (the 8 lowest of a 4x4 block keep 43.2 dB on the NIH test images: ``benchmarks/ldm.py``)."""
    k, i = torch.arange(block, dtype=torch.float64)[:, None], torch.arange(block, dtype=torch.float64)[None]
    cosines = torch.cos(math.pi * (2 * i + 1) * k / (2 * block)) * math.sqrt(2 / block)
    cosines[0] /= math.sqrt(2)
    order = sorted(((a, b) for a in range(block) for b in range(block)), key=lambda f: (f[0] + f[1], max(f)))
    return torch.stack([torch.outer(cosines[a], cosines[b]).flatten() for a, b in order[:count]]).float()


class LatentAutoencoder(nn.Module):
    """MONAI's ``AutoencoderKL`` on one-channel images in [0, 1], beside a linear block code, whose latent is
    brought to unit spread.

    A linear code of each ``factor`` x ``factor`` block (one latent position), started at its lowest DCT
    frequencies, carries most of the image, and ``AutoencoderKL``, on the image folded into ``block`` x
    ``block`` blocks (pixel unshuffle), learns what the linear code misses: its latent mean and its output
    start at zero, so training starts from the linear code's reconstruction. ``AutoencoderKL`` alone (levels
    32/64/64 at full resolution, 64-pixel patches) reached 34.4 dB on the NIH test images, and its
    full-resolution levels cost more than 20 denoiser steps; folded, every convolution runs at the latent's
    size.

    A KL-regularised latent with a small KL weight keeps whatever spread the encoder finds, while a diffusion
    schedule assumes about unit spread: while it trains, the autoencoder keeps a running estimate of each
    latent channel's standard deviation (a buffer, like BatchNorm's statistics, so the weights file carries it),
    and :meth:`encode` divides by it. Each training forward leaves its KL term on the module (``kl``: summed
    over latent channels, averaged over positions and the batch) for the loss to read.

    Args:
        channels: ``AutoencoderKL``'s levels; each after the first halves the side, so the latent is
            ``block * 2 ** (len(channels) - 1)`` times smaller per side.
        latent_channels: channels of the latent.
        num_res_blocks: residual blocks per level.
        norm_num_groups: as ``AutoencoderKL``'s. No attention: at a 128x128 latent a
            non-local block attends over 16k positions, too slow for a CPU.
        block: side of the blocks folded into channels before ``AutoencoderKL``.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 64),
        latent_channels: int = 4,
        num_res_blocks: int = 1,
        norm_num_groups: int = 16,
        block: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (("latent_channels", latent_channels), ("block", block)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"the autoencoder needs {name}, a whole number >= 1, got {value!r}.")
        self.latent_channels, self.block = latent_channels, block
        self.factor = block * 2 ** (len(channels) - 1)
        if latent_channels > self.factor**2:
            raise InputError(
                f"the autoencoder's latent_channels ({latent_channels}) can be at most the {self.factor**2} pixels of "
                f"the {self.factor}x{self.factor} block a latent position stands for: the linear block code has one "
                "latent channel per DCT frequency."
            )
        self.autoencoder = AutoencoderKL(
            spatial_dims=2,
            in_channels=block**2,
            out_channels=block**2,
            channels=tuple(channels),
            latent_channels=latent_channels,
            num_res_blocks=(num_res_blocks,) * len(channels),
            attention_levels=(False,) * len(channels),
            norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )
        self.linear_encoder = nn.Conv2d(self.factor**2, latent_channels, 1, bias=False)
        self.linear_decoder = nn.Conv2d(latent_channels, self.factor**2, 1, bias=False)
        # the learned part starts at zero: the block code's reconstruction is where training starts
        with torch.no_grad():
            basis = dct_basis(self.factor, latent_channels)
            self.linear_encoder.weight.copy_(basis[:, :, None, None])
            self.linear_decoder.weight.copy_(basis.T[:, :, None, None])
            for conv in (self.autoencoder.quant_conv_mu.conv, self.autoencoder.decoder.blocks[-1].conv):
                conv.weight.zero_()
                conv.bias.zero_()
            self.autoencoder.quant_conv_log_sigma.conv.bias.fill_(2 * math.log(INITIAL_SIGMA))  # 2 log sigma
        self.register_buffer("spread", torch.ones(latent_channels, 1, 1))
        self.kl = torch.zeros(())

    def posterior(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and standard deviation (raw units) of images in [0, 1] whose sides ``factor``
        divides."""
        if any(side % self.factor for side in image.shape[2:]):
            raise InputError(
                f"the autoencoder makes the image {self.factor} times smaller per side: each side must be a "
                f"multiple of {self.factor}, got {'x'.join(map(str, image.shape[2:]))} (a training patch_size too)."
            )
        image = image * 2 - 1
        mean, sigma = self.autoencoder.encode(pixel_unshuffle(image, self.block))
        return mean + self.linear_encoder(pixel_unshuffle(image, self.factor)), sigma

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The latent (posterior mean, unit spread per channel) of images in [0, 1] whose sides ``factor``
        divides."""
        return self.posterior(image)[0] / self.spread

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """The image in [0, 1] (unclamped: a training loss needs gradients outside it) of a latent."""
        return self._decode_raw(latent * self.spread)

    def _decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        learned = pixel_shuffle(self.autoencoder.decode(raw), self.block)
        return (learned + pixel_shuffle(self.linear_decoder(raw), self.factor) + 1) / 2

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``image``: through a drawn latent while training (leaving ``kl``), through the
        posterior mean otherwise."""
        if not self.training:
            return self.decode(self.encode(image))
        mean, sigma = self.posterior(image)
        latent = self.autoencoder.sampling(mean, sigma)
        self.kl = 0.5 * (mean.square() + sigma.square() - 1 - 2 * sigma.log()).sum(dim=1).mean()
        with torch.no_grad():
            self.spread.lerp_(mean.std(dim=(0, 2, 3))[:, None, None], SPREAD_MOMENTUM)
        return self._decode_raw(latent)


class LDM(SR3):
    """Latent-diffusion SR at ``scale``; SR3's sampler, schedule and denoiser arguments (see
    :class:`~monai_sr_bundle.networks.sr3.SR3`) applied to the latent of :class:`LatentAutoencoder`.

    The LR image is reflect-padded to what the autoencoder's and the U-Net's halvings divide (after x
    ``scale``) and the SR image cropped back, so any LR side of at least :attr:`lr_multiple` pixels works.

    Args:
        autoencoder: :class:`LatentAutoencoder`'s arguments.
        train_steps, sampler: as SR3's, with the latent-diffusion paper's 300 steps and the stochastic
            DPM-Solver++ by default.
        **sr3: SR3's other arguments (scale, the denoiser's widths, the schedule's betas, steps, prediction);
            the sample is the latent (no pixel folding, no residual over bicubic).
    """

    #: trained on the SR image its latent estimate decodes to (pixel and LPIPS terms of the train config)
    loss_space = "image"
    #: the denoiser and the decoder, which every sample runs (the encoder runs once per image)
    export_parts = ("denoiser", "autoencoder.autoencoder.decoder")
    #: largest LR tile: a 128-pixel LR tile is a 128x128 latent at x4 with a factor-4 autoencoder
    max_tile = 128

    def __init__(
        self, autoencoder: dict | None = None, train_steps: int = 300, sampler: str = "dpmpp_sde", **sr3
    ) -> None:
        if autoencoder is not None and not isinstance(autoencoder, dict):
            raise InputError(f"LDM's autoencoder takes the autoencoder's arguments as an object, got {autoencoder!r}.")
        first_stage = LatentAutoencoder(**(autoencoder or {}))
        super().__init__(
            train_steps=train_steps,
            sampler=sampler,
            unshuffle=1,
            residual=False,
            sample_channels=first_stage.latent_channels,
            **sr3,
        )
        self.autoencoder = first_stage
        # the LR side whose x scale image the autoencoder's and then the denoiser's halvings divide
        self.lr_multiple = math.lcm(first_stage.factor * self.multiple, self.scale) // self.scale

    def condition(self, lr: torch.Tensor) -> torch.Tensor:
        """The latent of the bicubic-upsampled LR image (whose sides the autoencoder divides)."""
        return self.autoencoder.encode(super().condition(lr).clamp(0, 1))

    def conditioning(self, condition: torch.Tensor) -> torch.Tensor:
        return condition

    def sample_of(self, hr: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The diffused sample: the HR image's latent."""
        return self.autoencoder.encode(hr)

    def image_of(self, sample: torch.Tensor, condition: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        image = self.autoencoder.decode(sample)
        return image.clamp(0, 1) if clamp else image

    def forward(self, lr: torch.Tensor, generator: torch.Generator | None = None, **sampling) -> torch.Tensor:
        h, w = lr.shape[-2:]
        if min(h, w) < self.lr_multiple:
            raise InputError(
                f"latent diffusion needs an LR image of at least {self.lr_multiple}x{self.lr_multiple} pixels (its "
                f"autoencoder and denoiser halve the x{self.scale} image), got {h}x{w}."
            )
        padded = pad(lr, (0, -w % self.lr_multiple, 0, -h % self.lr_multiple), mode="reflect")
        return super().forward(padded, generator, **sampling)[..., : h * self.scale, : w * self.scale]
