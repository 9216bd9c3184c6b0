"""What every training stage's loop shares on MONAI's engines (``configs/train.json``): the supervised step's
prepare-batch and inferer, the networks a loss term borrows, the validation's metric wiring, the check that
the configs are the method's, resuming from the newest epoch checkpoint, stopping on a non-finite loss or at a
time limit with the learning rate annealed over that time, and a last validation."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import SimpleInferer

from monai_sr_bundle import methods
from monai_sr_bundle.distributed import is_distributed, is_main_process, world_size
from monai_sr_bundle.engine import PRECISIONS, check_precision
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.losses.batch import named_batch
from monai_sr_bundle.stages import check_stage, stage_configs
from monai_sr_bundle.transforms.noise import NOISE_LEVEL_KEY


class SRPrepareBatch(PrepareBatch):
    """``(LR image, named batch)`` from an SR batch: the engine takes the
    :class:`~monai_sr_bundle.losses.batch.SRBatch` as its label and hands it to the loss, whose terms read the
    HR image, the box mask or the LR image by name. A batch that carries each image's noise level (a
    degradation-aware method's ``conditioning`` step) hands it to the network as ``noise_level`` too."""

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        batch = named_batch(batchdata, device, non_blocking)
        if NOISE_LEVEL_KEY not in batch:
            return batch.lr, batch
        level = torch.as_tensor(batch[NOISE_LEVEL_KEY]).to(device=device, dtype=batch.lr.dtype)
        return batch.lr, batch, (), {"noise_level": level}


class AutocastInferer(SimpleInferer):
    """The training step's network under autocast in ``precision`` (the bundle's ``--precision``, as inference
    reads it; ``fp32`` and ``auto``: none), its output back in float32 for the loss: ``bf16`` made a RUNet step
    1.27x faster on a CPU with native bf16 (MONAI's ``amp`` autocasts on CUDA only)."""

    def __init__(self, precision: str = "fp32", device: str | torch.device = "cpu") -> None:
        super().__init__()
        precision = "fp32" if precision == "auto" else precision
        check_precision(precision, device)
        self.dtype = PRECISIONS[precision]

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        if self.dtype is None:
            return network(inputs, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            return network(inputs, *args, **kwargs).float()


def auxiliary_network(
    method: str, scale: int, modality: str, weights: str | os.PathLike | None = None, device="cpu"
) -> torch.nn.Module:
    """A network a stage declares under ``auxiliary`` (a teacher) for the loss blocks that name it
    (``"teacher": "@auxiliary#teacher"``): ``method`` loaded with its shipped weights (or ``weights``), in eval
    mode and without gradients. The config builds it once; it is in no optimizer, checkpoint or published
    weights, which hold the config's ``network`` alone."""
    return methods.get(method, scale, modality).load(weights, device).requires_grad_(False)


def loss_source(method: methods.Method) -> str:
    """Where a stage's loss blocks are set, for the loss's error messages."""
    return f"the stage configs or {method.overlay}"


def key_metric(metrics: dict, key: str) -> dict:
    """The validation metric that selects the best checkpoint (``key_metric``), as the evaluator takes it."""
    return {key: metrics[key]}


def other_metrics(metrics: dict, key: str) -> dict:
    """The validation metrics that are only reported: all but ``key_metric``."""
    return {k: m for k, m in metrics.items() if k != key}


def metric_cmp(lower_is_better: bool):
    """How the evaluator ranks a new score against the best so far: lower wins for a distance (LPIPS)."""
    import operator

    return operator.lt if lower_is_better else operator.gt


def every(n: int):
    """A ``StatsHandler`` ``iteration_log`` that logs every ``n``-th iteration."""
    return lambda engine, iteration: iteration % int(n) == 0


def named_outputs(names: dict[str, str]):
    """An ``output_transform`` that logs the trainer's outputs under shorter names (``{name: output key}``),
    of the first item of a decollated batch."""

    def named(output) -> dict:
        item = output[0] if isinstance(output, list) else output
        return {name: item[key] for name, key in names.items()}

    return named


def check_configs(method: methods.Method, stage: str | None, stages: dict | None, network_def: object) -> None:
    """Refuse, before anything is written, a train run whose configs are not ``method``'s ``stage``
    (:func:`~monai_sr_bundle.stages.check_stage`) or do not hold the method's own overlay: without it the
    method's settings would silently stay at their defaults, with another method's they would be that method's.
    ``stages`` and ``network_def`` are the merged config's (the overlay's declaration and network)."""
    check_stage(method, stage)
    own = method.network()
    if stages != method.stages or type(network_def) is not type(own) or _shapes(network_def) != _shapes(own):
        raise InputError(
            f"the train configs do not hold the overlay of method {method.name!r} ({method.overlay}) after "
            f"{method.stages[stage][0]}; train it with --config_file "
            f'"[{",".join(repr(f) for f in stage_configs(method, stage))}]".'
        )


def _shapes(module: object) -> dict | None:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()} if isinstance(module, torch.nn.Module) else None


def stop_on_nan(trainer, run_dir: str | os.PathLike) -> None:
    """Stop training with one sentence when a loss stops being finite, before the epoch's checkpoint is
    written: the checkpoints of the epochs before stay the last good ones to resume from. In a distributed
    run the processes agree each iteration, so a NaN in one stops them all (none waits for the others)."""
    import torch.distributed as dist
    from ignite.engine import Events

    def check(engine) -> None:
        output = engine.state.output
        if isinstance(output, list):  # decollated: every item holds the batch's losses
            output = output[0] if output else {}
        bad = None
        for key, value in (output if isinstance(output, dict) else {}).items():
            if "loss" not in str(key) or not isinstance(value, (torch.Tensor, float)):
                continue
            value = torch.as_tensor(value, dtype=torch.float32)
            if not torch.isfinite(value).all():
                bad = f"the {key} is {value.mean().item()}"
                break
        if is_distributed():
            flag = torch.tensor([float(bad is not None)], device=engine.state.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and bad is None:
                bad = "a loss is not finite in another process"
        if bad is not None:
            last = latest_checkpoint(run_dir) or "none (no epoch finished)"
            raise InputError(
                f"training stopped at epoch {engine.state.epoch}, iteration {engine.state.iteration}: {bad}; "
                f"the last good checkpoint is {last}; lower learning_rate and resume from it."
            )

    trainer.add_event_handler(Events.ITERATION_COMPLETED, check)


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """Newest ``checkpoint_epoch=N.pt`` in ``run_dir`` (by N), or None when training starts fresh."""
    found = []
    for p in Path(run_dir).glob("checkpoint_epoch=*.pt"):
        m = re.fullmatch(r"checkpoint_epoch=(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), str(p)))
    return max(found)[1] if found else None


def attach_resume(trainer, run_dir: str | os.PathLike, best_saver, checkpoint: dict, resume: bool = True) -> None:
    """Save the whole training state every epoch to ``run_dir`` and, with ``resume``, continue from the
    newest such checkpoint, including the best-so-far validation score kept by ``best_saver``.

    ``checkpoint`` names what the state is (the train config's ``checkpoint``: the network, its optimizer and
    schedule; a GAN stage adds its discriminator): the modules the config builds, not the trainer's (a
    ``DistributedDataParallel`` wrapper), so every process resumes from the same names. Done here rather
    than in the config because these handlers refer to the trainer that holds them."""
    from monai.handlers import CheckpointLoader, CheckpointSaver

    state = {**checkpoint, "trainer": trainer}
    latest = latest_checkpoint(run_dir)
    if resume and latest:
        _check_resumable(latest, state)
        CheckpointLoader(load_path=latest, load_dict=state, map_location=trainer.state.device).attach(trainer)
        best = Path(run_dir) / "best.pt"
        if best.is_file():
            CheckpointLoader(load_path=str(best), load_dict={"checkpointer": best_saver}).attach(trainer)
    if is_main_process():
        CheckpointSaver(save_dir=str(run_dir), save_dict=state, save_interval=1, n_saved=1).attach(trainer)


def _check_resumable(checkpoint: str, state: dict) -> None:
    """Refuse in one sentence a checkpoint saved from other networks than these (an overlay changed since, or
    another run's folder), which the loader would report as a page of missing and mismatched keys."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for part, module in state.items():
        if not isinstance(module, torch.nn.Module):
            continue
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in saved.get(part, {}).items()}
        if found != expected:
            differ = sum(found.get(k) != expected.get(k) for k in found.keys() | expected.keys())
            raise InputError(
                f"{checkpoint}: this checkpoint was saved from another {part} than the config builds now (tensors "
                f"that differ in name or shape: {differ}); delete its folder to start afresh, or pass --resume false."
            )


#: in a run folder: the seconds of training the epoch checkpoints there hold, over every resumed run
TRAIN_SECONDS = "train_seconds.json"


def track_train_time(trainer, run_dir: str | os.PathLike) -> None:
    """Keep in ``run_dir`` the wall time of the finished epochs, added up over resumed runs (an epoch cut
    short is not counted: its work is redone), and where they ran, so that the published weights say how
    long they took to train (:func:`~monai_sr_bundle.training.publish.publish_weights`)."""
    import time

    from ignite.engine import Events

    path = Path(run_dir) / TRAIN_SECONDS
    clock = {}

    def start(engine) -> None:
        clock["mark"] = time.perf_counter()
        clock["total"] = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0

    def epoch_done(engine) -> None:
        now = time.perf_counter()
        clock["total"] += now - clock["mark"]
        clock["mark"] = now
        if is_main_process():
            where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
            where = where if world_size() == 1 else f"{world_size()} processes, {where}"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            took = {"seconds": round(clock["total"], 3), "device": where, "epochs": engine.state.epoch}
            tmp.write_text(json.dumps(took))
            os.replace(tmp, path)

    trainer.add_event_handler(Events.STARTED, start)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_done)


def stop_after(trainer, run_dir: str | os.PathLike, minutes: float | None) -> None:
    """End training after the first epoch that brings its wall time (:func:`track_train_time`'s, summed over
    resumed runs) to ``minutes``; None: no limit. For a run that must finish by a deadline (a GPU lent for a
    quarter of an hour), paired with :class:`TimedCosineLR`; the last validation and the publishing still
    run. Register it after :func:`track_train_time`, which writes the clock it reads."""
    if minutes is None:
        return
    from ignite.engine import Events

    path = Path(run_dir) / TRAIN_SECONDS

    def check(engine) -> None:
        if path.is_file() and json.loads(path.read_text())["seconds"] >= 60 * float(minutes):
            engine.terminate()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, check)


def lr_schedule(optimizer: torch.optim.Optimizer, epochs: int, minutes: float | None = None, eta_min: float = 1e-6):
    """Cosine annealing to ``eta_min`` over the run: over ``epochs``, or over ``minutes`` of training when the
    run has a time limit (:class:`TimedCosineLR`)."""
    if minutes is None:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=eta_min)
    return TimedCosineLR(optimizer, minutes, eta_min)


class TimedCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Cosine annealing over a wall-time budget rather than an epoch count, stepped once an epoch: the
    learning rate reaches ``eta_min`` when ``minutes`` of training have passed, however many epochs that
    took (a GPU run cannot know its epochs' speed before it starts). The time spent is in its state, so a
    resumed run continues the curve."""

    def __init__(self, optimizer: torch.optim.Optimizer, minutes: float, eta_min: float = 0.0) -> None:
        if not float(minutes) > 0:
            raise InputError(f"time_limit_minutes must be a positive number of minutes, not {minutes!r}.")
        self.seconds, self.eta_min, self.elapsed, self._mark = 60 * float(minutes), eta_min, 0.0, None
        super().__init__(optimizer)

    def step(self, epoch=None) -> None:
        import time

        now = time.perf_counter()
        if self._mark is not None:
            self.elapsed += now - self._mark
        self._mark = now
        super().step()

    def get_lr(self) -> list[float]:
        done = min(self.elapsed / self.seconds, 1.0)
        return [self.eta_min + (lr - self.eta_min) * (1 + math.cos(math.pi * done)) / 2 for lr in self.base_lrs]

    def load_state_dict(self, state_dict: dict) -> None:
        """The time spent so far from the checkpoint; the budget and the clock are this run's."""
        import time

        super().load_state_dict({**state_dict, "seconds": self.seconds, "_mark": time.perf_counter()})


def validate_at_end(trainer, evaluator, interval: int, in_training: bool = True) -> None:
    """Validate after the last epoch as well when validation in training skips it (``interval`` does, or
    ``in_training`` is off: ``--validate_in_training false``), so that every run has a best checkpoint to
    publish (a diffusion method validates rarely: each validation image is a sampling run)."""
    from ignite.engine import Events

    def last(engine) -> None:
        if not in_training or engine.state.epoch % interval:
            evaluator.run(engine.state.epoch)

    trainer.add_event_handler(Events.COMPLETED, last)
