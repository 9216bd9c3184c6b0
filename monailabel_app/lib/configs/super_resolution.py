"""Task config ``super_resolution``: the method, scale and weights that ``--conf`` chooses, turned into the
infer task, the train task and the next-sample strategy."""

from __future__ import annotations

from monailabel.interfaces.config import TaskConfig

from lib import versions
from lib.activelearning import ImagesWithoutBoxesFirst
from lib.infers import SuperResolutionInfer
from lib.trainers import SuperResolutionTrainer
from monai_sr_bundle import methods

#: ``--conf`` keys and their defaults
DEFAULTS = {
    "method": None,
    "scale": "4",
    "modality": "cxr",
    "weights": versions.SHIPPED,
    "tile_size": "256",
    "max_output_mp": "64",
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
        if not all(str(self.settings[k]).isdigit() for k in ("scale", "tile_size", "max_output_mp")):
            raise ValueError("--conf scale, tile_size and max_output_mp must be whole numbers.")

    def infer(self) -> dict:
        s = self.settings
        return {
            self.name: SuperResolutionInfer(
                self.model_dir,
                s["method"],
                int(s["scale"]),
                s["modality"],
                s["weights"],
                int(s["tile_size"]),
                int(s["max_output_mp"]),
            )
        }

    def trainer(self) -> SuperResolutionTrainer:
        s = self.settings
        return SuperResolutionTrainer(self.model_dir, s["method"], int(s["scale"]), s["modality"])

    def strategy(self) -> dict:
        return {"boxes_first": ImagesWithoutBoxesFirst()}
