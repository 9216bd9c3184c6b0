"""Image-quality metrics for super-resolution, MONAI-style (cumulative: call per batch, ``aggregate``,
``reset``). Images are (B, C, X, Y) in [0, 1], 2D."""

from .checks import check_image_pair
from .error_map import DISPLAY_VMAX, error_map, error_map_to_display
from .inbox import InBoxMetric, box_crop_slices
from .lpips import LPIPS, LPIPSMetric, load_lpips
from .regression import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric, masked_psnr
from .summary import bootstrap_interval, paired_t_test, summarize
from .uqi import UQIMetric, compute_uqi

__all__ = [
    "DISPLAY_VMAX",
    "InBoxMetric",
    "LPIPS",
    "LPIPSMetric",
    "MultiScaleSSIMMetric",
    "PSNRMetric",
    "SSIMMetric",
    "UQIMetric",
    "bootstrap_interval",
    "paired_t_test",
    "box_crop_slices",
    "check_image_pair",
    "compute_uqi",
    "error_map",
    "error_map_to_display",
    "load_lpips",
    "masked_psnr",
    "summarize",
]
