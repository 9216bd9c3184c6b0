"""LPIPS, the learned perceptual image patch similarity, without torchvision.

Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018.
The backbone (ImageNet AlexNet or VGG16 convolutional layers) is built here from plain ``torch.nn`` and
loaded, with the v0.1 linear layers, from the numpy archives in the shared data folder
(``weights/lpips_{alex,vgg16}_full_v0.1.npz``, described in ``../shared/data/README.md``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn as nn
from monai.metrics.regression import RegressionMetric
from monai.utils import MetricReduction

from monai_sr_bundle.imagenet import ImageNetFeatures, check_net, default_weights_path, read_archive

from .checks import CheckedInputsMixin

__all__ = ["LPIPS", "LPIPSMetric", "load_lpips"]

# the activations LPIPS compares
_TAPS = {
    "alex": ["relu1", "relu2", "relu3", "relu4", "relu5"],
    "vgg": ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"],
}
# smallest input side that leaves every tapped feature map non-empty
_MIN_SIZE = {"alex": 31, "vgg": 16}
# LPIPS's input normalisation, applied to images in [-1, 1]
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between two image batches, per image (lower is better; 0 for identical images).

    Both images are scaled to [-1, 1], normalised with LPIPS's per-channel shift and scale, passed through
    the backbone; at five ReLU outputs the features are unit-normalised over channels, their squared
    difference is weighted per channel by the learned linear layer, averaged over space, and the five
    layers' values are summed.

    Args:
        net: ``"alex"`` (AlexNet, the LPIPS default) or ``"vgg"`` (VGG16).
        weights_path: the ``.npz`` archive; default :func:`~monai_sr_bundle.imagenet.default_weights_path`.

    Inputs are (B, C, X, Y) in [0, 1] with C = 1 (repeated to RGB) or C = 3 (RGB), at least 31 px per side
    for AlexNet and 16 for VGG16. The parameters are frozen (``requires_grad=False``); gradients still flow
    to the inputs, so the module can serve as a perceptual loss.

    Raises:
        InputError: when the weights file is missing or unreadable.
    """

    def __init__(self, net: str = "alex", weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.net = check_net(net)
        self.min_size = _MIN_SIZE[net]
        path = Path(weights_path) if weights_path is not None else default_weights_path(net)
        self.backbone = ImageNetFeatures(net, path)
        self.taps = _TAPS[net]
        lins = read_archive(path, [f"lin{i}.model.1.weight" for i in range(len(self.taps))], "LPIPS")
        self.lins = nn.ModuleList(nn.Conv2d(self.backbone.channels(t), 1, kernel_size=1, bias=False) for t in self.taps)
        for i, lin in enumerate(self.lins):
            lin.weight.data.copy_(lins[f"lin{i}.model.1.weight"])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the per-image distance, shape (B, 1)."""
        if y_pred.shape != y.shape or y_pred.ndim != 4 or y_pred.shape[1] not in (1, 3):
            raise ValueError(
                "LPIPS expects two batches of the same shape (B, C, X, Y) with C = 1 or 3, "
                f"got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        if min(y_pred.shape[2:]) < self.min_size:
            raise ValueError(
                f"LPIPS ({self.net}) needs images of at least {self.min_size} px per side, "
                f"got {tuple(y_pred.shape[2:])}."
            )
        n = y_pred.shape[0]
        both = torch.cat([y_pred, y], dim=0).to(self.shift.dtype)
        if both.shape[1] == 1:
            both = both.expand(-1, 3, -1, -1)
        h = ((both * 2 - 1) - self.shift) / self.scale
        total = both.new_zeros(n, 1)
        for features, lin in zip(self.backbone(h, self.taps), self.lins):
            unit = features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff = (unit[:n] - unit[n:]).pow(2)
            total = total + lin(diff).mean(dim=(2, 3))
        return total


@functools.lru_cache(maxsize=None)
def _cached_lpips(net: str, path: str) -> LPIPS:
    return LPIPS(net=net, weights_path=path)


def load_lpips(net: str = "alex", weights_path: str | os.PathLike | None = None) -> LPIPS:
    """Return a frozen, eval-mode :class:`LPIPS` network, loaded once per process per (net, weights file).

    The instance is shared: move it between devices if needed, but do not train or modify it.
    """
    path = Path(weights_path) if weights_path is not None else default_weights_path(net)
    return _cached_lpips(check_net(net), str(path.resolve()))


class LPIPSMetric(CheckedInputsMixin, RegressionMetric):
    """LPIPS distance per image, cumulative over batches (lower is better); see :class:`LPIPS`.

    Inputs are in the library's layout (B, C, X, Y) (first spatial axis = image columns, as MONAI loads 2D
    images); they are transposed to the rows-first layout the LPIPS network was trained on, because LPIPS
    is not symmetric in the axes. The network is loaded once per process (:func:`load_lpips`).

    Args:
        net: ``"alex"`` (default, LPIPS v0.1) or ``"vgg"``.
        weights_path: the ``.npz`` archive; default ``$MONAI_SR_DATA/weights/...`` (see
            :func:`~monai_sr_bundle.imagenet.default_weights_path`).
        reduction: MONAI reduction applied by ``aggregate`` (``"none"`` gives per-image values).
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.

    Raises:
        InputError: when the weights file is missing (raised at construction).
    """

    def __init__(
        self,
        net: str = "alex",
        weights_path: str | os.PathLike | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.network = load_lpips(net, weights_path)
        self.min_size = self.network.min_size

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        network = self.network.to(y_pred.device)
        with torch.no_grad():
            return network(y_pred.transpose(-1, -2), y.transpose(-1, -2))
