"""Samplers of the diffusion methods, behind MONAI's scheduler interface (``set_timesteps``, ``timesteps``,
``step(model_output, t, sample, generator=...)``, ``add_noise``), so a method swaps its sampler without
touching its denoiser: ``ddpm`` (the full ancestral chain, Ho et al. 2020) and ``ddim`` (deterministic
strides, Song et al. 2021), both from MONAI."""

from __future__ import annotations

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

from monai_sr_bundle.errors import InputError

SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


def make_sampler(
    name: str, steps: int, train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Scheduler:
    """Sampler ``name`` over a linear beta schedule of ``train_steps`` (SR3's and LDM's 1e-4 -> 0.02 by
    default), set to sample in ``steps`` steps. Samples are not clipped: the methods denoise residuals and
    clamp their own output."""
    if name not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= train_steps:
        raise InputError(
            f"sampler steps must be a whole number from 1 to {train_steps} (the training steps), got {steps!r}."
        )
    sampler = SAMPLERS[name](
        num_train_timesteps=train_steps,
        schedule="linear_beta",
        clip_sample=False,
        beta_start=beta_start,
        beta_end=beta_end,
    )
    sampler.set_timesteps(steps)
    return sampler
