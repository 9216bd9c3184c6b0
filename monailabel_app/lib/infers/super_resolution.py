"""Infer task ``super_resolution``: any bundle method through the core entry point
(:func:`monai_sr_bundle.inference.run_inference`), so the server's result is the CLI's and the bundle's."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib import versions
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.inference import SRInferer, available_methods, load_network, method_config, run_inference

MAX_SCALE = 8


def _scale(value: object) -> int:
    try:
        scale = int(value)
    except (TypeError, ValueError):
        scale = 0
    if not 1 < scale <= MAX_SCALE or str(value).strip() != str(scale):
        raise HTTPException(422, f"scale {value!r} must be a whole number from 2 to {MAX_SCALE}.")
    return scale


class SuperResolutionInfer(InferTask):
    """SR of a datastore image (or an uploaded file); the result is in the input's format family with the
    spacing divided by the scale. Request params ``method``, ``scale`` and ``weights`` (``shipped``,
    ``latest`` or a trained version ``vN``) override the app's defaults for that request; ``steps`` (a
    diffusion sampler's steps) is refused for methods without a sampler.

    Args:
        model_dir: where the app's trained versions live.
        method, scale, modality, weights: defaults of every request.
        tile_size: LR tile edge of the inferer (bounds memory on large radiographs).
    """

    def __init__(self, model_dir: str, method: str, scale: int, modality: str = "cxr", weights: str = versions.SHIPPED, tile_size: int = 256) -> None:
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=2,
            description="Super-resolution of chest X-rays and CT (in-plane, slice by slice)",
            config={"method": method, "scale": scale, "weights": weights, "methods": available_methods()},
        )
        self.model_dir, self.modality, self.tile_size = model_dir, modality, int(tile_size)
        self._networks: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def network(self, method: str, scale: int, weights: str):
        """The network for a request, built once per (method, scale, weights file) and then shared."""
        path = versions.resolve(self.model_dir, method, scale, self.modality, weights) if method_config(method, scale, self.modality).get("has_weights", True) else None
        key = (method, scale, str(path))
        with self._lock:
            if key not in self._networks:
                try:
                    self._networks[key] = load_network(method, scale, self.modality, weights=path)
                except InputError as e:  # said without the server's paths
                    raise HTTPException(404, f"{method} x{scale}: weights {path.name} cannot be used ({str(e).split(': ', 1)[-1]})") from e
            return self._networks[key], path

    def __call__(self, request: dict) -> tuple[str, dict]:
        config = self.config()
        method = str(request.get("method", config["method"]))
        if method not in available_methods():
            raise HTTPException(422, f"unknown method {method!r}; available: {', '.join(available_methods())}.")
        scale = _scale(request.get("scale", config["scale"]))
        if "steps" in request and method_config(method, scale, self.modality).get("sampler") is None:
            raise HTTPException(422, f"'steps' sets a diffusion sampler's steps; method {method!r} has no sampler.")
        network, path = self.network(method, scale, str(request.get("weights", config["weights"])))
        image = request["image"]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                (written,) = run_inference(image, network, SRInferer(scale, tile_size=self.tile_size), tmp, allow_volume=True, progress=False)
            except InputError as e:
                raise HTTPException(422, str(e).replace(str(image), Path(image).name)) from e
            suffix = "".join(Path(written).suffixes[-2:]) if written.endswith(".nii.gz") else Path(written).suffix
            fd, result = tempfile.mkstemp(suffix=suffix)
            os.close(fd)
            shutil.move(written, result)
        return result, {"method": method, "scale": scale, "weights": path.name if path else None}
