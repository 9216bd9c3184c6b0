"""SR3: super-resolution by a conditional denoising diffusion model (Saharia et al., "Image Super-Resolution
via Iterative Refinement", 2021, https://arxiv.org/abs/2104.07636).

The denoiser, MONAI's ``DiffusionModelUNet``, sees the noisy sample concatenated with the bicubic-upsampled
LR image (in [-1, 1]) and predicts the noise. The sample is the HR residual over bicubic, divided by
``residual_scale``: bicubic already holds the low frequencies, so the chain spends its steps on the detail.
``forward(lr)`` runs the whole sampler, so the module maps LR to SR like every method (tiling, weights and
FedAvg work unchanged); its state dict is the denoiser's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from monai_sr_bundle.diffusion.samplers import make_sampler
from monai_sr_bundle.networks.bicubic import upsample


class SR3(nn.Module):
    """Conditional diffusion SR at ``scale``.

    Args:
        scale: SR factor.
        channels, num_res_blocks, attention_levels, norm_num_groups: the denoiser U-Net, one level per
            entry of ``channels``; attention nowhere by default (at 64x64 tokens it doubles the CPU time of a
            step).
        train_steps: length of the noise schedule (linear betas ``beta_start`` -> ``beta_end``).
        sampler: ``ddim`` or ``ddpm`` (see :mod:`monai_sr_bundle.diffusion.samplers`).
        steps: sampler steps at inference; the registry sets it per request.
        residual_scale: the HR residual over bicubic is divided by it, so the diffused sample has roughly
            unit spread.
    """

    #: draws noise: tiles are blended and seeded (see :mod:`monai_sr_bundle.tiling`)
    stochastic = True
    #: the sampling loop is not one traceable graph
    exportable = False

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
        residual_scale: float = 0.1,
    ) -> None:
        super().__init__()
        make_sampler(sampler, steps, int(train_steps), beta_start, beta_end)  # a bad sampler or steps: now
        self.scale, self.train_steps, self.betas = int(scale), int(train_steps), (float(beta_start), float(beta_end))
        self.sampler, self.steps, self.residual_scale = sampler, int(steps), float(residual_scale)
        self.denoiser = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=2,
            out_channels=1,
            channels=tuple(channels),
            num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels or [False] * len(channels)),
            norm_num_groups=norm_num_groups,
            num_head_channels=channels[-1],
        )

    def condition(self, lr: torch.Tensor) -> torch.Tensor:
        """The bicubic-upsampled LR image, which the SR adds its residual to."""
        return upsample(lr, self.scale)

    def predict_noise(self, noisy: torch.Tensor, condition: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's noise estimate for ``noisy`` at timesteps ``t`` (B,), given the upsampled LR."""
        return self.denoiser(torch.cat([noisy, condition * 2 - 1], dim=1), timesteps=t)

    def forward(self, lr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        condition = self.condition(lr)
        sampler = make_sampler(self.sampler, self.steps, self.train_steps, *self.betas)
        x = torch.randn(condition.shape, generator=generator, device=lr.device, dtype=lr.dtype)
        for t in sampler.timesteps:
            noise = self.predict_noise(x, condition, t.expand(len(x)).to(lr.device))
            x, _ = sampler.step(noise, int(t), x, generator=generator)
        return (condition + x * self.residual_scale).clamp(0, 1)
