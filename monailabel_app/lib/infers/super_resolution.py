"""Infer task ``super_resolution``: any bundle method through the core entry point (a
:class:`~monai_sr_bundle.inference.Predictor` per method and weights, :func:`~monai_sr_bundle.batch.run_inference`),
so the server's result is the CLI's and the bundle's."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib import versions
from lib.datastore import check_image
from monai_sr_bundle import cancel, methods
from monai_sr_bundle.batch import run_inference
from monai_sr_bundle.constants import MAX_SCALE
from monai_sr_bundle.data.readers import image_format, read_image
from monai_sr_bundle.data.writers import write_image
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.inference import Predictor
from monai_sr_bundle.jsonfile import Kind, check_object
from monai_sr_bundle.limits import MAX_OUTPUT_MP
from monai_sr_bundle.request import SRRequest
from monai_sr_bundle.uncertainty import MAPS

#: this task's params that an SRRequest does not hold (:func:`~monai_sr_bundle.jsonfile.check_object`'s schema;
#: Predictor.check checks the SRRequest's, other keys are the client's or the server's); a scale may also come as
#: its text ("4"), and a null map asks for the SR image
PARAMS = {
    "scale": Kind(
        f"a whole number from 2 to {MAX_SCALE}",
        lambda v: not isinstance(v, bool) and str(v).strip() in {str(s) for s in range(2, MAX_SCALE + 1)},
    ),
    "store_in_pacs": Kind("true or false", lambda v: isinstance(v, bool)),
    "map": Kind(f"one of {', '.join(MAPS)}", lambda v: isinstance(v, str) and v in MAPS).or_null(),
}


def _pacs(store: bool):
    """The datastore to store the SR series in when a request asks for it (``store_in_pacs``: true), else None."""
    if not store:
        return None
    from monailabel.interfaces.utils.app import app_instance

    datastore = app_instance().datastore()
    if not hasattr(datastore, "store_series"):
        raise HTTPException(422, "store_in_pacs needs the app to run on a PACS (--studies http(s)://<host>/dicom-web).")
    return datastore


class SuperResolutionInfer(InferTask):
    """SR of a datastore image (or an uploaded file); the result is in the input's format family with the
    spacing divided by the scale. Request params ``method``, ``scale`` and ``weights`` (``shipped``,
    ``latest`` or a trained version ``vN``) override the app's defaults for that request; the sampler's
    ``sampler``, ``steps``, ``seed`` and ``samples`` are refused for deterministic methods. With ``samples``
    > 1 the result is the mean SR image, or with ``map`` (``std``, ``lr_consistency``) that uncertainty map:
    a client asks once per map with the same seed, and gets the maps of the very draws behind its SR image.
    ``noise_level`` (grey levels of 255, or ``auto``) sets a degradation-aware method's denoising for the
    request; refused for other methods.

    Args:
        model_dir: where the app's trained versions live.
        method, scale, modality, weights: defaults of every request.
        tile_size: LR tile edge of the inferer (bounds memory on large radiographs); None: each method's.
        max_output_mp: largest SR result in megapixels; a larger request is refused from the image's header.
        device, precision, compile, runtime: where and how the networks run
            (:class:`~monai_sr_bundle.inference.Predictor`; runtime ``auto``: the fastest engine installed).
        noise_level: a degradation-aware method's level when a request names none (None: estimated per image).
    """

    def __init__(
        self,
        model_dir: str,
        method: str,
        scale: int,
        modality: str = "cxr",
        weights: str = versions.SHIPPED,
        tile_size: int | None = None,
        max_output_mp: float = MAX_OUTPUT_MP,
        device: str = "cpu",
        precision: str = "auto",
        compile: bool = False,
        noise_level: float | None = None,
        runtime: str = "auto",
    ) -> None:
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=2,
            description="Super-resolution of chest X-rays and CT (in-plane, slice by slice)",
            config={"method": method, "scale": scale, "weights": weights, "methods": methods.names()},
        )
        self.model_dir, self.modality, self.tile_size = model_dir, modality, tile_size
        self.noise_level = noise_level
        self.max_output_mp = max_output_mp
        self.predictor_options = {"device": device, "precision": precision, "compile": compile, "runtime": runtime}
        self._predictors: dict[tuple, Predictor] = {}
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def predictor(self, method: methods.Method, weights: str) -> Predictor:
        """The predictor for a request, built once per (method, scale, weights file) and then shared: sampling
        options go with each call."""
        path = (
            versions.resolve(self.model_dir, method.name, method.scale, self.modality, weights)
            if method.trainable
            else None
        )
        key = (method.name, method.scale, str(path))
        with self._lock:
            if key not in self._predictors:
                try:
                    self._predictors[key] = method.predictor(path, tile_size=self.tile_size, **self.predictor_options)
                except InputError as e:  # said without the server's paths
                    raise HTTPException(
                        404,
                        f"{method.name} x{method.scale}: weights {path.name} cannot be used "
                        f"({str(e).split(': ', 1)[-1]})",
                    ) from e
            return self._predictors[key]

    def __call__(self, request: dict) -> tuple[str, dict]:
        config = self.config()
        try:
            check_object(request, "params", PARAMS, others=True)
            scale = int(request.get("scale", config["scale"]))
            method = methods.get(str(request.get("method", config["method"])), scale, self.modality)
            default = {"noise_level": self.noise_level if method.noise_aware else None}
            server = {k: self.predictor_options[k] for k in ("precision", "runtime")}  # not the client's to choose
            options = SRRequest.of({**default, **request, **server, "max_output_mp": self.max_output_mp})
            options = Predictor.check(method, options)
        except InputError as e:
            raise HTTPException(422, str(e)) from e
        samples, chosen = options.samples or 1, request.get("map")
        if chosen is not None and samples < 2:
            raise HTTPException(422, f"map {chosen!r} needs several draws: ask for it with samples of 2 or more.")
        image, name = request["image"], str(request.get("image_name", "the image"))
        pacs = _pacs(request.get("store_in_pacs", False))
        check_image(image, name, scale, self.max_output_mp)
        predictor = self.predictor(method, str(request.get("weights", config["weights"])))
        with tempfile.TemporaryDirectory() as tmp, cancel.cancellable(request.get("cancel")):
            try:
                dicom = image_format(image) == "dicom"
                written = run_inference(
                    image,
                    predictor,
                    tmp,
                    allow_volume=True,
                    progress=False,
                    output_format="dicom" if pacs else "nifti" if dicom else None,  # clients load NIfTI
                    request=options,  # its max_output_mp checked by check_image above, in the server's words
                )
                if pacs:  # the reply is what the PACS now holds, as NIfTI
                    stored = pacs.store_series(written[0])
                    written[0] = str(write_image(read_image(written[0]), Path(tmp) / "stored_sr.nii.gz"))
                written = written[0 if chosen is None else 1 + MAPS.index(chosen)]
            except InputError as e:
                raise HTTPException(422, str(e).replace(str(image), name)) from e
            suffix = "".join(Path(written).suffixes[-2:]) if written.endswith(".nii.gz") else Path(written).suffix
            fd, result = tempfile.mkstemp(suffix=suffix)
            os.close(fd)
            shutil.move(written, result)
        path = predictor.weights
        answer = {"method": method.name, "scale": scale, "weights": path.name if path else None}
        if pacs:
            answer["stored_series"] = stored
        if samples > 1:
            answer.update(samples=samples, map=chosen or "sr", maps=list(MAPS))
        return result, answer
