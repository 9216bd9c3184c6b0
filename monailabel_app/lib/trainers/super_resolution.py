"""Train task ``super_resolution``: fine-tunes a method on the datastore's images through the bundle's own
train config (the project's one training path), with the pixels inside the annotators' boxes weighted up
(``box_weight``, the box-weighted L1 loss). Each run publishes a new version next to the others in the
app's model folder; the shipped weights are never overwritten."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from monai.bundle import run as bundle_run
from monailabel.interfaces.tasks.train import TrainTask

from lib import versions
from lib.datastore import BOX_TAG, SRDatastore
from monai_sr_bundle import methods
from monai_sr_bundle.constants import BUNDLE_ROOT
from monai_sr_bundle.data.markups import markups_to_boxes
from monai_sr_bundle.data.readers import read_image
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.stages import train_configs, train_parser

logger = logging.getLogger(__name__)

#: every VAL_EVERY-th image (by id) validates, the others train
VAL_EVERY = 5


def datastore_datalist(datastore: SRDatastore, min_size: int = 0) -> dict[str, list[dict]]:
    """Decathlon-style datalist of the datastore: each image as the HR ``label`` with its boxes in pixels
    (``[]`` when it has none yet); every VAL_EVERY-th image by id goes to ``validation``. Images a training
    run cannot use (unreadable, a volume, or smaller than ``min_size`` in-plane) are left out with a warning
    naming them, so one such file does not fail every train request."""
    items = []
    for image_id in sorted(datastore.list_images()):
        try:
            image = read_image(datastore.get_image_uri(image_id))
        except InputError as e:  # a file put in the studies folder by hand is not checked as uploads are
            logger.warning(f"training leaves out image {image_id}: {str(e).split(': ', 1)[-1]}")
            continue
        if image.ndim != 3 or min(image.shape[1:3]) < min_size:
            shape = "x".join(str(n) for n in image.shape[1:])
            logger.warning(f"training leaves out image {image_id}: {shape} is not a 2D image of at least {min_size} px")
            continue
        item = {"label": datastore.get_image_uri(image_id), "boxes": [], "findings": [], "id": image_id}
        label = datastore.get_label_uri(image_id, BOX_TAG)
        if label:
            doc = json.loads(Path(label).read_text())
            boxes, findings = markups_to_boxes(doc, image.affine, image.shape[1:], name=f"boxes of {image_id}")
            item.update(boxes=boxes.tolist(), findings=findings)
        items.append(item)
    if len(items) < 2:
        raise InputError(
            f"the datastore holds {len(items)} image(s) that training can use; it needs at least 2 (one validates)."
        )
    return {"training": [d for i, d in enumerate(items) if i % VAL_EVERY], "validation": items[::VAL_EVERY]}


def root_cause(error: BaseException) -> str:
    """The innermost error of a chain, as one line: the bundle's own message ('Failed to evaluate
    ConfigExpression ...') says where it failed, the innermost error why."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"


class SuperResolutionTrainer(TrainTask):
    """Fine-tune ``method`` at ``scale`` on the datastore.

    Request keys (defaults in :meth:`config`): ``method``, ``max_epochs``, ``learning_rate`` (None keeps the
    method's), ``box_weight``, ``init`` (``shipped``, ``latest`` or ``vN``: the weights to start from).
    """

    def __init__(self, model_dir: str, method: str, scale: int, modality: str = "cxr") -> None:
        super().__init__("Fine-tune the SR method on the datastore's images, weighting the abnormality boxes")
        self.model_dir, self.method, self.scale, self.modality = Path(model_dir), method, int(scale), modality

    def config(self) -> dict:
        return {
            "method": self.method,
            "max_epochs": 2,
            "learning_rate": None,
            "box_weight": 1.0,
            "init": versions.LATEST,
        }

    def stats(self) -> dict:
        manifest = self.model_dir / "weights.json"
        return json.loads(manifest.read_text()) if manifest.is_file() else {}

    def checked(self, request: dict) -> tuple[dict, Path]:
        """The request over :meth:`config`'s defaults with its numbers parsed, and the weights it starts from; an
        :class:`InputError` says what is wrong, a 404 names a version to start from that does not exist. The
        gateway asks before MONAI Label starts the train process, which takes seconds of imports to find out."""
        params = {**self.config(), **request}
        method = str(params["method"])
        if method not in methods.trainable_names():
            raise InputError(f"method {method!r} cannot be trained; use one of {', '.join(methods.trainable_names())}.")
        try:
            epochs, box_weight = int(params["max_epochs"]), float(params["box_weight"])
            learning_rate = None if params["learning_rate"] is None else float(params["learning_rate"])
        except (TypeError, ValueError, OverflowError) as e:  # OverflowError: JSON's 1e400 is infinity
            raise InputError(f"max_epochs, box_weight and learning_rate must be numbers ({e}).") from e
        if not (1 <= epochs <= 10_000 and 0 <= box_weight <= 1e3 and (learning_rate is None or 0 < learning_rate < 1)):
            raise InputError(
                "need 1 <= max_epochs <= 10000, 0 <= box_weight <= 1000, 0 < learning_rate < 1; got "
                f"{epochs}, {box_weight}, {learning_rate}."
            )
        init = versions.resolve(self.model_dir, method, self.scale, self.modality, params["init"])
        parsed = {"method": method, "max_epochs": epochs, "box_weight": box_weight, "learning_rate": learning_rate}
        return {**params, **parsed}, init

    def __call__(self, request: dict, datastore: SRDatastore) -> dict:
        params, init = self.checked(request)
        method, epochs, box_weight = params["method"], params["max_epochs"], params["box_weight"]
        learning_rate = params["learning_rate"]
        target = versions.next_version(self.model_dir, method, self.scale, self.modality)
        settings = train_parser(method)
        settings.update({"scale": self.scale, "modality": self.modality})
        datalist = datastore_datalist(datastore, min_size=int(settings.get_parsed_content("patch_size")))
        run_dir = self.model_dir / "runs" / f"{target.stem}_{time.strftime('%Y%m%d_%H%M%S')}"
        run_dir.mkdir(parents=True)
        (run_dir / "datalist.json").write_text(json.dumps(datalist, indent=1))
        n_train, n_boxes = len(datalist["training"]), sum(len(d["boxes"]) for d in datalist["training"])
        logger.info(
            f"training {target.name} from {init.name}: {n_train} images ({n_boxes} boxes), "
            f"{len(datalist['validation'])} validating"
        )
        overrides = {
            "bundle_root": str(BUNDLE_ROOT),
            "method": method,
            "scale": self.scale,
            "modality": self.modality,
            "datalist_file": str(run_dir / "datalist.json"),
            "init_weights": str(init),
            "box_weight": box_weight,
            "max_epochs": epochs,
            "resume": False,
            "ckpt_path": str(target),
            "run_dir": str(run_dir),
            "provenance#command": f"MONAI Label train task: {json.dumps(params, sort_keys=True)}",
            "provenance#data": f"MONAI Label datastore {datastore.studies}: {n_train} training images "
            f"({n_boxes} boxes), every {VAL_EVERY}th image by id validating; list in {run_dir / 'datalist.json'}",
        }
        if learning_rate is not None:
            overrides["learning_rate"] = learning_rate
        try:
            bundle_run(
                config_file=train_configs(method),
                meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
                logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"),
                **overrides,
            )
        except Exception as e:
            shutil.rmtree(run_dir, ignore_errors=True)  # a failed run publishes nothing and leaves nothing
            raise RuntimeError(f"training {target.name} failed: {root_cause(e)}") from e
        return {"weights": target.name, **self.stats().get(target.name, {})}
