"""Tests for monai_sr_bundle.metrics: every metric against an independent computation."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.imagenet import default_weights_path
from monai_sr_bundle.metrics import (
    DISPLAY_VMAX,
    LPIPS,
    InBoxMetric,
    LPIPSMetric,
    MultiScaleSSIMMetric,
    PSNRMetric,
    SSIMMetric,
    UQIMetric,
    bootstrap_interval,
    box_crop_slices,
    error_map,
    error_map_to_display,
    load_lpips,
    paired_t_test,
    summarize,
)
from monai_sr_bundle.metrics.summary import student_t_p

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MONAI_SR_DATA") or REPO.parent / "shared" / "data")
WEIGHTS = DATA_ROOT / "weights"
HAS_ALEX = (WEIGHTS / "lpips_alex_full_v0.1.npz").is_file()
HAS_VGG = (WEIGHTS / "lpips_vgg16_full_v0.1.npz").is_file()
REF_IMGS = WEIGHTS / "lpips_reference_imgs"
_WHY = f"LPIPS {{}} weights not found under {WEIGHTS} (shared data folder absent; set MONAI_SR_DATA)"
needs_alex = pytest.mark.skipif(not HAS_ALEX, reason=_WHY.format("AlexNet"))
needs_vgg = pytest.mark.skipif(not HAS_VGG, reason=_WHY.format("VGG16"))


def make_pair(batch: int = 2, size: int = 64, seed: int = 0, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth 'anatomy-like' references in [0, 1] and degraded predictions (blur + noise), (B, 1, X, Y)."""
    rng = np.random.default_rng(seed)
    hr, sr = [], []
    for _ in range(batch):
        base = gaussian_filter(rng.random((size, size)), sigma=3)
        base = (base - base.min()) / (base.max() - base.min())
        ramp = np.linspace(0, 1, size)[:, None] * np.linspace(0.3, 1, size)[None, :]
        h = np.clip(0.6 * base + 0.4 * ramp, 0, 1)
        s = np.clip(gaussian_filter(h, sigma=0.8) + noise * rng.standard_normal(h.shape), 0, 1)
        hr.append(h)
        sr.append(s)
    as_t = lambda a: torch.from_numpy(np.stack(a)[:, None].astype(np.float32))  # noqa: E731
    return as_t(sr), as_t(hr)


def np_uqi(x: np.ndarray, y: np.ndarray, win: int = 8) -> float:
    """UQI straight from Wang & Bovik (2002): sample statistics per 8x8 window, mean of Q over windows."""
    wx = sliding_window_view(x.astype(np.float64), (win, win)).reshape(-1, win * win)
    wy = sliding_window_view(y.astype(np.float64), (win, win)).reshape(-1, win * win)
    mx, my = wx.mean(1), wy.mean(1)
    vx, vy = wx.var(1, ddof=1), wy.var(1, ddof=1)
    cxy = ((wx - mx[:, None]) * (wy - my[:, None])).sum(1) / (win * win - 1)
    return float(np.mean(4 * cxy * mx * my / ((vx + vy) * (mx**2 + my**2))))


# ---------------------------------------------------------------- PSNR / SSIM / MS-SSIM (MONAI's, checked)


def test_psnr_matches_skimage_and_accumulates():
    metric = PSNRMetric()
    sr1, hr1 = make_pair(2, 48, seed=1)
    sr2, hr2 = make_pair(1, 48, seed=2, noise=0.02)
    metric(sr1, hr1)
    metric(sr2, hr2)
    per_image = metric.aggregate(reduction="none").flatten().numpy()
    expected = [
        peak_signal_noise_ratio(h[0].numpy().astype(np.float64), s[0].numpy().astype(np.float64), data_range=1.0)
        for s, h in zip(torch.cat([sr1, sr2]), torch.cat([hr1, hr2]))
    ]
    np.testing.assert_allclose(per_image, expected, rtol=1e-5)
    assert metric.aggregate().item() == pytest.approx(np.mean(expected), rel=1e-5)
    metric.reset()
    metric(sr2, hr2)
    assert metric.aggregate().item() == pytest.approx(expected[2], rel=1e-5)


def test_psnr_identical_is_inf():
    _, hr = make_pair(1, 16)
    assert torch.isinf(PSNRMetric()(hr, hr)).all()


def test_ssim_matches_skimage_gaussian():
    sr, hr = make_pair(2, 64, seed=3)
    values = SSIMMetric()(sr, hr).flatten().numpy()
    expected = [
        structural_similarity(
            h[0].numpy().astype(np.float64),
            s[0].numpy().astype(np.float64),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for s, h in zip(sr, hr)
    ]
    # same window, same valid region (skimage crops half a window): only float32 vs float64 differs
    np.testing.assert_allclose(values, expected, atol=1e-4)


@pytest.mark.parametrize("size", [256, 512])
def test_ms_ssim_matches_pytorch_msssim(size):
    from pytorch_msssim import ms_ssim

    sr, hr = make_pair(1, size, seed=4)
    value = MultiScaleSSIMMetric()(sr, hr)
    expected = ms_ssim(sr.double(), hr.double(), data_range=1.0, size_average=False)
    np.testing.assert_allclose(value.flatten().numpy(), expected.numpy(), atol=1e-4)


def test_ms_ssim_too_small_is_a_clear_error():
    sr, hr = make_pair(1, 128)
    with pytest.raises(ValueError, match="at least 176 px"):
        MultiScaleSSIMMetric()(sr, hr)
    # fewer scales fit: 3 scales need 11 * 4 = 44 px
    assert MultiScaleSSIMMetric(weights=(0.3, 0.3, 0.4)).min_size == 44
    assert torch.isfinite(MultiScaleSSIMMetric(weights=(0.3, 0.3, 0.4))(sr, hr)).all()


def test_ssim_too_small_is_a_clear_error():
    sr, hr = make_pair(1, 8)
    with pytest.raises(ValueError, match="at least 11 px"):
        SSIMMetric()(sr, hr)


# ---------------------------------------------------------------- UQI


def test_uqi_matches_numpy_paper_formula():
    sr, hr = make_pair(2, 40, seed=5)
    metric = UQIMetric()
    values = metric(sr, hr).flatten().numpy()
    expected = [np_uqi(s[0].numpy(), h[0].numpy()) for s, h in zip(sr, hr)]
    np.testing.assert_allclose(values, expected, atol=1e-5)
    assert metric.aggregate().item() == pytest.approx(np.mean(expected), abs=1e-5)


def test_uqi_identical_is_one_and_flat_windows_are_defined():
    _, hr = make_pair(1, 24)
    assert UQIMetric()(hr, hr).item() == pytest.approx(1.0, abs=1e-6)
    zeros = torch.zeros(1, 1, 16, 16)
    assert UQIMetric()(zeros, zeros).item() == 1.0  # flat and dark: identical
    # both flat, different levels: luminance term 2 * 0.25 * 0.5 / (0.25^2 + 0.5^2) = 0.8
    assert UQIMetric()(torch.full((1, 1, 16, 16), 0.25), torch.full((1, 1, 16, 16), 0.5)).item() == pytest.approx(0.8)


# ---------------------------------------------------------------- LPIPS


def _load_ref(name: str) -> torch.Tensor:
    from PIL import Image

    rgb = np.asarray(Image.open(REF_IMGS / f"{name}.png").convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 1, 0)[None]  # library layout (1, 3, cols, rows) in [0, 1]


@needs_alex
def test_lpips_alex_known_answer():
    ref, p0, p1 = (_load_ref(n) for n in ("ex_ref", "ex_p0", "ex_p1"))
    metric = LPIPSMetric()
    d = metric(torch.cat([ref, ref]), torch.cat([p0, p1])).flatten()
    assert round(d[0].item(), 3) == 0.722
    assert round(d[1].item(), 3) == 0.138
    assert metric.aggregate().item() == pytest.approx((d[0].item() + d[1].item()) / 2, rel=1e-6)
    # the bare network takes the usual rows-first layout
    rows_first = load_lpips()(ref.transpose(-1, -2), p0.transpose(-1, -2))
    assert round(rows_first.item(), 3) == 0.722


@needs_alex
def test_lpips_grayscale_cache_and_gradients():
    assert load_lpips() is load_lpips("alex", default_weights_path("alex"))
    sr, hr = make_pair(2, 48, seed=6)
    net = load_lpips()
    assert net(hr, hr).abs().max().item() < 1e-6
    values = LPIPSMetric()(sr, hr)
    assert values.shape == (2, 1) and (values > 0).all()
    # a grey image equals its RGB repetition
    rgb = net(sr.repeat(1, 3, 1, 1), hr.repeat(1, 3, 1, 1))
    np.testing.assert_allclose(net(sr, hr).numpy(), rgb.numpy(), atol=1e-6)
    # usable as a loss: gradients reach the input, not the frozen parameters
    x = sr.clone().requires_grad_(True)
    net(x, hr).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="at least 31 px"):
        net(sr[..., :30, :30], hr[..., :30, :30])


@needs_vgg
def test_lpips_vgg_runs():
    sr, hr = make_pair(1, 32, seed=7)
    values = LPIPSMetric(net="vgg")(sr, hr)
    assert values.shape == (1, 1) and 0 < values.item() < 1


def test_lpips_missing_weights_is_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_SR_DATA", str(tmp_path))
    expected = tmp_path / "weights" / "lpips_alex_full_v0.1.npz"
    assert default_weights_path() == expected
    with pytest.raises(InputError, match="MONAI_SR_DATA") as info:
        LPIPSMetric()
    assert str(expected) in str(info.value)
    with pytest.raises(InputError, match="nowhere.npz"):
        LPIPS(weights_path=tmp_path / "nowhere.npz")
    with pytest.raises(ValueError, match="must be one of"):
        LPIPS(net="squeeze")


# ---------------------------------------------------------------- in-box metrics


def test_inbox_psnr_and_ssim_match_crops_by_hand():
    sr, hr = make_pair(3, 64, seed=8)
    boxes = [
        torch.tensor([[5, 10, 30, 40], [20, 2, 60, 22]]),  # two boxes, both large enough for SSIM
        torch.zeros((0, 4)),  # no box: NaN, excluded
        [[33.4, 12.6, 50.2, 44.9]],  # float coordinates widen to whole pixels: [33:51, 12:45]
    ]
    psnr = InBoxMetric(PSNRMetric())
    ssim = InBoxMetric(SSIMMetric())
    p = psnr(sr, hr, boxes=boxes).flatten().numpy()
    s = ssim(sr, hr, boxes=boxes).flatten().numpy()

    def by_hand(i, x0, y0, x1, y1):
        a, b = sr[i, 0, x0:x1, y0:y1].double().numpy(), hr[i, 0, x0:x1, y0:y1].double().numpy()
        return (
            peak_signal_noise_ratio(b, a, data_range=1.0),
            structural_similarity(b, a, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
        )

    b0, b1, b2 = by_hand(0, 5, 10, 30, 40), by_hand(0, 20, 2, 60, 22), by_hand(2, 33, 12, 51, 45)
    np.testing.assert_allclose(p[[0, 2]], [(b0[0] + b1[0]) / 2, b2[0]], rtol=1e-5)
    np.testing.assert_allclose(s[[0, 2]], [(b0[1] + b1[1]) / 2, b2[1]], atol=1e-4)
    assert np.isnan(p[1]) and np.isnan(s[1])
    assert psnr.aggregate().item() == pytest.approx(np.mean(p[[0, 2]]), rel=1e-5)
    assert summarize(psnr.aggregate(reduction="none"))[0] == pytest.approx(np.mean(p[[0, 2]]), rel=1e-5)


def test_inbox_small_boxes_expand_or_skip():
    sr, hr = make_pair(1, 32, seed=9)
    tiny = [torch.tensor([[0, 20, 4, 24]])]  # 4x4 box at the top edge
    # expanded to 11x11 about its centre (2, 22), shifted inside the image: [0:11, 16:27]
    assert box_crop_slices([0, 20, 4, 24], (32, 32), min_size=11) == (slice(0, 11), slice(16, 27))
    expected = SSIMMetric()(sr[..., 0:11, 16:27], hr[..., 0:11, 16:27]).item()
    assert InBoxMetric(SSIMMetric())(sr, hr, boxes=tiny).item() == pytest.approx(expected, abs=1e-6)
    skipping = InBoxMetric(SSIMMetric(), small_box="skip")
    assert torch.isnan(skipping(sr, hr, boxes=tiny)).all()
    assert np.isnan(skipping.aggregate().item())  # no image with a usable box: NaN, not MONAI's 0


def test_inbox_uqi_lists_and_wrapped_buffer_untouched():
    sr, hr = make_pair(2, 32, seed=10)
    uqi = UQIMetric()
    in_box = InBoxMetric(uqi)
    boxes = [torch.tensor([[2, 3, 20, 25]]), torch.tensor([[10, 10, 30, 30]])]
    batch = in_box(sr, hr, boxes=boxes)
    listed = in_box([sr[0], sr[1]], [hr[0], hr[1]], boxes=boxes)
    np.testing.assert_allclose(batch.numpy(), listed.numpy())
    by_hand = np_uqi(sr[0, 0, 2:20, 3:25].numpy(), hr[0, 0, 2:20, 3:25].numpy())
    assert batch[0].item() == pytest.approx(by_hand, abs=1e-5)
    assert uqi.get_buffer() is None
    assert len(in_box) == 4


@needs_alex
def test_inbox_lpips_matches_crop():
    sr, hr = make_pair(1, 64, seed=11)
    value = InBoxMetric(LPIPSMetric())(sr, hr, boxes=[torch.tensor([[10, 10, 50, 45]])])
    crop_sr, crop_hr = (t[..., 10:50, 10:45].transpose(-1, -2) for t in (sr, hr))  # LPIPSMetric transposes
    assert value.item() == pytest.approx(load_lpips()(crop_sr, crop_hr).item(), abs=1e-6)


def test_inbox_bad_boxes():
    sr, hr = make_pair(2, 32)
    metric = InBoxMetric(PSNRMetric())
    with pytest.raises(ValueError, match="one \\(N_i, 4\\) entry per image"):
        metric(sr, hr, boxes=[torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="empty or outside"):
        metric(sr, hr, boxes=[torch.tensor([[40, 0, 50, 10]]), None])
    with pytest.raises(ValueError, match="empty or outside"):
        metric(sr, hr, boxes=[torch.tensor([[5, 5, 5, 10]]), None])
    with pytest.raises(ValueError, match="small_box"):
        InBoxMetric(PSNRMetric(), small_box="pad")


# ---------------------------------------------------------------- error maps and summaries


def test_error_maps_and_display_scale():
    hr = torch.zeros(2, 1, 4, 5)
    sr = hr.clone()
    sr[0, 0, 1, 2] = 0.05
    sr[1, 0, 3, 4] = -0.3
    abs_map = error_map(sr, hr)
    sq_map = error_map(sr, hr, kind="squared")
    assert abs_map.shape == (2, 1, 4, 5)
    assert abs_map[0, 0, 1, 2].item() == pytest.approx(0.05) and abs_map[1, 0, 3, 4].item() == pytest.approx(0.3)
    assert sq_map[0, 0, 1, 2].item() == pytest.approx(0.0025)
    shown = error_map_to_display(abs_map)
    assert shown[0, 0, 1, 2].item() == pytest.approx(0.05 / DISPLAY_VMAX["abs"])  # 0.5: fixed scale, not per image
    assert shown[1, 0, 3, 4].item() == 1.0 and shown.min().item() == 0.0  # clipped at vmax
    assert error_map_to_display(sq_map, kind="squared")[0, 0, 1, 2].item() == pytest.approx(0.25)
    # multi-channel errors are averaged over channels
    assert error_map(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="kind"):
        error_map(sr, hr, kind="relative")


def test_summarize_ignores_nans():
    values = torch.tensor([[1.0], [float("nan")], [3.0], [5.0]])
    mean, sd = summarize(values)
    assert mean == pytest.approx(3.0) and sd == pytest.approx(np.std([1, 3, 5], ddof=1))
    assert all(np.isnan(summarize([float("nan")])))
    m1, sd1 = summarize([2.0])
    assert m1 == 2.0 and np.isnan(sd1)


def test_bootstrap_interval_of_the_mean():
    """A normal sample: the 68% interval is close to mean ± standard error; it is seeded, and NaNs are dropped."""
    values = np.random.default_rng(1).normal(30.0, 2.0, 400)
    lo, hi = bootstrap_interval(np.append(values, np.nan))
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert lo < values.mean() < hi and (hi - lo) / 2 == pytest.approx(se, rel=0.15)
    assert bootstrap_interval(values) == bootstrap_interval(values) and bootstrap_interval([5.0]) == (5.0, 5.0)
    assert all(np.isnan(bootstrap_interval([float("nan")])))


def test_paired_t_test_known_answer():
    """Differences 1, 2, 3, 5: t = 2.75 / (s / 2) with 3 degrees of freedom, whose two-sided p has a closed
    form (Student's t with 3 df); pairs with a NaN on either side are dropped."""
    a, b = [1.0, 3.0, 4.0, 9.0, float("nan"), 2.0], [0.0, 1.0, 1.0, 4.0, 1.0, float("nan")]
    diff, p, n = paired_t_test(a, b)
    s = math.sqrt(sum((d - 2.75) ** 2 for d in (1, 2, 3, 5)) / 3)
    x = 2.75 / (s / 2) / math.sqrt(3)
    expected = 1 - 2 / math.pi * (math.atan(x) + x / (1 + x * x))
    assert (diff, n) == (2.75, 4) and p == pytest.approx(expected, rel=1e-9) and p == pytest.approx(0.0486, abs=1e-4)
    assert math.isnan(paired_t_test([1.0], [0.0])[1]) and paired_t_test([1.0], [0.0])[2] == 1
    with pytest.raises(ValueError, match="as many values"):
        paired_t_test([1.0, 2.0], [1.0])
    assert paired_t_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])[1:] == (0.0, 3)  # one difference, not 0: certain
    assert math.isnan(paired_t_test([1.0, 2.0], [1.0, 2.0])[1])  # no difference at all: no test


def test_student_t_p_matches_closed_forms_and_scipy():
    """The package's own Student's t (a user's install has no SciPy): the closed forms at 1 and 2 degrees of
    freedom, SciPy's survival function at the others, from t = 0 to far in the tail."""
    from scipy.stats import t as student_t

    for t in (0.0, 1e-8, 0.3, 1.0, 2.5, 40.0, 1e6):
        assert student_t_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9, abs=1e-12)
        assert student_t_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9, abs=1e-12)
        for df in (3, 7, 30, 577, 10_000):
            assert student_t_p(t, df) == pytest.approx(2 * student_t.sf(t, df), rel=1e-8, abs=1e-300), (t, df)
    assert student_t_p(float("inf"), 5) == 0 and student_t_p(-2.0, 4) == student_t_p(2.0, 4)


# ---------------------------------------------------------------- bad input


METRICS = [PSNRMetric, SSIMMetric, MultiScaleSSIMMetric, UQIMetric]


@pytest.mark.parametrize("metric_cls", METRICS)
def test_mismatched_shapes_are_clear_errors(metric_cls):
    with pytest.raises(ValueError, match="same shape"):
        metric_cls()(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 30))
    with pytest.raises(ValueError, match=r"\(B, C, X, Y\)"):
        metric_cls()(torch.rand(1, 32, 32), torch.rand(1, 32, 32))


@pytest.mark.parametrize("metric_cls", METRICS)
def test_nan_input_is_a_clear_error(metric_cls):
    sr, hr = make_pair(1, 32)
    sr[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        metric_cls()(sr, hr)
    with pytest.raises(ValueError, match="NaN or infinite"):
        error_map(sr, hr)


@needs_alex
def test_lpips_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        LPIPSMetric()(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 40, 32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        LPIPSMetric()(torch.full((1, 1, 32, 32), float("nan")), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        LPIPSMetric()(torch.rand(1, 2, 32, 32), torch.rand(1, 2, 32, 32))


def test_metatensor_inputs():
    sr, hr = make_pair(1, 32, seed=12)
    plain = PSNRMetric()(sr, hr)
    meta = PSNRMetric()(MetaTensor(sr), MetaTensor(hr))
    assert type(meta) is torch.Tensor
    np.testing.assert_allclose(meta.numpy(), plain.numpy())


def test_masked_psnr_scores_only_the_masked_pixels():
    from monai_sr_bundle.metrics import masked_psnr

    y, y_pred = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    y_pred[..., :2, :2] = 0.1  # error 0.1 on the 4 masked pixels, none elsewhere
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:2, :2] = True
    assert masked_psnr(y_pred, y, mask).item() == pytest.approx(20.0, abs=1e-4)
    assert math.isnan(masked_psnr(y_pred, y, torch.zeros(8, 8, dtype=torch.bool)).item())  # nothing to score
    with pytest.raises(ValueError, match="same shape"):  # the metrics' one input check
        masked_psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4), mask)


def test_the_catalogue_names_and_writes_every_score_one_way():
    """Issue 55: one entry per score evaluate writes (the names of its metrics.csv columns), each with its
    heading and cell as every table shows them."""
    from monai_sr_bundle.metrics.catalogue import CATALOGUE, scorers

    assert [*scorers(learned=False)] == [m for m in CATALOGUE if m != "lpips"]
    assert CATALOGUE["psnr"].heading == "PSNR (dB) ↑" and CATALOGUE["lpips"].heading == "LPIPS ↓"
    assert CATALOGUE["psnr"].value(30.123, 1.234) == "30.12 ± 1.23" and CATALOGUE["ssim"].value(0.5) == "0.5000"
    assert CATALOGUE["inbox_psnr"].value(math.nan, math.nan) == "n/a"
