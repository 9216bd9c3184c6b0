"""Several processes, one per GPU (gloo processes on a CPU): the calls of ``configs/multi_gpu_train.json`` and
``configs/multi_gpu_evaluate.json``, launched as the MONAI model zoo documents it::

    torchrun --standalone --nnodes=1 --nproc_per_node=N -m monai.bundle run \\
        --config_file "['configs/inference.json','configs/train.json',...,'configs/multi_gpu_train.json']"

The single-process configs call :func:`data_parallel` and :func:`is_main_process` too: both are no-ops
without a process group, so one file per stage serves one process and many."""

from __future__ import annotations

import datetime
import os
import weakref
from collections.abc import Callable, Sized

import torch

from monai_sr_bundle.errors import InputError

#: the ``DistributedDataParallel`` wrappers :func:`data_parallel` made in this process, for :func:`teardown`
_WRAPPERS: weakref.WeakSet = weakref.WeakSet()
#: the environment torchrun gives each process it starts
TORCHRUN_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_processes() -> int:
    """How many processes torchrun started for this run (1 without torchrun, before any process group)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this process writes checkpoints, weights, logs and reports: the only one, or rank 0."""
    return rank() == 0


def local_device() -> torch.device:
    """This process's device: GPU ``LOCAL_RANK`` when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def setup(timeout_s: float = 600) -> None:
    """Join the process group torchrun describes: NCCL on GPUs, gloo on the CPU. A process that does not reach
    the others within ``timeout_s`` stops with one sentence instead of waiting for ever."""
    import torch.distributed as dist

    if is_distributed():
        return
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise InputError(
            f"the multi-GPU configs run under torchrun (no {', '.join(missing)} in the environment): launch with "
            "torchrun --standalone --nnodes=1 --nproc_per_node=N -m monai.bundle run ..., or drop "
            "multi_gpu_*.json to run in one process."
        )
    if torch.cuda.is_available():
        if int(os.environ["LOCAL_RANK"]) >= torch.cuda.device_count():
            raise InputError(
                f"process {os.environ['LOCAL_RANK']} has no GPU of its own: this machine has "
                f"{torch.cuda.device_count()}; give --nproc_per_node at most that."
            )
        torch.cuda.set_device(local_device())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
        dist.barrier()  # every process has joined, or this one times out here rather than in training
    except RuntimeError as e:  # torch's DistError (a store that timed out) is one
        raise InputError(
            f"process {os.environ['RANK']} of {os.environ['WORLD_SIZE']} could not reach the others at {where} "
            f"within {timeout_s:g} s ({type(e).__name__}); start every process (torchrun --nproc_per_node) and "
            "check that they can reach that address."
        ) from e
    if not is_main_process():  # one log per run: the engines of the other processes report warnings only
        import logging

        logging.getLogger("ignite.engine.engine").setLevel(logging.WARNING)


def teardown(wait: bool = True) -> None:
    """Leave the process group, by default once every process has finished its work in it (``wait=False`` after
    a failure: the others may be in a collective this process will never reach). The wrappers of
    :func:`data_parallel` let go of the group first: each holds it through its reducer, so it outlived
    ``destroy_process_group`` and gloo tore it down with the interpreter, which sometimes aborted a run that
    had succeeded ("terminate called without an active exception": 7 of 73 two-process runs of a bare DDP
    loop here, 0 of 40 with the reducers released first)."""
    import gc

    import torch.distributed as dist

    if is_distributed():
        if wait:
            dist.barrier()
        for wrapper in list(_WRAPPERS):
            wrapper.__dict__.pop("reducer", None)
        gc.collect()
        dist.destroy_process_group()


def data_parallel(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``module`` as the trainer should call it: wrapped in ``DistributedDataParallel`` (its gradients averaged
    over the processes) in a process group, itself otherwise. Checkpoints keep naming the module itself."""
    if not is_distributed() or not any(p.requires_grad for p in module.parameters()):
        return module
    device = torch.device(device)
    ids = [device] if device.type == "cuda" else None
    wrapper = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
    _WRAPPERS.add(wrapper)
    return wrapper


def this_process_handlers(handlers: list | None) -> list:
    """``handlers`` as this process runs them: all on the first; on the others only those that act on
    training (schedules, validation), not those that log, show progress or save (one log and one best
    checkpoint per run, not one per process)."""
    from ignite.handlers import ProgressBar
    from monai.handlers import CheckpointSaver, StatsHandler

    handlers = list(handlers or [])
    if is_main_process():
        return handlers
    return [h for h in handlers if not isinstance(h, (StatsHandler, ProgressBar, CheckpointSaver))]


def check_shards(items: Sized, what: str) -> None:
    """Refuse no ``items`` at all, or more processes than ``items`` (a process with no data would wait for the
    others for ever)."""
    if not items:
        raise InputError(f"no {what}: give at least one.")
    if len(items) < world_size():
        raise InputError(
            f"{world_size()} processes but {len(items)} {what}: every process needs at least one; give "
            f"--nproc_per_node at most {len(items)}."
        )


def set_determinism(seed: int) -> None:
    """MONAI's ``set_determinism`` with ``seed`` offset by this process's rank: each process draws its own
    patches and augmentations, and a run with the same seed and process count repeats."""
    from monai.utils import set_determinism

    set_determinism(seed=seed + rank())


def shard(items: list) -> list:
    """This process's share of ``items``: every ``world_size()``-th from its rank, none twice, none lost."""
    return items[rank() :: world_size()]


def gather(items: list) -> list:
    """Every process's ``items`` in one list on every process (picklable objects), in rank order."""
    import torch.distributed as dist

    if not is_distributed():
        return list(items)
    parts = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def explain_a_lost_process(last_checkpoint: Callable[[], str | None]) -> None:
    """When another process of a distributed run dies, torchrun ends this one (SIGTERM), or this one's next
    exchange with it fails first (a gloo or NCCL connection error): either way say, in place of a traceback,
    which checkpoint training can resume from (``last_checkpoint()``: the run's newest, which the config binds to
    :func:`~monai_sr_bundle.training.loop.latest_checkpoint`), beside torchrun's report of the process that failed.
    Epoch checkpoints are written atomically, so the newest one on disk is whole. Said once: torchrun's SIGTERM can
    come while the process exits after a failed exchange."""
    import signal
    import sys

    said = []

    def say() -> None:
        if said:
            return
        said.append(True)
        last = last_checkpoint() or "none (no epoch finished)"
        print(
            f"error: process {os.environ.get('RANK', '?')} stopped: another process of this run ended (torchrun's "
            f"report names which); the last checkpoint is {last}; run the same command again to resume from it.",
            file=sys.stderr,
            flush=True,
        )

    def terminated(signum, frame) -> None:
        say()
        os._exit(128 + signum)

    previous = sys.excepthook

    def hook(kind, value, tb) -> None:
        e, seen = value, set()
        while e is not None and id(e) not in seen:
            if isinstance(e, RuntimeError) and any(m in str(e) for m in LOST_PEER):
                return say()
            seen.add(id(e))
            e = e.__cause__ or e.__context__
        previous(kind, value, tb)

    signal.signal(signal.SIGTERM, terminated)
    sys.excepthook = hook


#: what gloo and NCCL say when the other end of a collective is gone
LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted")
