"""MONAI Label app ``monai-sr``: serves super-resolution of the studies' chest X-rays and CT, collects the
annotators' abnormality boxes, and fine-tunes the SR method on them.

Start (from the repository root):
    .venv/bin/python -m monailabel.main start_server --app monailabel_app --studies <folder> \
        --host 127.0.0.1 --port 8000 [--conf method <name> --conf scale 4 --conf weights latest]
See docs/monailabel.md.
"""

from __future__ import annotations

import logging
import os
import tempfile

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random

import monai_sr_bundle
from lib.configs import SuperResolution
from lib.datastore import SRDatastore, image_path
from monai_sr_bundle import methods

logger = logging.getLogger(__name__)

#: the one task name, used by the infer task, the train task and in docs
TASK = "super_resolution"


class SuperResolutionApp(MONAILabelApp):
    """``--conf`` keys: ``method``, ``scale``, ``modality``, ``weights`` (``shipped``, ``latest``, ``vN``),
    ``tile_size``, ``model_dir`` (trained versions; default ``<app>/model``), ``max_upload_mb`` (default 512)."""

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
        if self.studies.startswith(("http://", "https://")):  # DICOMweb, XNAT, DSA: MONAI Label's own
            return super().init_datastore()
        return SRDatastore(self.studies, max_upload_mb=float(self.conf.get("max_upload_mb", 512)))

    def init_infers(self) -> dict:
        return self.task.infer()

    def init_trainers(self) -> dict:
        return {TASK: self.task.trainer()}

    def init_strategies(self) -> dict:
        return {**self.task.strategy(), "random": Random()}

    def info(self) -> dict:
        """MONAI Label's info plus ``methods``: each method this server can run, as ``monai-sr methods --json``
        describes it, so that a client (the 3D Slicer module) offers exactly these."""
        settings = self.task.settings
        return {**super().info(), "methods": methods.describe_all(int(settings["scale"]), settings["modality"])}

    def infer(self, request: dict, datastore=None):
        """Resolve the image before MONAI Label does: a datastore id (a plain name that exists), or the file
        the infer endpoint itself stored from an upload. Any other path is refused, so a request cannot make
        the server read its own files."""
        image = request.get("image")
        if not isinstance(image, str):
            raise HTTPException(422, "give one image id (or upload one file) to super-resolve.")
        uploaded = os.path.dirname(image) == tempfile.gettempdir() and os.path.basename(image).startswith("tmp")
        if not (uploaded and os.path.isfile(image)):
            request = {**request, "image": image_path(datastore or self.datastore(), image)}
        return super().infer(request, datastore)
