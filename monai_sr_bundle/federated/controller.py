"""Server side of the federation: NVFlare's FedAvg, made to train every connected site each round and to
leave behind what a hospital's IT and its researchers look for after a job.

- Every connected site of the job trains each round (NVFlare's FedAvg samples only ``min_clients`` of
  them); a round goes on without a site that fails, is not connected or does not answer, as long as
  ``min_responses`` sites succeed; otherwise the job stops and nothing is published from that round.
- Round 0 starts from the job's own ``custom/initial_model.pt`` (the initial weights, or a network drawn
  from the job's seed), so every run of a job starts from the same model.
- Every update is checked before it is aggregated (:mod:`monai_sr_bundle.federated.aggregation`): the global
  model's keys, shapes and kinds of number, all finite, and no larger than ``max_update_ratio`` times the
  round's median update. A refused update fails that site's round, named in the report with the reason; the
  round goes on while ``min_responses`` sites remain. Sites weigh by the training images they declare,
  capped at ``max_weight_ratio`` times the round's median, and are combined by ``aggregation`` (``mean``,
  ``median`` or ``trimmed_mean``). A combined model that is not finite is never published. BatchNorm
  statistics stay at the sites; the global model keeps those of round 0.
- ``fl_report.json`` in the server's app folder: each round's per-site metrics (PSNR, SSIM of the global
  model on the site's validation images), steps, and the sites that failed with what the server saw (a
  site's own reason stays in its log).
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
from nvflare.apis.impl import bcast_manager
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.fedavg import FedAvg

from monai_sr_bundle.federated import aggregation
from monai_sr_bundle.weights import write_weights

#: the task property in which NVFlare's broadcast keeps the answers it waits for. NVFlare names it only in a
#: private constant; tests/test_aggregation.py checks that a broadcast still keeps its minimum there, so an
#: NVFlare upgrade that moves it fails that test with this name, not a round that ends too early
MIN_RESPONSES_PROP = getattr(bcast_manager, "_KEY_MIN_RESPS", "__min_responses")
REPORT_NAME = "fl_report.json"
#: the round-0 model, in the server app's custom folder of the job
INITIAL_MODEL = "initial_model.pt"
#: what the report says of a site that sent an empty result (the site's log says why)
FAILED_AT_SITE = "failed at the site (its log says why)"


class SRFedAvg(FedAvg):
    """FedAvg over all connected sites with a per-round report and a bundle checkpoint of the global model.

    Args:
        min_responses: successful sites a round needs; a failing site is reported and left out while this
            many remain, otherwise the job stops.
        wait_after_min_s: once ``min_responses`` sites have answered, how long to wait for the others.
        round_timeout_s: the longest a round waits for answers at all: a site that never answers (its
            result lost) is then reported, and the round ends with the sites that trained or stops the job,
            instead of waiting for ever.
        weights_name: file name of the published global model, ``<method>_<modality>_x<scale>.pt``.
        provenance: what ``weights.json`` records for it (job, rounds, the command that ran).
        sites: the job's sites; one that is not connected when a round starts is reported as failed.
        aggregation: how accepted updates are combined: ``mean`` (weighted), ``median`` or ``trimmed_mean``.
        max_update_ratio: an update larger than this many times the round's median update is refused.
        max_weight_ratio: a site weighs at most this many times the round's median declared images.
    """

    def __init__(
        self,
        *args,
        min_responses: int = 1,
        wait_after_min_s: int = 1800,
        round_timeout_s: int = 86400,
        weights_name: str = "global_model.pt",
        provenance: dict | None = None,
        sites: list[str] | None = None,
        aggregation: str = "mean",
        max_update_ratio: float = 10.0,
        max_weight_ratio: float = 4.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.aggregation = aggregation
        self.max_update_ratio = float(max_update_ratio)
        self.max_weight_ratio = float(max_weight_ratio)
        self._global: dict = {}
        self._updates: dict[str, tuple[dict, object]] = {}
        self.min_responses = int(min_responses)
        self.wait_after_min_s = int(wait_after_min_s)
        self.round_timeout_s = int(round_timeout_s)
        self.weights_name = weights_name
        self.provenance = dict(provenance or {})
        self.sites = list(sites or [])
        self._rounds: list[dict] = []
        self._targets: list[str] = []

    def run(self) -> None:
        state = torch.load(self._app_dir() / "custom" / INITIAL_MODEL, weights_only=True)
        self.model = FLModel(params_type=ParamsType.FULL, params={k: v.numpy() for k, v in state.items()})
        self._global = dict(self.model.params)
        super().run()

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        connected = super().sample_clients(None)
        self._targets = [s for s in connected if not self.sites or s in self.sites]
        for site in self.sites:
            if site not in connected:
                self._round()["failed"][site] = "not connected"
        return self._targets

    def send_model(
        self, task_name="train", data=None, targets=None, min_responses=None, timeout=0, callback=None
    ) -> None:
        self.broadcast_model(
            data=data,
            task_name=task_name,
            targets=targets,
            min_responses=min(self.min_responses, len(targets or self.engine.get_clients())),
            timeout=timeout or self.round_timeout_s,
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

    def _process_result(self, client_task, fl_ctx) -> None:
        super()._process_result(client_task, fl_ctx)
        if client_task.client.name in self._round()["failed"]:
            # NVFlare counts any answer towards the round's minimum; a failed one must not end the round
            # before min_responses sites have trained, so the broadcast waits for one more answer
            client_task.task.props[MIN_RESPONSES_PROP] += 1

    def _fail(self, site: str, reason: str) -> bool:
        self.warning(f"site {site} round {self.current_round}: {reason}")
        self._round()["sites"].pop(site, None)
        self._round()["failed"][site] = reason
        self._updates.pop(site, None)
        self._write_report()
        return False

    def _aggregate_one_result(self, result: FLModel) -> bool:
        """Keep a site's update for the round once it fits the global model; a refused one fails the site."""
        site = result.meta.get("client_name", "?")
        if not result.params:
            return self._fail(site, FAILED_AT_SITE)
        if site in self._updates or site in self._round()["failed"]:
            return self._fail(site, "answered twice in one round (two clients with one site name?)")
        problem = aggregation.check_update(result.params, aggregation.shared(self._global))
        if problem:
            return self._fail(site, f"update refused: {problem}")
        self._params_type = result.params_type
        metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        meta = result.meta or {}
        steps, images = meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND), meta.get(aggregation.NUM_SAMPLES)
        self._round()["sites"][site] = {**metrics, "steps": steps, "training_images": images}
        self._updates[site] = (result.params, images)
        self.info(f"site {site} round {self.current_round}: {metrics}, {steps} steps, {images} images")
        return True

    def _get_aggregated_result(self) -> FLModel:
        """The round's combined model from the accepted updates, once enough sites trained; else the report
        says why and the job stops without publishing."""
        round_, updates, self._updates = self._round(), self._updates, {}
        for site in self._targets:
            if site not in round_["sites"] and site not in round_["failed"]:
                round_["failed"][site] = "no answer within the round"
        kind = aggregation.DIFF if self._params_type == ParamsType.DIFF else aggregation.FULL
        reference = aggregation.shared(self._global)
        norms = {s: aggregation.update_norm(p, reference, kind) for s, (p, _) in updates.items()}
        for site, reason in aggregation.outliers(norms, self.max_update_ratio).items():
            self._fail(site, f"update refused: {reason}")
            updates.pop(site)
        self._write_report()
        if len(updates) < self.min_responses:
            raise RuntimeError(
                f"round {self.current_round}: {len(updates)} site(s) trained, {self.min_responses} needed; "
                f"no model is published from it ({REPORT_NAME} lists the sites that failed)."
            )
        weights = aggregation.capped_weights({s: n for s, (_, n) in updates.items()}, self.max_weight_ratio)
        params = aggregation.combine({s: p for s, (p, _) in updates.items()}, weights, self.aggregation)
        if kind == aggregation.FULL:  # the BatchNorm statistics no site sent: the global model keeps its own
            params = {**{k: v for k, v in self._global.items() if k not in params}, **params}
        for site, weight in weights.items():
            round_["sites"][site]["weight"] = weight
        scores = [round_["sites"][s] for s in updates]
        common = set.intersection(*map(set, scores)) - {"steps", "training_images", "weight"}
        metrics = {k: float(np.mean([m[k] for m in scores])) for k in sorted(common)}
        return FLModel(
            params=params,
            params_type=self._params_type,
            metrics=metrics or None,
            current_round=self.current_round,
            meta={"nr_aggregated": len(updates), "current_round": self.current_round},
        )

    def save_model(self, model: FLModel) -> None:
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in model.params.items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:  # the last check before publishing, whatever the aggregation did
            raise RuntimeError(f"round {self.current_round}: the combined model is not finite ({bad[0]}); not saved.")
        super().save_model(model)
        self._global = dict(model.params)
        target = self._app_dir() / "models" / self.weights_name
        rounds_done = self.current_round - self.start_round + 1
        trained = sorted({site for r in self._rounds for site in r["sites"]})
        write_weights(state, target, {**self.provenance, "rounds_completed": rounds_done, "sites_trained": trained})
        self._round()["global_model"] = str(target.relative_to(self._app_dir()))  # the app folder is downloaded
        self._write_report()

    def _app_dir(self) -> Path:
        return Path(self.engine.get_workspace().get_app_dir(self.fl_ctx.get_job_id()))

    def _write_report(self) -> None:
        path = self._app_dir() / REPORT_NAME
        tmp = path.with_suffix(".tmp")
        report = _finite({"provenance": self.provenance, "rounds": self._rounds})
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)


def _finite(value):
    """``value`` with NaN and infinities as null, so the report is JSON (a diverged site's PSNR is NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
