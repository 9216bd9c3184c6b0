"""Samplers of the diffusion methods, behind MONAI's scheduler interface (``set_timesteps``, ``timesteps``,
``step(model_output, t, sample, generator=...) -> (previous sample, x0 estimate)``, ``add_noise``), so a
method swaps its sampler without touching its denoiser: ``ddpm`` (ancestral sampling, Ho et al. 2020, over
all or some of the training timesteps) and ``ddim`` (deterministic strides, Song et al. 2021) on MONAI's
DDIM scheduler, and from diffusers ``dpmpp`` (DPM-Solver++, a second-order multistep ODE solver, Lu et al.
2022) and ``dpmpp_sde`` (its stochastic form).

Why a stochastic few-step sampler: a deterministic one (``ddim``, ``dpmpp``) at 10-50 steps lands near the
average of the plausible images, smooth where the full chain draws texture: on chest X-ray crops it gave
LPIPS 0.18-0.23 where DDPM-1000 gave 0.089; ``dpmpp_sde`` and ``ddpm`` at 10-20 steps inject fresh noise each
step as the full chain does and match it (docs/diffusion.md, the sampler table)."""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDIMScheduler, Scheduler

from monai_sr_bundle.errors import InputError


class AncestralDDPM(DDIMScheduler):
    """DDPM's ancestral sampling over the timesteps of ``set_timesteps``: the DDIM step with eta = 1, whose
    noise is the DDPM posterior's (Song et al. 2021, eq. 16), the same chain over all training timesteps.
    MONAI's ``DDPMScheduler`` steps from t to t - 1 whatever the stride, so it is right only for the full
    chain: at 20 steps most of the noise stays (tests/test_sr3.py, the Gaussian check)."""

    def step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return super().step(model_output, timestep, sample, eta=1.0, generator=generator)


class DPMSolverPP:
    """diffusers' ``DPMSolverMultistepScheduler`` (``algorithm``, order 2, first order on the last steps
    for stability at 10-20 steps) with MONAI's scheduler interface. Timesteps are spaced from the end of
    the schedule (``trailing``): diffusers' default spacing repeats a timestep at the full 1000 steps and the
    solver returns NaN there.

    Args:
        num_train_timesteps, beta_start, beta_end: the linear schedule the denoiser was trained on.
        prediction_type: what the denoiser predicts (one of PREDICTIONS).
        kwargs: MONAI scheduler arguments that do not apply (``schedule``, ``clip_sample``), ignored.
    """

    algorithm = "dpmsolver++"

    def __init__(
        self, num_train_timesteps: int, beta_start: float, beta_end: float, prediction_type: str, **kwargs
    ) -> None:
        from diffusers import DPMSolverMultistepScheduler

        self.num_train_timesteps = num_train_timesteps
        self.solver = DPMSolverMultistepScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule="linear",
            algorithm_type=self.algorithm,
            solver_order=2,
            prediction_type=prediction_type,
            lower_order_final=True,
            timestep_spacing="trailing",
        )

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        self.solver.set_timesteps(num_inference_steps, device=device)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.solver.timesteps

    def step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, None]:
        return self.solver.step(model_output, timestep, sample, generator=generator).prev_sample, None

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.solver.add_noise(original_samples, noise, timesteps)


class StochasticDPMSolverPP(DPMSolverPP):
    """DPM-Solver++ on the diffusion SDE (``sde-dpmsolver++``): fresh noise at each step, drawn from the
    sampler's generator, so a seed still fixes the result."""

    algorithm = "sde-dpmsolver++"


SAMPLERS = {"ddpm": AncestralDDPM, "ddim": DDIMScheduler, "dpmpp": DPMSolverPP, "dpmpp_sde": StochasticDPMSolverPP}
#: what a denoiser may predict, by the schedulers' names: the noise, the clean sample (x0), or the velocity
#: sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0 (Salimans & Ho 2022)
PREDICTIONS = ("epsilon", "sample", "v_prediction")


def make_sampler(
    name: str,
    steps: int,
    train_steps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction: str = "epsilon",
) -> Scheduler | DPMSolverPP:
    """Sampler ``name`` over a linear beta schedule of ``train_steps`` (SR3's and LDM's 1e-4 -> 0.02 by
    default) for a denoiser that predicts ``prediction``, set to sample in ``steps`` steps. Samples are not
    clipped: the methods denoise residuals and clamp their own output."""
    if name not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}.")
    if prediction not in PREDICTIONS:
        raise InputError(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}.")
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
        prediction_type=prediction,
    )
    sampler.set_timesteps(steps)
    return sampler
