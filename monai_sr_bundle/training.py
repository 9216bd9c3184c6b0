"""What the bundle's train config cannot say declaratively: finding the checkpoint to resume from, stopping
on a non-finite loss or at a time limit (with a learning rate annealed over that time), publishing the best
checkpoint as a plain, hashed state dict under ``models/``; and the train config of a method's stage (its
overlay's ``stages``) for the surfaces that train in process.

All of it holds under ``torch.distributed`` (several processes, one per GPU): checkpoints and weights hold
the unwrapped modules the config builds (never a ``DistributedDataParallel`` wrapper's ``module.`` names) and
are written by the first process only, atomically; a non-finite loss in any process stops every process."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import SimpleInferer

from monai_sr_bundle import methods
from monai_sr_bundle.distributed import is_distributed, is_main_process, world_size
from monai_sr_bundle.engine import PRECISIONS, check_precision
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.losses.batch import SRBatch
from monai_sr_bundle.methods import BUNDLE_ROOT
from monai_sr_bundle.transforms.noise import NOISE_LEVEL_KEY

CONFIGS = BUNDLE_ROOT / "configs"
#: the key of the abnormality-box mask on the HR grid (``BoxesToMaskd`` in the train config), its own item
#: through the transforms; the loss terms read it as the named batch's ``mask``
BOX_MASK_KEY = "box_mask"
#: the batch's keys under the names a loss term reads them by (:class:`~monai_sr_bundle.losses.batch.SRBatch`)
BATCH_NAMES = {"image": "lr", "label": "hr", BOX_MASK_KEY: "mask"}


def named_batch(batchdata: dict, device=None, non_blocking: bool = False) -> SRBatch:
    """The collated batch by name (``lr``, ``hr``, ``mask``; every other item under its own key), its tensors
    on ``device`` without MONAI's metadata (a loss needs none, and the engine strips it from its label only
    when the label is a tensor). Every prepare-batch of a stage builds its label here."""
    named = SRBatch()
    for key, value in batchdata.items():
        if isinstance(value, torch.Tensor):
            value = value.as_subclass(torch.Tensor).to(device=device, non_blocking=non_blocking)
        named[BATCH_NAMES.get(key, key)] = value
    return named


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


def stage_configs(method: methods.Method, stage: str | None = None) -> list[str]:
    """The config files of ``method``'s ``stage`` (default: its last, which publishes the method's weights),
    relative to the bundle root as a recorded command names them: ``inference.json``, the stage's base
    (its first file), the method's overlay, then the stage's other files
    (:attr:`~monai_sr_bundle.methods.Method.stages`)."""
    stage = stage or (list(method.stages) or [None])[-1]
    check_stage(method, stage)
    base, *wiring = method.stages[stage]
    overlay = method.overlay.resolve()
    overlay = overlay.relative_to(BUNDLE_ROOT) if overlay.is_relative_to(BUNDLE_ROOT) else overlay
    return [
        f"{CONFIGS.name}/inference.json",
        f"{CONFIGS.name}/{base}",
        str(overlay),
        *(f"{CONFIGS.name}/{f}" for f in wiring),
    ]


def train_configs(method: str, stage: str | None = None) -> list[str]:
    """The config files (absolute paths) that train ``method``'s ``stage``, by default its last."""
    return [str(BUNDLE_ROOT / f) for f in stage_configs(methods.get(method), stage)]


def resolved_config(method: methods.Method, stage: str = "inference") -> dict:
    """``method``'s config for ``stage`` (``inference`` or one of its training stages) merged as ``monai.bundle
    run`` merges its files, with every reference to a plain value replaced by that value: what a run uses, at a
    glance, instead of three or four files read side by side. Expressions (``$``) and objects (``_target_``)
    stay as written: they are code, built when the run starts."""
    from monai.bundle import ConfigParser

    if stage == "inference":
        files = [str(CONFIGS / "inference.json"), str(method.overlay)]
    else:
        files = [str(BUNDLE_ROOT / f) for f in stage_configs(method, stage)]
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"bundle_root": str(BUNDLE_ROOT), "method": method.name, "scale": method.scale})
    parser["modality"] = method.modality

    def plain(value) -> bool:
        if isinstance(value, dict):
            return "_target_" not in value and all(map(plain, value.values()))
        if isinstance(value, list):
            return all(map(plain, value))
        return not (isinstance(value, str) and value[:1] in "@$%")

    def resolve(value, depth: int = 0):
        if isinstance(value, dict):
            return {k: resolve(v, depth) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, depth) for v in value]
        if isinstance(value, str) and value.startswith("@") and depth < 16:
            target = resolve(parser.get(value[1:], value), depth + 1)
            return target if plain(target) else value
        return value

    return resolve(parser.get())


def train_parser(method: str | None = None, multi_gpu: bool = False):
    """The bundle's train config for ``method`` (default: the default method), parsed lazily, with
    ``bundle_root`` at this package and the ``method`` key set, as ``--method`` does on the command line;
    ``multi_gpu``: with ``configs/multi_gpu_train.json`` last, for a process that torchrun started."""
    from monai.bundle import ConfigParser

    method = method or methods.default_name()
    parser = ConfigParser()
    extra = [str(BUNDLE_ROOT / "configs" / "multi_gpu_train.json")] if multi_gpu else []
    parser.read_config(train_configs(method) + extra)
    parser["bundle_root"] = str(BUNDLE_ROOT)
    parser["method"] = method
    return parser


def training_data(datalist_file: str | os.PathLike | None, dataset_dir: str | None, hr_only: bool = False) -> str:
    """What a run trains and selects on, as ``weights.json`` records it: NIH ChestX-ray14's patient-level
    train split (its size counted) or the datalist file's items. ``hr_only``: a stage that sees only the HR
    patches (the autoencoder reconstructs them)."""
    if datalist_file is None:
        from monai_sr_bundle.data.datalist import nih_datalist

        count = len(nih_datalist("train", dataset_dir))
        use = ": HR patches only (the autoencoder reconstructs them)" if hr_only else ""
        return (
            "NIH ChestX-ray14 (../shared/data/nih_cxr14 or $MONAI_SR_DATA): images_512, split=train of images.csv "
            f"({count} images, patient-level){use}; first val_limit images of split=val for model selection"
        )
    items = "HR patches of its training items" if hr_only else "its training items"
    return f"datalist file {datalist_file}: {items}; the first val_limit validation items for model selection"


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


def check_stage(method: methods.Method, stage: str | None) -> None:
    """Refuse a stage the method does not declare (a GAN trained without its discriminator, a latent method's
    denoiser on an untrained latent), naming the config files of the stages it has."""
    if not method.stages:
        raise InputError(
            f'method {method.name!r} declares no training stages (its overlay {method.overlay} has no "stages"); '
            f"train one of {', '.join(methods.trainable_names())}."
        )
    if stage not in method.stages:
        declared = "; ".join(
            f'{name}: --config_file "[{",".join(repr(f) for f in stage_configs(method, name))}]"'
            for name in method.stages
        )
        raise InputError(
            f"method {method.name!r} has no {stage!r} stage (its overlay {method.overlay} declares its stages); "
            f"train it, in this order, with {declared}."
        )


def check_configs(method: methods.Method, stage: str | None, stages: dict | None, network_def: object) -> None:
    """Refuse, before anything is written, a train run whose configs are not ``method``'s ``stage``
    (:func:`check_stage`) or do not hold the method's own overlay: without it the method's settings would
    silently stay at their defaults, with another method's they would be that method's. ``stages`` and
    ``network_def`` are the merged config's (the overlay's declaration and network)."""
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


def frozen_autoencoder(network, weights: str | os.PathLike | None):
    """``network`` with its autoencoder frozen, first loaded from ``weights`` (the autoencoder stage's; None
    keeps the one ``network`` holds, e.g. from its full weights when training goes on)."""
    if weights is not None:
        if not Path(weights).is_file():
            raise InputError(
                f"{weights}: no autoencoder weights; train the autoencoder first (configs/train_autoencoder.json "
                "after configs/train.json) or pass --autoencoder_weights."
            )
        try:
            methods.load_weights(network.autoencoder, weights)
        except InputError as e:
            raise InputError(
                f"{str(e).rstrip('.')}; the autoencoder stage and the method's overlay must agree on its channels, "
                "block and latent_channels."
            ) from e
    network.autoencoder.requires_grad_(False)
    return network


def autoencoder_weights(method: methods.Method, init_weights: str | os.PathLike | None) -> str | None:
    """The autoencoder a latent stage freezes: the autoencoder stage's published weights, or none to load when
    training goes on from ``init_weights`` (a latent method's full weights hold its autoencoder)."""
    return str(method.autoencoder_weights_path) if init_weights is None else None


def file_record(path: str | os.PathLike | None) -> dict | None:
    """A weights file a run builds on, as its provenance names it: file name and sha256 (None: no file)."""
    return None if path is None else {"weights": os.path.basename(path), "sha256": sha256(path)}


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


def explain_a_lost_process(run_dir: str | os.PathLike) -> None:
    """When another process of a distributed run dies, torchrun ends this one (SIGTERM), or this one's next
    exchange with it fails first (a gloo or NCCL connection error): either way say, in place of a traceback,
    which checkpoint training can resume from, beside torchrun's report of the process that failed. Epoch
    checkpoints are written atomically, so the newest one on disk is whole. Said once: torchrun's SIGTERM can
    come while the process exits after a failed exchange."""
    import signal
    import sys

    said = []

    def say() -> None:
        if said:
            return
        said.append(True)
        last = latest_checkpoint(run_dir) or "none (no epoch finished)"
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


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """Newest ``checkpoint_epoch=N.pt`` in ``run_dir`` (by N), or None when training starts fresh."""
    found = []
    for p in Path(run_dir).glob("checkpoint_epoch=*.pt"):
        m = re.fullmatch(r"checkpoint_epoch=(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), str(p)))
    return max(found)[1] if found else None


def train_command(config_files: list[str], method: methods.Method, settings: dict) -> str:
    """The bundle command that reruns a training, as ``weights.json`` records it: the stages, the method and
    each stage setting (``None``: left at its default, omitted); a setting equal to the method's overlay is
    left to the overlay, any other is written out, so overrides given on the command line are kept."""
    stages = ",".join(f"'{f}'" for f in config_files)
    parts = [f"cd {BUNDLE_ROOT.name} && python -m monai.bundle run --config_file", f'"[{stages}]"']
    parts += ["--method", method.name]
    for key, value in settings.items():
        if value is None or method.config.get(key, object()) == value:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        if not re.fullmatch(r"[\w./:-]+", text):  # a dict's JSON has double quotes: single-quote it instead
            text = f'"{text}"' if '"' not in text else shlex.quote(text)
        parts += [f"--{key}", text]
    return " ".join(parts)


def publish_weights(
    best_ckpt: str | os.PathLike,
    weights_path: str | os.PathLike,
    provenance: dict,
    key_metric: str = "val_psnr",
    lower_is_better: bool = False,
) -> str | None:
    """Save the network state dict of ``best_ckpt`` to ``weights_path`` (atomically) and record its sha256
    and ``provenance`` (training command, data split, best ``key_metric``, and the training time that
    :func:`track_train_time` kept beside the checkpoint) in ``models/weights.json``.

    ``lower_is_better`` says that the saver ranked checkpoints by the negated metric (the GAN stage selects
    by LPIPS), so the recorded value is the metric itself. Returns the sha256; None in the other processes of
    a distributed run, which write nothing."""
    best_ckpt, weights_path = Path(best_ckpt), Path(weights_path)
    if not is_main_process():
        return None
    if not best_ckpt.is_file():
        raise InputError(f"{best_ckpt}: no best checkpoint was saved; did validation run at least once?")
    state = torch.load(best_ckpt, map_location="cpu", weights_only=True)
    # a key-metric checkpoint holds the network's state dict plus the saver's own bookkeeping, whose
    # "_saved" list holds (priority, name): the best validation score, negated for a lower-is-better metric
    saved = (state.get("checkpointer") or {}).get("_saved") or []
    if saved:
        best = max(p for p, _ in saved)
        provenance = {**provenance, f"best_{key_metric}": round(float(-best if lower_is_better else best), 4)}
    timing = best_ckpt.parent / TRAIN_SECONDS
    if timing.is_file():
        took = json.loads(timing.read_text())
        provenance = {**provenance, "train_minutes": round(took["seconds"] / 60, 2), "train_device": took["device"]}
        if "epochs" in took and took["epochs"] != provenance.get("epochs"):
            provenance["epochs_run"] = took["epochs"]  # a time limit or a stop ended it early
    return write_weights({k: v for k, v in state.items() if k != "checkpointer"}, weights_path, provenance)


def write_weights(state: dict, weights_path: str | os.PathLike, provenance: dict) -> str:
    """Save a plain state dict to ``weights_path`` atomically and record its sha256 and ``provenance`` in the
    ``weights.json`` beside it; returns the sha256. Every published weight file goes through here; the
    manifest is read (and a broken one refused) before the first byte is written, and rewritten under a lock
    and atomically, so two trainings that publish at once keep both. No temporary file outlives a failure."""
    import fcntl

    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    manifest = weights_path.parent / methods.MANIFEST
    temporaries = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in (weights_path, manifest)]
    folder = os.open(weights_path.parent, os.O_RDONLY)  # the lock is on the folder: no lock file left behind
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        entries = methods.read_manifest(weights_path.parent)
        torch.save(state, temporaries[0])
        os.replace(temporaries[0], weights_path)
        digest = sha256(weights_path)
        entries[weights_path.name] = {"sha256": digest, **provenance}
        temporaries[1].write_text(json.dumps(dict(sorted(entries.items())), indent=2) + "\n")
        os.replace(temporaries[1], manifest)
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        os.close(folder)  # closing releases the lock
    return digest


def check_weights_output(output: str | os.PathLike, sources: list[Path]) -> Path:
    """Refuse, before anything is read or written, the ``-o`` of a weights converter (``pretrained``,
    ``interpolate``) that it must not write: ``''``; an existing path that is not a regular file (a device would
    become a file, a folder keep a temporary); one of ``sources``; a file monai-sr did not write (its sha256 not
    in the manifest beside it, nor a note :func:`~monai_sr_bundle.data.writers.check_replaceable` reads); a name
    below a file; or a place whose manifest :func:`write_weights` could not update. Returns ``output``."""
    import stat

    from monai_sr_bundle.data.writers import check_replaceable

    if not os.fspath(output):
        raise InputError("-o '': give the weights file to write, e.g. models/<method>_cxr_x4.pt.")
    output = Path(output)
    if output.name == methods.MANIFEST:
        raise InputError(f"{output}: the name of the manifest beside weights files; give another name.")
    if os.path.lexists(output) and not stat.S_ISREG(os.lstat(output).st_mode):
        raise InputError(
            f"{output}: exists and is not a regular file (a folder, link or device); give a new file name."
        )
    if any(output.resolve() == p.resolve() for p in sources):
        raise InputError(f"{output}: the output would overwrite a file it is made from; choose another.")
    recorded = methods.read_manifest(output.parent).get(output.name, {}).get("sha256")
    if not (recorded and output.is_file() and sha256(output) == recorded):
        check_replaceable([output])
    return output


def interpolate_weights(
    method: str,
    psnr_weights: str | os.PathLike,
    gan_weights: str | os.PathLike,
    alpha: float,
    output: str | os.PathLike,
    scale: int = 4,
    modality: str = "cxr",
) -> str:
    """ESRGAN's network interpolation (Wang et al. 2018, section 3.4): every parameter is ``alpha`` times the
    PSNR-trained network's plus ``1 - alpha`` times the GAN-trained one's, which trades GAN texture (and its
    artefacts) for fidelity smoothly, with no retraining. Both files must be weights of ``method``; the result
    is written through ``write_weights`` with both sources' sha256 (and their ``weights.json`` entries, when
    there are any) as its provenance; returns its sha256."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be between 0 (the GAN weights) and 1 (the PSNR weights), got {alpha!r}.")
    sources = {"psnr": Path(psnr_weights), "gan": Path(gan_weights)}
    output = check_weights_output(output, list(sources.values()))
    sr_method = methods.get(method, scale, modality)
    states = {k: sr_method.network(p).state_dict() for k, p in sources.items()}  # refuses foreign weights
    state = {
        k: alpha * v + (1 - alpha) * states["gan"][k] if v.is_floating_point() else states["gan"][k]
        for k, v in states["psnr"].items()
    }
    origin = {k: {"file": p.name, "sha256": sha256(p), **methods.weights_record(p)} for k, p in sources.items()}
    command = (
        f"monai-sr interpolate -m {method} --scale {scale} --modality {modality} --alpha {alpha:g} "
        f"{sources['psnr']} {sources['gan']} -o {output}"
    )
    # the blend reads images as its sources were trained to (a HU window for CT weights) and on their data
    inherited = {k: origin["gan"][k] for k in ("data", "intensity") if k in origin["gan"]}
    provenance = {"command": command, **inherited, "scale": sr_method.scale, "modality": sr_method.modality}
    return write_weights(state, output, {**provenance, "alpha": alpha, "interpolated_from": origin})


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
    long they took to train (:func:`publish_weights`)."""
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
