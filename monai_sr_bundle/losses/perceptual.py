"""Perceptual (content) loss: the distance between ImageNet VGG16 features of the SR and HR images.

Johnson et al., "Perceptual Losses for Real-Time Style Transfer and Super-Resolution", ECCV 2016; SRGAN
(Ledig et al., CVPR 2017) compares features after the activation of a deep layer, ESRGAN (Wang et al., ECCV
2018 workshops) before it, with an L1 distance. The backbone is the one the LPIPS metric loads
(``imagenet.py``); layers, their weights and the distance are config keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.imagenet import ImageNetFeatures
from monai_sr_bundle.losses.batch import SRBatch

# ImageNet statistics of the RGB channels, for images in [0, 1]
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_DISTANCES = {"mse": F.mse_loss, "l1": F.l1_loss}


class PerceptualLoss(nn.Module):
    """``sum_l weight_l * distance(vgg_l(pred), vgg_l(target))`` over the chosen VGG16 layers.

    Grayscale images are repeated to the three RGB channels and both images are normalised with the
    ImageNet statistics before VGG16 sees them; the target's features are computed without gradients.

    Args:
        layers: layer name -> weight (names as :func:`~monai_sr_bundle.imagenet.layer_names`
            gives them: ``relu5_3`` is SRGAN's choice after the activation, ``conv5_3`` ESRGAN's before it).
        distance: ``"mse"`` (SRGAN) or ``"l1"`` (ESRGAN).
        weights_path: the LPIPS VGG16 archive; default ``$MONAI_SR_DATA/weights/lpips_vgg16_full_v0.1.npz``.

    The prediction and the batch's ``target`` are (B, C, X, Y) in [0, 1] with C = 1 or 3.

    Raises:
        InputError: a missing weights file, an unknown layer or distance, a negative weight.
    """

    def __init__(
        self,
        layers: Mapping[str, float] | None = None,
        distance: str = "mse",
        weights_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        layers = dict(layers if layers is not None else {"relu5_3": 1.0})
        if distance not in _DISTANCES:
            raise InputError(f"perceptual distance must be one of {sorted(_DISTANCES)}, got {distance!r}.")
        if not layers or not all(isinstance(w, (int, float)) and w >= 0 for w in layers.values()):
            raise InputError(f"perceptual layers must map layer names to weights >= 0, got {layers!r}.")
        self.vgg = ImageNetFeatures("vgg", weights_path)
        for name in layers:
            self.vgg.index(name)  # an unknown name fails here, before training starts
        self.layers = layers
        self.distance = _DISTANCES[distance]
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.vgg((x - self.mean) / self.std, list(self.layers))

    def forward(self, pred: torch.Tensor, batch: SRBatch) -> torch.Tensor:
        target = batch.target
        if pred.shape[1] not in (1, 3) or target.shape != pred.shape:
            raise InputError(
                f"the perceptual loss needs a prediction (B, 1 or 3, X, Y) and a target of its shape, "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}."
            )
        with torch.no_grad():
            wanted = self._features(target)
        total = pred.new_zeros(())
        for weight, got, ref in zip(self.layers.values(), self._features(pred), wanted):
            total = total + weight * self.distance(got, ref)
        return total
