"""SR3 and the diffusion samplers, on a tiny denoiser and a short schedule: shapes, range, bit-for-bit
seeding, the samplers' step counts, and bad sampler settings refused in one sentence."""

from __future__ import annotations

import pytest
import torch

from monai_sr_bundle.diffusion.samplers import SAMPLERS, make_sampler
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.networks.sr3 import SR3
from monai_sr_bundle.tiling import SRInferer


def tiny(**kw) -> SR3:
    torch.manual_seed(0)
    return SR3(channels=(8, 8), norm_num_groups=8, train_steps=10, steps=3, **kw).eval()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sr3_maps_lr_to_sr_and_a_seed_fixes_the_result(sampler):
    net, lr = tiny(sampler=sampler), torch.rand(2, 1, 8, 12)
    with torch.inference_mode():
        runs = [net(lr, torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert runs[0].shape == (2, 1, 32, 48) and 0 <= runs[0].min() and runs[0].max() <= 1
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # the sample is a residual over bicubic: the SR stays near the upsampled LR (untrained, scale 0.1)
    assert (runs[0] - net.condition(lr).clamp(0, 1)).abs().mean() < 0.5


def test_sr3_tiles_blend_and_reproduce_with_the_same_seed():
    net, lr = tiny(), torch.rand(1, 1, 40, 40)
    inferer = SRInferer(4, tile_size=16, halo=4, merge="blend", seed=3)
    with torch.inference_mode():
        a, b = inferer(lr, net), inferer(lr, net)
    assert a.shape == (1, 1, 160, 160) and torch.equal(a, b)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_samplers_take_the_steps_asked(name, steps):
    timesteps = make_sampler(name, steps, train_steps=10).timesteps.tolist()
    assert len(set(timesteps)) == steps and timesteps == sorted(timesteps, reverse=True)


#: (sampler, steps, relative error allowed on the spread of the samples): the full chains are exact; few
#: steps shrink the spread (an ODE or a coarse ancestral step averages over what x0 may be), least for the
#: stochastic solver
SPREAD = [(name, 1000, 0.03) for name in SAMPLERS] + [
    ("dpmpp_sde", 20, 0.03), ("dpmpp", 20, 0.1), ("ddim", 20, 0.15), ("ddpm", 20, 0.25),
]  # fmt: skip


@pytest.mark.parametrize("name, steps, tolerance", SPREAD)
def test_samplers_draw_from_the_data_distribution_given_its_ideal_denoiser(name, steps, tolerance):
    """Data x0 ~ N(0, 0.5^2) per pixel has a closed-form ideal noise estimate, E[eps | x_t]; with it, a
    sampler's draws must spread as the data do: a sampler that mis-steps its strides (MONAI's
    DDPMScheduler below 1000 steps: std 0.96) or returns NaN (diffusers' DPM-Solver++ at all 1000 steps
    with its default spacing) fails."""
    spread = 0.5
    sampler = make_sampler(name, steps, train_steps=1000)
    alpha_bar, generator = make_sampler("ddim", 1, 1000).alphas_cumprod, torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 64, 64, generator=generator)
    for t in sampler.timesteps:
        a = alpha_bar[int(t)]
        x, _ = sampler.step((1 - a).sqrt() / (a * spread**2 + 1 - a) * x, int(t), x, generator=generator)
    assert abs(float(x.std()) / spread - 1) <= tolerance and abs(float(x.mean())) < 0.02


@pytest.mark.parametrize(
    "name, steps, message",
    [("euler", 5, "unknown sampler 'euler'"), ("ddim", 0, "from 1 to 10"), ("ddim", 11, "from 1 to 10"),
     ("ddim", 2.5, "whole number"), ("ddim", True, "whole number")],
)  # fmt: skip
def test_bad_sampler_settings_are_refused(name, steps, message):
    with pytest.raises(InputError, match=message):
        make_sampler(name, steps, train_steps=10)
    with pytest.raises(InputError, match=message):  # the method refuses them when it is built
        SR3(channels=(8, 8), norm_num_groups=8, train_steps=10, sampler=name, steps=steps)


def test_sr3_state_dict_is_the_denoiser_and_loads_strictly():
    a, b = tiny(), SR3(channels=(8, 8), norm_num_groups=8, train_steps=10, steps=3).eval()
    assert all(k.startswith("denoiser.") for k in a.state_dict())
    b.load_state_dict(a.state_dict(), strict=True)
    lr = torch.rand(1, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(a(lr, torch.Generator().manual_seed(1)), b(lr, torch.Generator().manual_seed(1)))


#: the noise schedule of ``tiny``
ALPHA_BAR = make_sampler("ddpm", 10, 10).alphas_cumprod


def ideal(prediction: str, noisy: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a perfect denoiser predicts for ``noisy`` made from the clean sample ``x0`` at timesteps ``t``."""
    a = ALPHA_BAR[t].view(-1, 1, 1, 1)
    eps = (noisy - a.sqrt() * x0) / (1 - a).sqrt()
    return {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("residual", [True, False])
def test_an_oracle_denoiser_recovers_the_hr_image_for_every_prediction(prediction, residual):
    """Given the denoiser that knows the HR image, every sampler lands on it: the prediction the network
    declares, the sampler's reading of it and the sample <-> image mapping agree."""
    hr = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    for sampler in SAMPLERS:
        net = tiny(prediction=prediction, residual=residual, sampler=sampler)
        x0 = net.sample_of(hr, net.condition(lr))
        net.denoise = lambda noisy, condition, t, x0=x0: ideal(prediction, noisy, x0, t)
        with torch.inference_mode():
            sr = net(lr, torch.Generator().manual_seed(0))
        assert torch.allclose(sr, hr, atol=1e-3), (sampler, (sr - hr).abs().max())


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_the_training_target_is_what_the_denoiser_predicts(prediction):
    from monai_sr_bundle.training.diffusion import DiffusionPrepareBatch

    net, hr = tiny(prediction=prediction), torch.rand(2, 1, 16, 16)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    torch.manual_seed(1)
    noisy, target, _, kwargs = DiffusionPrepareBatch(net)({"image": lr, "label": hr})
    want = ideal(prediction, noisy, net.sample_of(hr, kwargs["condition"]), kwargs["timesteps"])
    assert target.target.shape == (2, 1, 16, 16) and torch.allclose(target.target, want, atol=1e-4)


def test_an_unknown_prediction_is_refused():
    with pytest.raises(InputError, match="unknown prediction 'x0'"):
        tiny(prediction="x0")
