"""Task config ``super_resolution``: the method, scale and weights that ``--conf`` chooses, turned into the
infer task, the train task and the next-sample strategy."""

from __future__ import annotations

from monailabel.interfaces.config import TaskConfig

from lib import versions
from lib.activelearning import ImagesWithoutBoxesFirst
from lib.infers import SuperResolutionInfer
from lib.trainers import SuperResolutionTrainer
from monai_sr_bundle import engine, methods
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.inference import check_device
from monai_sr_bundle.limits import MAX_OUTPUT_MP
from monai_sr_bundle.transforms.noise import checked_noise_level

#: ``--conf`` keys and their defaults
DEFAULTS = {
    "method": None,
    "scale": "4",
    "modality": "cxr",
    "weights": versions.SHIPPED,
    "tile_size": "auto",
    "noise_level": "auto",
    "max_output_mp": str(MAX_OUTPUT_MP),
    "device": "auto",
    "precision": "auto",
    "runtime": "auto",
    "compile": "false",
}


class SuperResolution(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict, planner, **kwargs) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.settings = {k: conf.get(k, v) for k, v in DEFAULTS.items()}
        self.settings["method"] = self.settings["method"] or methods.default_name()
        if self.settings["method"] not in methods.names():
            raise ValueError(
                f"--conf method {self.settings['method']!r} is unknown; available: {', '.join(methods.names())}."
            )
        if not all(str(self.settings[k]).isdigit() for k in ("scale", "max_output_mp")) or not (
            str(self.settings["tile_size"]).isdigit() or self.settings["tile_size"] == "auto"
        ):
            raise ValueError("--conf scale and max_output_mp must be whole numbers, tile_size one or auto.")
        try:
            self.settings["noise_level"] = checked_noise_level(self.settings["noise_level"], "--conf noise_level")
        except InputError as e:
            raise ValueError(str(e)) from e
        try:
            self.settings["device"] = check_device(str(self.settings["device"]))
        except InputError as e:
            raise ValueError(f"--conf {e}") from e
        try:  # the default method's runtime and precision, as its first request will resolve them
            method = methods.get(self.settings["method"], int(self.settings["scale"]), self.settings["modality"])
            engine.resolve(method, self.settings["runtime"], self.settings["device"], self.settings["precision"])
        except InputError as e:
            raise ValueError(f"--conf {e}") from e
        compiled = str(self.settings["compile"]).lower()
        if compiled not in ("true", "false"):
            raise ValueError(f"--conf compile must be true or false, not {self.settings['compile']!r}.")
        self.settings["compile"] = compiled == "true"

    def infer(self) -> dict:
        s = self.settings
        return {
            self.name: SuperResolutionInfer(
                self.model_dir,
                s["method"],
                int(s["scale"]),
                s["modality"],
                s["weights"],
                None if s["tile_size"] == "auto" else int(s["tile_size"]),
                int(s["max_output_mp"]),
                s["device"],
                s["precision"],
                s["compile"],
                s["noise_level"],
                s["runtime"],
            )
        }

    def trainer(self) -> SuperResolutionTrainer:
        s = self.settings
        return SuperResolutionTrainer(self.model_dir, s["method"], int(s["scale"]), s["modality"])

    def strategy(self) -> dict:
        return {"boxes_first": ImagesWithoutBoxesFirst()}
