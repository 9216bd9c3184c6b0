"""MONAI Label app ``monai-sr``: serves super-resolution of the studies' chest X-rays and CT, collects the
annotators' abnormality boxes, and fine-tunes the SR method on them.

Start it with its launcher, which puts MONAI Label's server behind this app's gateway (``lib/gateway.py``):
    .venv/bin/python monailabel_app/serve.py --studies <folder> [--port 8000] [--conf method <name> ...]
See docs/monailabel.md.
"""

from __future__ import annotations

import logging
import os

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random

import monai_sr_bundle
from lib.configs import SuperResolution
from lib.datastore import SRDatastore, image_path
from monai_sr_bundle import card

logger = logging.getLogger(__name__)

#: the one task name, used by the infer task, the train task and in docs
TASK = "super_resolution"


class SuperResolutionApp(MONAILabelApp):
    """``--conf`` keys: ``method``, ``scale``, ``modality``, ``weights`` (``shipped``, ``latest``, ``vN``),
    ``tile_size``, ``model_dir`` (trained versions; default ``<app>/model``), ``max_upload_mb`` (default 512),
    ``max_output_mp`` (largest SR result in megapixels, default 64), ``max_pending`` (SR requests admitted at
    once, default 8), ``pacs_modalities`` (with a DICOMweb ``--studies``: the modalities listed, default
    CR,DX,CT)."""

    def __init__(self, app_dir: str, studies: str, conf: dict) -> None:
        self.model_dir = conf.get("model_dir") or os.path.join(app_dir, "model")
        os.makedirs(self.model_dir, exist_ok=True)
        self.task = SuperResolution()
        self.task.init(TASK, self.model_dir, conf, None)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-sr",
            description="Super-resolution of chest X-rays and CT; abnormality box collection",
            version=monai_sr_bundle.__version__,
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):  # a PACS (DICOMweb, below), XNAT or DSA
            return super().init_datastore()
        settings = self.task.settings
        return SRDatastore(self.studies, scale=int(settings["scale"]), max_output_mp=float(settings["max_output_mp"]))

    def _init_dicomweb_datastore(self):
        """A PACS: its series of ``--conf pacs_modalities`` (default CR,DX,CT) as DICOM, boxes beside the cache,
        SR stored back on request. Replaces MONAI Label's, which converts series to NIfTI and first downloads
        dcmqi from the internet for DICOM SEG labels that this app does not make."""
        from monailabel.config import settings as label_settings

        from lib.pacs import MODALITIES, SRDICOMwebDatastore

        modalities = str(self.conf.get("pacs_modalities", ",".join(MODALITIES)))
        return SRDICOMwebDatastore(
            self.studies,
            [m.strip().upper() for m in modalities.split(",") if m.strip()],
            cache_path=label_settings.MONAI_LABEL_DICOMWEB_CACHE_PATH.strip() or None,
        )

    def init_infers(self) -> dict:
        return self.task.infer()

    def init_trainers(self) -> dict:
        return {TASK: self.task.trainer()}

    def check_train(self, model: str, request: dict) -> None:
        """Refuses (:class:`InputError`) a train request that trainer ``model`` would refuse."""
        self._trainers[model].checked(request)

    def init_strategies(self) -> dict:
        return {**self.task.strategy(), "random": Random()}

    def info(self) -> dict:
        """MONAI Label's info plus ``methods``: each method this server can run, as ``monai-sr methods --json``
        describes it, so that a client (the 3D Slicer module) offers exactly these."""
        settings = self.task.settings
        return {**super().info(), "methods": card.describe_all(int(settings["scale"]), settings["modality"])}

    def server_mode(self, mode: bool) -> None:
        """Refuse to serve without the gateway: MONAI Label's own server exposes endpoints that delete studies,
        unpack archives anywhere and show the server's logs to anyone."""
        from monailabel.app import app

        if mode and getattr(app.state, "gateway", None) is None:
            raise RuntimeError(
                "start this app with monailabel_app/serve.py (MONAI Label's start_server leaves its stock "
                "endpoints open); see docs/monailabel.md, Deployment."
            )
        super().server_mode(mode)

    def infer(self, request: dict, datastore=None):
        """SR of a datastore image: ``image`` is an id (a plain name that exists), never a path, so a request
        cannot make the server read its own files."""
        image = request.get("image")
        path = image_path(datastore or self.datastore(), image)
        return super().infer({**request, "image": path, "image_name": image}, datastore)

    def infer_upload(self, path: str, name: str, request: dict):
        """SR of a file the gateway received (``name``: the client's file name, used in messages)."""
        return super().infer({**request, "image": path, "image_name": name})
