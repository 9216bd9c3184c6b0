"""ImageNet feature extractors (AlexNet, VGG16 convolutional layers) in plain ``torch.nn``: the one backbone
of the LPIPS metric (``metrics/lpips.py``) and of the perceptual loss (``losses/perceptual.py``).

torchvision is not a dependency and nothing is downloaded: the ImageNet weights come from the LPIPS v0.1
archives in the shared data folder (``weights/lpips_{alex,vgg16}_full_v0.1.npz``, whose ``features.{i}``
keys follow torchvision's layer order; see ``../shared/data/README.md``). Not an SR network, so not listed
in ``networks/__init__.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monai_sr_bundle.data.paths import shared_data_dir
from monai_sr_bundle.errors import InputError

DATA_ENV_VAR = "MONAI_SR_DATA"
ARCHIVES = {"alex": "lpips_alex_full_v0.1.npz", "vgg": "lpips_vgg16_full_v0.1.npz"}

# torchvision's ``features`` order: (out_channels, kernel, stride, padding) for a conv, "R" for a ReLU,
# ("M", kernel, stride) for a max pool; the names below index this list
# fmt: off
_LAYERS = {
    "alex": [(64, 11, 4, 2), "R", ("M", 3, 2), (192, 5, 1, 2), "R", ("M", 3, 2), (384, 3, 1, 1), "R",
             (256, 3, 1, 1), "R", (256, 3, 1, 1), "R"],
    "vgg": [(64, 3, 1, 1), "R", (64, 3, 1, 1), "R", ("M", 2, 2),
            (128, 3, 1, 1), "R", (128, 3, 1, 1), "R", ("M", 2, 2),
            (256, 3, 1, 1), "R", (256, 3, 1, 1), "R", (256, 3, 1, 1), "R", ("M", 2, 2),
            (512, 3, 1, 1), "R", (512, 3, 1, 1), "R", (512, 3, 1, 1), "R", ("M", 2, 2),
            (512, 3, 1, 1), "R", (512, 3, 1, 1), "R", (512, 3, 1, 1), "R"],
}
# fmt: on


def default_weights_path(net: str = "alex") -> Path:
    """Where the backbone weights are looked for: ``$MONAI_SR_DATA/weights/<archive>``, where
    ``MONAI_SR_DATA`` defaults to ``<repo>/../shared/data``."""
    return shared_data_dir() / "weights" / ARCHIVES[check_net(net)]


def check_net(net: str) -> str:
    if net not in ARCHIVES:
        raise ValueError(f"the ImageNet backbone must be one of {sorted(ARCHIVES)}, got {net!r}.")
    return net


def read_archive(path: Path, keys: list[str], what: str) -> dict[str, torch.Tensor]:
    """The float32 arrays ``keys`` of an ``.npz`` archive; a missing or unreadable file is one sentence that
    says where the weights are expected (they are never downloaded)."""
    if not path.is_file():
        raise InputError(
            f"{what} weights file {path} does not exist; pass weights_path= or set {DATA_ENV_VAR} to the "
            f"shared data folder that holds weights/{path.name}."
        )
    try:
        with np.load(path) as archive:
            return {k: torch.from_numpy(np.array(archive[k], dtype=np.float32)) for k in keys}
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{what} weights file {path} is not a valid LPIPS v0.1 archive ({e}).") from e


def layer_names(net: str) -> list[str]:
    """Names of the layers in order, VGG style: ``conv3_2`` is the second convolution of the third block,
    ``relu3_2`` its activation, ``pool3`` the pooling that ends the block (AlexNet: ``conv1`` ... ``relu5``,
    ``pool1`` after ``relu1``)."""
    vgg = check_net(net) == "vgg"
    names, block, conv = [], 1, 0
    for item in _LAYERS[net]:
        if item == "R":
            names.append(f"relu{block}_{conv}" if vgg else f"relu{conv}")
        elif item[0] == "M":
            names.append(f"pool{block}" if vgg else f"pool{conv}")
            block, conv = block + 1, conv * (not vgg)
        else:
            conv += 1
            names.append(f"conv{block}_{conv}" if vgg else f"conv{conv}")
    return names


class ImageNetFeatures(nn.Module):
    """The frozen convolutional layers of AlexNet or VGG16, returning the activations at chosen layers.

    Args:
        net: ``"alex"`` or ``"vgg"`` (VGG16).
        weights_path: the LPIPS ``.npz`` archive; default :func:`default_weights_path`.

    Inputs are (B, 3, X, Y) already normalised as the caller's use requires (LPIPS and ImageNet use the
    same statistics, scaled differently). The parameters do not train; gradients flow to the input.

    Raises:
        InputError: when the weights file is missing or unreadable.
    """

    def __init__(self, net: str = "vgg", weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.net = check_net(net)
        self.names = layer_names(net)
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _LAYERS[net]:
            if item == "R":
                layers.append(nn.ReLU(inplace=False))
            elif item[0] == "M":
                layers.append(nn.MaxPool2d(kernel_size=item[1], stride=item[2]))
            else:
                out_ch, k, s, p = item
                layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=k, stride=s, padding=p))
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        path = Path(weights_path) if weights_path is not None else default_weights_path(net)
        keys = list(self.features.state_dict())
        what = "VGG16" if net == "vgg" else "AlexNet"
        state = read_archive(path, [f"features.{k}" for k in keys], what)
        try:
            self.features.load_state_dict({k: state[f"features.{k}"] for k in keys})
        except RuntimeError as e:
            raise InputError(f"{what} weights file {path} does not hold {what}'s layers ({e}).") from e
        self.requires_grad_(False)
        self.eval()

    def index(self, name: str) -> int:
        """Position of the layer ``name`` in :attr:`features`."""
        if name not in self.names:
            raise InputError(f"{self.net} has no layer {name!r}; it has {', '.join(self.names)}.")
        return self.names.index(name)

    def channels(self, name: str) -> int:
        """Channels of the activation at layer ``name``."""
        convs = [m for m in self.features[: self.index(name) + 1] if isinstance(m, nn.Conv2d)]
        return convs[-1].out_channels

    def forward(self, x: torch.Tensor, layers: list[str]) -> list[torch.Tensor]:
        """The activations at ``layers`` (names, in any order), running only as deep as the deepest."""
        wanted = {self.index(name): name for name in layers}
        found: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                found[wanted[i]] = x
        return [found[name] for name in layers]
