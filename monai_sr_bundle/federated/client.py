"""NVFlare client of one site (Client API): each round it receives the global weights, scores them on the
site's validation images (PSNR, SSIM), trains them for the local epochs through the bundle's own train
config on the site's training images, and sends back the weights (once it has checked they are finite) with
the steps taken and its number of training images (the server's aggregation weight, capped there).

The training runs in a worker process of its own (its PID in ``monai_sr_runs/<job id>/<site>/worker.pid``): a
worker that fails, is killed or runs out of memory fails the site's round, not the job. NVFlare ends a
whole job when a site's job process dies, so that process only relays. A failed round answers with an
empty result; why it failed is logged at the site and never sent.

A site whose config asks for ``"processes": N`` (its GPUs) gets N workers started by torchrun, which train each
round together as ``configs/multi_gpu_train.json`` does (NVFlare's multi-GPU client pattern): rank 0 talks to
the relay over a loopback connection that only the holder of the relay's one-time key can open, and passes
each request on to the others. A failure in any of them ends them all (the round fails, saying why); the next
round starts them again.

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
import secrets
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Client, Listener
from pathlib import Path

import numpy as np
import torch

from monai_sr_bundle import distributed
from monai_sr_bundle.errors import InputError, first_line
from monai_sr_bundle.federated import aggregation
from monai_sr_bundle.federated.sites import SiteData, load_site
from monai_sr_bundle.launch import safe_children, safe_env
from monai_sr_bundle.stages import train_parser
from monai_sr_bundle.training.loop import stop_on_nan

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
        several = distributed.launched_processes() > 1  # one of a site's torchrun processes
        parser = train_parser(method, multi_gpu=several)
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
                # a lost process fails the round and the relay says why; there is no command to rerun
                **({"explain_lost_process": False} if several else {}),
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
    cli.add_argument("--serve", help=argparse.SUPPRESS)  # a torchrun worker: where its relay listens
    return cli.parse_args(argv)


class WorkerFailed(RuntimeError):
    """The site's worker process ended without answering (killed, out of memory, crashed)."""


#: the environment variable that hands a torchrun worker the relay's one-time connection key
KEY_ENV = "MONAI_SR_RELAY_KEY"
#: rank 0's message to the other workers while the relay has no request yet (collectives have a timeout)
WAIT = "wait"
#: seconds rank 0 waits for a request before telling the others to go on waiting
WAIT_S = 60


def _work(conn, site_name: str, args: argparse.Namespace, total_epochs: int, work_dir: str) -> None:
    """A worker process: builds the site's trainer once, then answers one ``(params, epochs)`` request per
    round with ``("ok", (state, metrics, steps, images))`` or ``("error", sentence)``; ends when the relay does.
    One of several torchrun processes (``conn`` only at rank 0) leaves a failure's sentence in
    ``<site>/failure.txt`` and exits instead, since the others may be waiting for it in a collective."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    several = distributed.launched_processes() > 1
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
        if several:
            _give_up(Path(work_dir) / site_name, e)
        trainer, failure = None, str(e)
    while True:
        request = _next_request(conn)
        if request is None:  # the relay is gone
            distributed.teardown()
            return
        if trainer is None:
            conn.send(("error", failure))
            continue
        params, epochs = request
        try:
            trainer.load_global(params)
            metrics = trainer.evaluate()
            steps = trainer.train(epochs)
            answer = ("ok", (trainer.update(), metrics, steps, len(site.training)))
        except InputError as e:
            if several:
                _give_up(Path(work_dir) / site_name, e)
            answer = ("error", str(e))
        if conn is not None:
            conn.send(answer)


def _next_request(conn):
    """The relay's next request, or None once it is gone: read by rank 0, which passes it on to the other
    processes of a torchrun site (and tells them to wait on every ``WAIT_S`` seconds without one)."""
    while True:
        message = WAIT
        if conn is not None:
            try:
                if conn.poll(WAIT_S if distributed.world_size() > 1 else None):
                    message = conn.recv()
            except (EOFError, OSError):
                message = None
        if distributed.world_size() > 1:
            box = [message]
            torch.distributed.broadcast_object_list(box, src=0)
            message = box[0]
        if message != WAIT:
            return message


def _give_up(site_dir: Path, error: InputError) -> None:
    """End this torchrun process over ``error``, leaving its sentence for the relay (the others end with it)."""
    logger.error(str(error))
    site_dir.mkdir(parents=True, exist_ok=True)
    part = site_dir / f".failure.{os.getpid()}"
    part.write_text(str(error))
    os.replace(part, site_dir / "failure.txt")
    sys.exit(1)


def _torchrun_worker(serve: str, args: argparse.Namespace) -> None:
    """One of a site's torchrun processes: rank 0 connects to the relay named by ``serve``."""
    spec = json.loads(serve)
    conn = None
    if int(os.environ.get("RANK", "0")) == 0:
        conn = Client(tuple(spec["address"]), authkey=bytes.fromhex(os.environ[KEY_ENV]))
    os.environ.pop(KEY_ENV, None)
    _work(conn, spec["site"], args, spec["total_epochs"], spec["work_dir"])


class SiteWorker:
    """The relay's handle on the worker process (or a site's torchrun processes); new ones are started after
    they have died."""

    def __init__(
        self, site_name: str, args: argparse.Namespace, total_epochs: int, work_dir: Path, argv: list[str]
    ) -> None:
        self.site_name, self.args, self.total_epochs, self.work_dir = site_name, args, total_epochs, work_dir
        self.argv = argv  # the client's own arguments, which torchrun processes get too
        self.process = None

    @property
    def site_dir(self) -> Path:
        return self.work_dir / self.site_name

    def alive(self) -> bool:
        if isinstance(self.process, subprocess.Popen):
            return self.process.poll() is None
        return self.process is not None and self.process.is_alive()

    def run_round(self, params: dict, epochs: int):
        """``(state, metrics, steps, training images)`` of one round, or :class:`InputError` /
        :class:`WorkerFailed`."""
        if not self.alive():  # a site config or datalist it refuses fails the round before a process starts
            self._start(load_site(self.site_name, self.args.site_config).processes)
        try:
            self.conn.send(({k: v.numpy() if torch.is_tensor(v) else v for k, v in dict(params or {}).items()}, epochs))
            while not self.conn.poll(1.0):
                if not self.alive():  # torchrun itself killed: its processes may linger, never answering
                    raise EOFError
            status, answer = self.conn.recv()
        except (EOFError, OSError):  # the worker is gone: killed, out of memory or crashed
            self._lost()
        if status == "error":
            raise InputError(answer)
        return answer

    def _lost(self):
        """Raise why the worker(s) ended: the sentence a torchrun process left, else the exit code."""
        self.stop()
        several = isinstance(self.process, subprocess.Popen)
        code = self.process.returncode if several else self.process.exitcode
        self.process = None
        failure = self.site_dir / "failure.txt"
        if failure.is_file():
            reason = failure.read_text()
            failure.unlink()
            raise InputError(reason)
        what = "its torchrun worker processes" if several else "its worker process"
        raise WorkerFailed(f"site {self.site_name}: {what} ended (exit code {code}).") from None

    def _start(self, processes: int) -> None:
        self.site_dir.mkdir(parents=True, exist_ok=True)
        if processes > 1:
            self._start_torchrun(processes)
        else:
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
            with safe_children():  # spawned: `python -c` in this folder, which must not be on its sys.path
                self.process.start()
            child.close()
        (self.site_dir / "worker.pid").write_text(f"{self.process.pid}\n")

    def _start_torchrun(self, processes: int) -> None:
        """``processes`` workers under torchrun, in a process group of their own (stopped together); rank 0
        connects back to a loopback listener that accepts only the holder of a one-time key."""
        key = secrets.token_bytes(32)
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            serve = {
                "address": list(listener.address),
                "site": self.site_name,
                "total_epochs": self.total_epochs,
                "work_dir": str(self.work_dir),
            }
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
            command += [f"--nproc_per_node={processes}", "-m", "monai_sr_bundle.federated.client", *self.argv]
            self.process = subprocess.Popen(
                command + ["--serve", json.dumps(serve)],
                env=safe_env({**os.environ, KEY_ENV: key.hex()}),  # the ranks' `-m`: not from this folder
                start_new_session=True,
            )
            accepted = []
            waiter = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
            waiter.start()
            while waiter.is_alive() and self.alive():
                waiter.join(1.0)
            if not accepted:  # torchrun ended first (a site config or image it refused); the listener closes
                self.conn = None
                self._lost()
            self.conn = accepted[0]
        logger.info(f"site {self.site_name}: training in {processes} processes (torchrun)")

    def stop(self) -> None:
        if self.process is None:
            return
        if isinstance(self.process, subprocess.Popen):
            if self.conn is not None:
                self.conn.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:  # what is left of the group: all of it when torchrun was stuck, orphans when it was killed
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        elif self.process.is_alive():
            self.conn.close()
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.serve:
        return _torchrun_worker(args.serve, args)
    import nvflare.client as flare

    flare.init()
    site_name = flare.get_site_name()
    worker = None
    try:
        while flare.is_running():
            model = flare.receive()
            if worker is None:
                total = int(model.total_rounds or 1) * args.local_epochs
                work_dir = Path.cwd() / "monai_sr_runs" / flare.get_job_id()
                worker = SiteWorker(site_name, args, total, work_dir, list(sys.argv[1:] if argv is None else argv))
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
