"""NVFlare client of one site (Client API): each round it receives the global weights, scores them on the
site's validation images (PSNR, SSIM), trains them for the local epochs through the bundle's own train
config on the site's training images, and sends back the weights (once it has checked they are finite) with
the steps taken and its number of training images (the server's aggregation weight, capped there).

The training runs in a worker process of its own (its PID in ``monai_sr_runs/<job id>/<site>/worker.pid``): a
worker that fails, is killed or runs out of memory fails the site's round, not the job. NVFlare ends a
whole job when a site's job process dies, so that process only relays. A failed round answers with an
empty result; why it failed is logged at the site and never sent.

Only weights (not the BatchNorm statistics, which are the site's image statistics) and those metrics leave
the site; its images and datalist stay where its site config (:mod:`monai_sr_bundle.federated.sites`) says.
NVFlare runs this script; the job (``job.py``) passes::

    --method <name> --scale 4 --modality cxr --intensity minmax --local_epochs 1 [--site_config PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch

from monai_sr_bundle.errors import InputError, first_line
from monai_sr_bundle.federated import aggregation
from monai_sr_bundle.federated.sites import SiteData, load_site
from monai_sr_bundle.training import stop_on_nan, train_parser

logger = logging.getLogger(__name__)


class SiteTrainer:
    """The bundle's train config at one site, kept alive across rounds so that the optimizer state and the
    learning-rate schedule (over all ``total_epochs`` of the job) carry on from round to round."""

    def __init__(
        self,
        site: SiteData,
        method: str,
        scale: int,
        modality: str,
        intensity,
        total_epochs: int,
        work_dir: str | os.PathLike,
        box_weight: float = 0.0,
        batch_size: int | None = None,
    ) -> None:
        parser = train_parser(method)
        parser.update(
            {
                # the client scores the received global model itself before training, and a progress bar
                # only clutters the site's log
                "validate_in_training": False,
                "progress_bar": False,
                "scale": int(scale),
                "modality": modality,
                "intensity": intensity,
                "datalist_file": str(site.datalist),
                "dataset_dir": str(site.data_dir),
                "val_limit": None,
                "box_weight": float(box_weight),
                "max_epochs": int(total_epochs),
                "run_dir": str(Path(work_dir) / site.site),
                **({"batch_size": int(batch_size)} if batch_size else {}),
            }
        )
        parser.get_parsed_content("initialize")  # seeding, as the bundle's own run does
        try:
            self.trainer = parser.get_parsed_content("train#trainer")
            self.evaluator = parser.get_parsed_content("validate#evaluator")
        except Exception as e:  # a corrupt image surfaces here, wrapped by MONAI's dataset caching
            raise InputError(f"site {site.site}: cannot load its images ({first_line(e)}).") from e
        stop_on_nan(self.trainer, parser["run_dir"])  # a diverged site fails its round instead of sending NaN
        self.network = parser.get_parsed_content("network")  # the method's module, whatever the trainer wraps
        self.frozen = _frozen_keys(self.network)
        self.site, self.rounds = site.site, 0

    def load_global(self, params: dict) -> None:
        """Load the server's global weights, refusing any that do not fit this network or are not finite:
        a site never trains on, or sends back, a corrupted model. After round 0 the site's own BatchNorm
        statistics are kept: they never leave it, so the global ones are round 0's."""
        own = self.network.state_dict()
        try:
            state = {k: torch.as_tensor(v) for k, v in dict(params or {}).items()}
            bad = [k for k, v in state.items() if v.dtype == torch.bool or not torch.isfinite(v.double()).all()]
            if bad:
                raise ValueError(f"non-finite or non-numeric values in {bad[0]}")
            # what the stage trains frozen (a latent method's autoencoder) is the bundle's own at every site: the
            # global copy (random in a fresh server model) never replaces it, and what the sites send back
            # averages to it
            state.update({k: v for k, v in own.items() if k in self.frozen})
            if self.rounds:
                state.update({k: v for k, v in own.items() if k not in aggregation.shared(own)})
            self.network.load_state_dict(state)
            self.rounds += 1
        except (RuntimeError, ValueError, TypeError) as e:
            raise InputError(f"site {self.site}: the global model does not fit this network ({first_line(e)}).") from e

    def update(self) -> dict[str, np.ndarray]:
        """What leaves the site after training: the weights without the BatchNorm statistics, checked finite
        (a model that is not fails the round here, its reason in the site's log)."""
        state = {k: v.detach().cpu().numpy() for k, v in aggregation.shared(self.network.state_dict()).items()}
        bad = [k for k, v in state.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad:
            raise InputError(f"site {self.site}: the trained model holds NaN or infinite values ({bad[0]}); not sent.")
        return state

    def evaluate(self) -> dict[str, float]:
        """PSNR and SSIM of the current network on the site's validation images."""
        try:
            self.evaluator.run()
        except Exception as e:  # e.g. an image too small for the scale: the round fails, naming the site
            raise InputError(f"site {self.site}: validation failed ({first_line(e)}).") from e
        return {
            "psnr": float(self.evaluator.state.metrics["val_psnr"]),
            "ssim": float(self.evaluator.state.metrics["val_ssim"]),
        }

    def train(self, epochs: int) -> int:
        """Train ``epochs`` more epochs; returns the optimizer steps taken."""
        state = self.trainer.state
        start = state.iteration
        state.max_epochs = state.epoch + int(epochs)
        try:
            self.trainer.run()
        except Exception as e:  # e.g. an image smaller than the training patch
            raise InputError(f"site {self.site}: training failed ({first_line(e)}).") from e
        return self.trainer.state.iteration - start


def _frozen_keys(network: torch.nn.Module) -> set[str]:
    """The state-dict keys (parameters and buffers) of the submodules a stage trains frozen."""
    keys = set()
    for name, module in network.named_modules():
        params = list(module.parameters())
        if name and params and not any(p.requires_grad for p in params):
            keys |= {f"{name}.{k}" for k in module.state_dict()}
    return keys


def parse_args(argv=None) -> argparse.Namespace:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--method", required=True, help="a trainable method (monai-sr methods)")
    cli.add_argument("--scale", type=int, default=4)
    cli.add_argument("--modality", default="cxr")
    cli.add_argument(
        "--intensity",
        default="minmax",
        type=lambda s: s if s == "minmax" else json.loads(s),
        help="'minmax' or a JSON [lo, hi] window in modality units (HU for CT)",
    )
    cli.add_argument("--local_epochs", type=int, default=1)
    cli.add_argument("--box_weight", type=float, default=0.0)
    cli.add_argument("--batch_size", type=int, default=None, help="local batch size (default: the method's)")
    cli.add_argument("--site_config", default=None, help="the site's config; default $MONAI_SR_SITE_CONFIG")
    cli.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return cli.parse_args(argv)


class WorkerFailed(RuntimeError):
    """The site's worker process ended without answering (killed, out of memory, crashed)."""


def _work(conn, site_name: str, args: argparse.Namespace, total_epochs: int, work_dir: str) -> None:
    """The worker process: builds the site's trainer once, then answers one ``(params, epochs)`` request per
    round with ``("ok", (state, metrics, steps))`` or ``("error", sentence)``; ends when the relay does."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        site = load_site(site_name, args.site_config)
        logger.info(f"site {site_name}: {len(site.training)} training and {len(site.validation)} validation images")
        trainer = SiteTrainer(
            site,
            args.method,
            args.scale,
            args.modality,
            args.intensity,
            total_epochs,
            work_dir,
            args.box_weight,
            args.batch_size,
        )
    except InputError as e:
        trainer, failure = None, str(e)
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the relay is gone
            return
        if trainer is None:
            conn.send(("error", failure))
            continue
        params, epochs = request
        try:
            trainer.load_global(params)
            metrics = trainer.evaluate()
            steps = trainer.train(epochs)
        except InputError as e:
            conn.send(("error", str(e)))
            continue
        try:
            conn.send(("ok", (trainer.update(), metrics, steps, len(site.training))))
        except InputError as e:
            conn.send(("error", str(e)))


class SiteWorker:
    """The relay's handle on the worker process; a new worker is started after one has died."""

    def __init__(self, site_name: str, args: argparse.Namespace, total_epochs: int, work_dir: Path) -> None:
        self.site_name, self.args, self.total_epochs, self.work_dir = site_name, args, total_epochs, work_dir
        self.process = None

    def run_round(self, params: dict, epochs: int):
        """``(state, metrics, steps, training images)`` of one round, or :class:`InputError` /
        :class:`WorkerFailed`."""
        if self.process is None or not self.process.is_alive():
            self._start()
        try:
            self.conn.send(({k: v.numpy() if torch.is_tensor(v) else v for k, v in dict(params or {}).items()}, epochs))
            while not self.conn.poll(1.0) and self.process.is_alive():
                pass
            status, answer = self.conn.recv()
        except (EOFError, OSError):  # the worker is gone: killed, out of memory or crashed
            self.process.join(5)
            code = self.process.exitcode
            self.process = None
            raise WorkerFailed(f"site {self.site_name}: its worker process ended (exit code {code}).") from None
        if status == "error":
            raise InputError(answer)
        return answer

    def _start(self) -> None:
        # spawn, not fork: the relay runs NVFlare's threads, which a forked child would inherit half-way; and
        # the worker's code comes from the installed package, since NVFlare runs this file as a script
        from monai_sr_bundle.federated.client import _work as work

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=work,
            args=(child, self.site_name, self.args, self.total_epochs, str(self.work_dir)),
            name=f"monai-sr-{self.site_name}",
            daemon=True,
        )
        self.process.start()
        child.close()
        pid_file = self.work_dir / self.site_name / "worker.pid"
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{self.process.pid}\n")

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.conn.close()
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()


def main(argv=None) -> None:
    import nvflare.client as flare

    args = parse_args(argv)
    flare.init()
    site_name = flare.get_site_name()
    worker = None
    try:
        while flare.is_running():
            model = flare.receive()
            if worker is None:
                total = int(model.total_rounds or 1) * args.local_epochs
                worker = SiteWorker(site_name, args, total, Path.cwd() / "monai_sr_runs" / flare.get_job_id())
            try:
                state, metrics, steps, images = worker.run_round(model.params, args.local_epochs)
            except (InputError, WorkerFailed) as e:
                logger.error(f"site {site_name} round {model.current_round} failed: {e}")
                flare.send(flare.FLModel(params={}, meta={"NUM_STEPS_CURRENT_ROUND": 0}))
                continue
            logger.info(
                f"site {site_name} round {model.current_round}: global model PSNR {metrics['psnr']:.3f} dB, "
                f"SSIM {metrics['ssim']:.4f}"
            )
            params = {k: torch.from_numpy(v) for k, v in state.items()}
            meta = {"NUM_STEPS_CURRENT_ROUND": steps, aggregation.NUM_SAMPLES: images}
            flare.send(flare.FLModel(params=params, metrics=metrics, meta=meta))
    finally:
        if worker is not None:
            worker.stop()


if __name__ == "__main__":
    main()
