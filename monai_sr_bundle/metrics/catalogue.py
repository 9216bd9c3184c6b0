"""The metric catalogue: each score's name, label, unit, direction and digits, read by the evaluation's tables,
the HTML report, the benchmarks and the model card, so that a metric is named and written one way everywhere."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    label: str
    unit: str
    higher_is_better: bool
    digits: int

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


#: every score an evaluation writes (``metrics.csv`` columns), in table order
CATALOGUE = {
    "psnr": MetricInfo("PSNR", "dB", True, 2),
    "ssim": MetricInfo("SSIM", "", True, 4),
    "ms_ssim": MetricInfo("MS-SSIM", "", True, 4),
    "uqi": MetricInfo("UQI", "", True, 4),
    "lpips": MetricInfo("LPIPS", "", False, 4),
    "inbox_psnr": MetricInfo("in-box PSNR", "dB", True, 2),
    "inbox_ssim": MetricInfo("in-box SSIM", "", True, 4),
    "artifact_psnr": MetricInfo("artifact-region PSNR", "dB", True, 2),
}
