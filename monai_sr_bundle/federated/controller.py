"""Server side of the federation: NVFlare's FedAvg, made to train every connected site each round and to
leave behind what a hospital's IT and its researchers look for after a job.

- Every connected site trains each round (NVFlare's FedAvg samples only ``min_clients`` of them); a round
  goes on without a site that fails, as long as ``min_responses`` sites succeed.
- ``fl_report.json`` in the server's app folder: each round's per-site metrics (PSNR, SSIM of the global
  model on the site's validation images), steps, and the sites that failed with their error.
- The global model after each round is published as a bundle checkpoint, a plain state dict at
  ``<app folder>/models/<method>_<modality>_x<scale>.pt`` with its sha256 and provenance in
  ``weights.json`` beside it, so the bundle's inference config loads it as-is (``--ckpt_path``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from nvflare.apis.fl_constant import FLMetaKey, ReturnCode
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.fedavg import FedAvg

from monai_sr_bundle.training import write_weights

REPORT_NAME = "fl_report.json"


class SRFedAvg(FedAvg):
    """FedAvg over all connected sites with a per-round report and a bundle checkpoint of the global model.

    Args:
        min_responses: successful sites a round needs; a failing site is reported and left out while this
            many remain, otherwise the job stops.
        wait_after_min_s: once ``min_responses`` sites have answered, how long to wait for the others.
        weights_name: file name of the published global model, ``<method>_<modality>_x<scale>.pt``.
        provenance: what ``weights.json`` records for it (job, sites, rounds, the command that ran).
    """

    def __init__(
        self,
        *args,
        min_responses: int = 1,
        wait_after_min_s: int = 1800,
        weights_name: str = "global_model.pt",
        provenance: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.min_responses = int(min_responses)
        self.wait_after_min_s = int(wait_after_min_s)
        self.weights_name = weights_name
        self.provenance = dict(provenance or {})
        self._rounds: list[dict] = []

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        return super().sample_clients(None)

    def send_model(
        self, task_name="train", data=None, targets=None, min_responses=None, timeout=0, callback=None
    ) -> None:
        self.broadcast_model(
            data=data,
            task_name=task_name,
            targets=targets,
            min_responses=min(self.min_responses, len(targets or self.engine.get_clients())),
            timeout=timeout,
            wait_time_after_min_received=self.wait_after_min_s,
            blocking=False,
            callback=callback,
        )

    def _round(self) -> dict:
        if not self._rounds or self._rounds[-1]["round"] != self.current_round:
            self._rounds.append({"round": self.current_round, "sites": {}, "failed": {}})
        return self._rounds[-1]

    def _accept_train_result(self, client_name, result, fl_ctx, is_unknown_task: bool = False) -> bool:
        rc = result.get_return_code()
        if rc and rc != ReturnCode.OK and not is_unknown_task:
            self.warning(f"site {client_name} failed in round {self.current_round} ({rc}); see its log")
            self._round()["failed"][client_name] = str(rc)
            self._write_report()
        return super()._accept_train_result(client_name, result, fl_ctx, is_unknown_task)

    def _aggregate_one_result(self, result: FLModel) -> bool:
        site = result.meta.get("client_name", "?")
        metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        steps = (result.meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
        self._round()["sites"][site] = {**metrics, "steps": steps}
        self.info(f"site {site} round {self.current_round}: {metrics}, {steps} steps")
        return super()._aggregate_one_result(result)

    def save_model(self, model: FLModel) -> None:
        super().save_model(model)
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in model.params.items()}
        target = self._app_dir() / "models" / self.weights_name
        rounds_done = self.current_round - self.start_round + 1
        write_weights(state, target, {**self.provenance, "rounds_completed": rounds_done})
        self._round()["global_model"] = str(target)
        self._write_report()

    def _app_dir(self) -> Path:
        return Path(self.engine.get_workspace().get_app_dir(self.fl_ctx.get_job_id()))

    def _write_report(self) -> None:
        path = self._app_dir() / REPORT_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"provenance": self.provenance, "rounds": self._rounds}, indent=2) + "\n")
        os.replace(tmp, path)
