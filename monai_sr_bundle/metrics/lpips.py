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

import numpy as np
import torch
import torch.nn as nn
from monai.metrics.regression import RegressionMetric
from monai.utils import MetricReduction

from ..data.paths import shared_data_dir
from ..errors import InputError
from .checks import CheckedInputsMixin

__all__ = ["LPIPS", "LPIPSMetric", "load_lpips", "default_lpips_weights_path", "DATA_ENV_VAR"]

DATA_ENV_VAR = "MONAI_SR_DATA"
_WEIGHT_FILES = {"alex": "lpips_alex_full_v0.1.npz", "vgg": "lpips_vgg16_full_v0.1.npz"}

# (layer kind, args) in torchvision's ``features`` order, so the archive's ``features.{i}`` keys line up.
# Each config lists (out_channels, kernel, stride, padding) for convs and "M"/(kernel, stride) for max pools.
# fmt: off
_ALEX = [(64, 11, 4, 2), "R", ("M", 3, 2), (192, 5, 1, 2), "R", ("M", 3, 2), (384, 3, 1, 1), "R",
         (256, 3, 1, 1), "R", (256, 3, 1, 1), "R"]
_VGG16 = [(64, 3, 1, 1), "R", (64, 3, 1, 1), "R", ("M", 2, 2),
          (128, 3, 1, 1), "R", (128, 3, 1, 1), "R", ("M", 2, 2),
          (256, 3, 1, 1), "R", (256, 3, 1, 1), "R", (256, 3, 1, 1), "R", ("M", 2, 2),
          (512, 3, 1, 1), "R", (512, 3, 1, 1), "R", (512, 3, 1, 1), "R", ("M", 2, 2),
          (512, 3, 1, 1), "R", (512, 3, 1, 1), "R", (512, 3, 1, 1), "R"]
# fmt: on
# LPIPS reads the ReLU outputs that end these ``features`` index ranges (exclusive ends)
_TAPS = {"alex": (2, 5, 8, 10, 12), "vgg": (4, 9, 16, 23, 30)}
# smallest input side that leaves every tapped feature map non-empty
_MIN_SIZE = {"alex": 31, "vgg": 16}
# LPIPS's input normalisation, applied to images in [-1, 1]
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def default_lpips_weights_path(net: str = "alex") -> Path:
    """Where the LPIPS weights are looked for: ``$MONAI_SR_DATA/weights/<file>``, where ``MONAI_SR_DATA``
    defaults to ``<repo>/../shared/data``."""
    return shared_data_dir() / "weights" / _WEIGHT_FILES[_check_net(net)]


def _check_net(net: str) -> str:
    if net not in _WEIGHT_FILES:
        raise ValueError(f"LPIPS net must be one of {sorted(_WEIGHT_FILES)}, got {net!r}.")
    return net


def _build_features(config: list) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in config:
        if item == "R":
            layers.append(nn.ReLU(inplace=False))
        elif item[0] == "M":
            layers.append(nn.MaxPool2d(kernel_size=item[1], stride=item[2]))
        else:
            out_ch, k, s, p = item
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=k, stride=s, padding=p))
            in_ch = out_ch
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between two image batches, per image (lower is better; 0 for identical images).

    Both images are scaled to [-1, 1], normalised with LPIPS's per-channel shift and scale, passed through
    the backbone; at five ReLU outputs the features are unit-normalised over channels, their squared
    difference is weighted per channel by the learned linear layer, averaged over space, and the five
    layers' values are summed.

    Args:
        net: ``"alex"`` (AlexNet, the LPIPS default) or ``"vgg"`` (VGG16).
        weights_path: the ``.npz`` archive; default :func:`default_lpips_weights_path`.

    Inputs are (B, C, X, Y) in [0, 1] with C = 1 (repeated to RGB) or C = 3 (RGB), at least 31 px per side
    for AlexNet and 16 for VGG16. The parameters are frozen (``requires_grad=False``); gradients still flow
    to the inputs, so the module can serve as a perceptual loss.

    Raises:
        InputError: when the weights file is missing or unreadable.
    """

    def __init__(self, net: str = "alex", weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.net = _check_net(net)
        self.min_size = _MIN_SIZE[net]
        self.features = _build_features(_ALEX if net == "alex" else _VGG16)
        self.taps = _TAPS[net]
        channels = [self.features[end - 2].out_channels for end in self.taps]  # conv just before each tap's ReLU
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, kernel_size=1, bias=False) for ch in channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self._load(Path(weights_path) if weights_path is not None else default_lpips_weights_path(net))
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(
                f"LPIPS weights file {path} does not exist; pass weights_path= or set {DATA_ENV_VAR} to the "
                f"shared data folder that holds weights/{path.name}."
            )
        try:
            with np.load(path) as archive:
                arrays = {k: torch.from_numpy(np.array(archive[k], dtype=np.float32)) for k in archive.files}
            state = {k: v for k, v in arrays.items() if k.startswith("features.")}
            for i in range(len(self.lins)):
                state[f"lins.{i}.weight"] = arrays[f"lin{i}.model.1.weight"]
            self.load_state_dict(state, strict=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise InputError(f"LPIPS weights file {path} is not a valid LPIPS {self.net} v0.1 archive ({e}).") from e

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
        start = 0
        for end, lin in zip(self.taps, self.lins):
            for layer in self.features[start:end]:
                h = layer(h)
            start = end
            unit = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
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
    path = Path(weights_path) if weights_path is not None else default_lpips_weights_path(net)
    return _cached_lpips(_check_net(net), str(path.resolve()))


class LPIPSMetric(CheckedInputsMixin, RegressionMetric):
    """LPIPS distance per image, cumulative over batches (lower is better); see :class:`LPIPS`.

    Inputs are in the library's layout (B, C, X, Y) (first spatial axis = image columns, as MONAI loads 2D
    images); they are transposed to the rows-first layout the LPIPS network was trained on, because LPIPS
    is not symmetric in the axes. The network is loaded once per process (:func:`load_lpips`).

    Args:
        net: ``"alex"`` (default, LPIPS v0.1) or ``"vgg"``.
        weights_path: the ``.npz`` archive; default ``$MONAI_SR_DATA/weights/...`` (see
            :func:`default_lpips_weights_path`).
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
