"""SR3: super-resolution by a conditional denoising diffusion model (Saharia et al., "Image Super-Resolution
via Iterative Refinement", 2021, https://arxiv.org/abs/2104.07636).

The denoiser, MONAI's ``DiffusionModelUNet``, sees the noisy sample concatenated with the bicubic-upsampled
LR image (in [-1, 1]) and predicts the noise (or, for comparison, the clean sample or the velocity). The
sample is the HR residual over bicubic, divided by ``residual_scale``: bicubic already holds the low
frequencies, so the chain spends its steps on the detail (or, for comparison, the HR image in [-1, 1]).
``forward(lr)`` runs the whole sampler, so the module maps LR to SR like every method (tiling, weights and
FedAvg work unchanged); its state dict is the denoiser's.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn
from torch.nn.functional import pad, pixel_shuffle, pixel_unshuffle
from tqdm import tqdm

from monai_sr_bundle import cancel
from monai_sr_bundle.diffusion.samplers import make_sampler
from monai_sr_bundle.networks.bicubic import upsample


class SR3(nn.Module):
    """Conditional diffusion SR at ``scale``.

    Args:
        scale: SR factor.
        channels, num_res_blocks, attention_levels, norm_num_groups: the denoiser U-Net, one level per
            entry of ``channels``; no attention in the levels by default (at 64x64 positions it doubles the
            CPU time of a step), only in the U-Net's middle block, where MONAI always puts it.
        train_steps: length of the noise schedule (linear betas ``beta_start`` -> ``beta_end``).
        sampler: one of :data:`monai_sr_bundle.diffusion.samplers.SAMPLERS`.
        steps: sampler steps at inference (a call may ask for others: ``forward``).
        residual_scale: the HR residual over bicubic is divided by it; at x4 on NIH images the residual's
            standard deviation is about 0.02, so 0.04 gives the sample the spread of an image in [-1, 1],
            the scale the noise schedule was designed for.
        residual: diffuse the residual over bicubic (else the HR image itself, mapped to [-1, 1]).
        prediction: what the denoiser predicts, one of
            :data:`~monai_sr_bundle.diffusion.samplers.PREDICTIONS` (noise, clean sample, velocity).
        sample_channels: channels of the diffused sample and of the condition (1, an image; a latent's for
            latent diffusion).
        unshuffle: the denoiser works on ``unshuffle`` x ``unshuffle`` pixel blocks folded into channels
            (pixel unshuffle), so its first level runs at a quarter of the pixels for 2: on a CPU a 512x512
            step takes 0.5 s instead of 5.8 s with the same channels, and a training patch covers 4x the area.
    """

    #: draws noise: tiles are blended and seeded (see :mod:`monai_sr_bundle.tiling`)
    stochastic = True
    #: the sampling loop is not one traceable graph
    exportable = False
    #: the submodules every sample runs: ``configs/inference_trt.json`` compiles them with TensorRT,
    #: ``configs/export_denoiser.json`` exports them to ONNX
    export_parts = ("denoiser",)
    #: what training compares: the denoiser's estimate with what it should have found (``"prediction"``), or
    #: the SR image that estimate implies with the clean HR (``"image"``, for losses defined on the image)
    loss_space = "prediction"
    #: largest LR tile: the U-Net's middle block attends over all its positions, whose cost grows with the
    #: square of their number (a 128-pixel LR tile: 64x64 positions, about 0.5 s a step on 2 CPU cores)
    max_tile = 128

    def __init__(
        self,
        scale: int = 4,
        channels: Sequence[int] = (32, 64, 64),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] | None = None,
        norm_num_groups: int = 16,
        train_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        sampler: str = "ddim",
        steps: int = 20,
        residual_scale: float = 0.04,
        unshuffle: int = 2,
        residual: bool = True,
        prediction: str = "epsilon",
        sample_channels: int = 1,
    ) -> None:
        super().__init__()
        # a bad sampler, steps or prediction: refused now, not at the first request
        make_sampler(sampler, steps, int(train_steps), beta_start, beta_end, prediction)
        self.scale, self.train_steps, self.betas = int(scale), int(train_steps), (float(beta_start), float(beta_end))
        self.sampler, self.steps, self.residual_scale = sampler, int(steps), float(residual_scale)
        self.residual, self.prediction = bool(residual), prediction
        self.unshuffle = int(unshuffle)
        self.multiple = self.unshuffle * 2 ** (len(channels) - 1)
        self.denoiser = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=2 * sample_channels * self.unshuffle**2,
            out_channels=sample_channels * self.unshuffle**2,
            channels=tuple(channels),
            num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels or [False] * len(channels)),
            norm_num_groups=norm_num_groups,
            num_head_channels=channels[-1],
            use_flash_attention=True,  # the middle block always attends: never hold the tokens' full matrix
        )

    @cached_property
    def schedule(self):
        """The training noise schedule (DDPM over all ``train_steps``), built once: training noises samples
        with it and reads the clean-sample estimate back through it at every step."""
        return make_sampler("ddpm", self.train_steps, self.train_steps, *self.betas)

    def condition(self, lr: torch.Tensor) -> torch.Tensor:
        """The bicubic-upsampled LR image, which the SR adds its residual to."""
        return upsample(lr, self.scale)

    def conditioning(self, condition: torch.Tensor) -> torch.Tensor:
        """What the denoiser sees of the condition beside the noisy sample: the upsampled LR in [-1, 1]."""
        return condition * 2 - 1

    def sample_of(self, hr: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The diffused sample of an HR image: its residual over bicubic, scaled to roughly unit spread."""
        return (hr - condition) / self.residual_scale if self.residual else hr * 2 - 1

    def image_of(self, sample: torch.Tensor, condition: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """The SR image in [0, 1] of a denoised sample (the inverse of :meth:`sample_of`); unclamped for a
        training loss, which needs gradients outside [0, 1] too."""
        image = condition + sample * self.residual_scale if self.residual else (sample + 1) / 2
        return image.clamp(0, 1) if clamp else image

    def estimate_image(self, noisy: torch.Tensor, condition: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The SR image (unclamped) that the denoiser's estimate at timesteps ``t`` implies: its clean-sample
        estimate, recovered from a noise or velocity prediction through the training schedule."""
        estimate = self.denoise(noisy, condition, t)
        if self.prediction == "sample":
            clean = estimate
        else:
            alpha_bar = self.schedule.alphas_cumprod.to(noisy)[t].view(-1, *[1] * (noisy.dim() - 1))
            a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
            clean = a * noisy - s * estimate if self.prediction == "v_prediction" else (noisy - s * estimate) / a
        return self.image_of(clean, condition, clamp=False)

    def denoise(self, noisy: torch.Tensor, condition: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's estimate (of ``prediction``) for ``noisy`` at timesteps ``t`` (B,), given the upsampled
        LR. Sides are padded (reflected) to what the folding and the U-Net's halvings divide, then cropped."""
        h, w = noisy.shape[-2:]
        x = torch.cat([noisy, self.conditioning(condition)], dim=1)
        x = pad(x, (0, -w % self.multiple, 0, -h % self.multiple), mode="reflect")
        out = pixel_shuffle(self.denoiser(pixel_unshuffle(x, self.unshuffle), timesteps=t), self.unshuffle)
        return out[..., :h, :w]

    def make_sampler(self, sampler: str | None = None, steps: int | None = None):
        """The sampler ``sampler`` in ``steps`` steps (None: the network's own), or one sentence saying why not
        (an unknown sampler, more steps than training had)."""
        return make_sampler(
            sampler or self.sampler, steps or self.steps, self.train_steps, *self.betas, self.prediction
        )

    def forward(
        self,
        lr: torch.Tensor,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """SR of ``lr`` by sampling: ``sampler`` and ``steps`` choose the sampler for this call (None: the
        network's own), so one loaded network serves every request; ``progress`` shows a bar over its steps."""
        condition = self.condition(lr)
        solver = self.make_sampler(sampler, steps)
        x = torch.randn(condition.shape, generator=generator, device=lr.device, dtype=lr.dtype)
        for t in tqdm(solver.timesteps, desc=f"{sampler or self.sampler} steps", leave=False, disable=not progress):
            cancel.check()
            estimate = self.denoise(x, condition, t.expand(len(x)).to(lr.device))
            x, _ = solver.step(estimate, int(t), x, generator=generator)
        return self.image_of(x, condition)
