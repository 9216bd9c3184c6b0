"""The metric catalogue: each score's name, label, unit, direction and digits, read by the evaluation's tables,
the HTML report, the benchmarks and the model card, so that a metric is named and written one way everywhere;
and how it is computed, which the evaluation reads, so that a metric is added in one place."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .inbox import InBoxMetric
from .lpips import LPIPSMetric
from .regression import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric, masked_psnr
from .uqi import UQIMetric

#: one image's score: (SR, HR (1, C, X, Y), its abnormality boxes (N, 4), the region artifacts were drawn in or
#: None) -> the value, or None where it does not apply
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], "torch.Tensor | None"]


@dataclass(frozen=True)
class MetricInfo:
    label: str
    unit: str
    higher_is_better: bool
    digits: int
    #: the scorer of one evaluation, built once from its options (``lpips_weights``: a network loaded once)
    build: Callable[[dict], Scorer]
    #: computed by a trained network (LPIPS): an evaluation may leave it out
    learned: bool = False

    @property
    def heading(self) -> str:
        """The table heading: label, unit and direction (``PSNR (dB) ↑``)."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.label}{unit} {'↑' if self.higher_is_better else '↓'}"

    def value(self, mean: float, sd: float = math.nan) -> str:
        """A table cell: mean ± sd at this metric's digits, the mean alone where there is no spread (one value),
        "n/a" for none."""
        if math.isnan(mean):
            return "n/a"
        return f"{mean:.{self.digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{self.digits}f}")


def _whole(metric_class: type) -> Callable[[dict], Scorer]:
    def build(options: dict) -> Scorer:
        metric = metric_class()
        return lambda sr, hr, boxes, region: metric(sr, hr)

    return build


def _in_boxes(metric_class: type) -> Callable[[dict], Scorer]:
    def build(options: dict) -> Scorer:
        metric = InBoxMetric(metric_class())
        return lambda sr, hr, boxes, region: metric(sr, hr, boxes=[boxes])

    return build


def _ms_ssim(options: dict) -> Scorer:
    metric = MultiScaleSSIMMetric()
    nan = torch.tensor(float("nan"))  # too small for 5 scales: reported as missing, not as a score
    return lambda sr, hr, boxes, region: nan if min(sr.shape[-2:]) < metric.min_size else metric(sr, hr)


def _lpips(options: dict) -> Scorer:
    metric = LPIPSMetric(weights_path=options.get("lpips_weights"))
    return lambda sr, hr, boxes, region: metric(sr, hr)


def _artifact_psnr(options: dict) -> Scorer:
    # where artifacts were drawn: whether a method removed them or enlarged them
    return lambda sr, hr, boxes, region: None if region is None else masked_psnr(sr, hr, region)


#: every score an evaluation writes (``metrics.csv`` columns), in table order
CATALOGUE = {
    "psnr": MetricInfo("PSNR", "dB", True, 2, _whole(PSNRMetric)),
    "ssim": MetricInfo("SSIM", "", True, 4, _whole(SSIMMetric)),
    "ms_ssim": MetricInfo("MS-SSIM", "", True, 4, _ms_ssim),
    "uqi": MetricInfo("UQI", "", True, 4, _whole(UQIMetric)),
    "lpips": MetricInfo("LPIPS", "", False, 4, _lpips, learned=True),
    "inbox_psnr": MetricInfo("in-box PSNR", "dB", True, 2, _in_boxes(PSNRMetric)),
    "inbox_ssim": MetricInfo("in-box SSIM", "", True, 4, _in_boxes(SSIMMetric)),
    "artifact_psnr": MetricInfo("artifact-region PSNR", "dB", True, 2, _artifact_psnr),
}


def scorers(learned: bool = True, lpips_weights: str | None = None) -> dict[str, Scorer]:
    """The scorers of one evaluation, in table order; ``learned``: with the metrics computed by a network."""
    options = {"lpips_weights": lpips_weights}
    return {name: info.build(options) for name, info in CATALOGUE.items() if learned or not info.learned}
