"""Files in, files out: :func:`run_inference` super-resolves files, folders, folder trees and datalists with
one :class:`~monai_sr_bundle.inference.Predictor` and writes each SR image in its input's format family
(DICOM in: a derived series), in one process or a pool of ``workers``; it checks every output place before
anything is written, skips complete outputs on request, and lists the inputs that failed in ``failed.csv``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from monai_sr_bundle.data.readers import expand_inputs, image_kinds, one_series
from monai_sr_bundle.errors import InputError, printable
from monai_sr_bundle.inference import Predictor, validate_input
from monai_sr_bundle.launch import safe_children
from monai_sr_bundle.limits import check_output_size
from monai_sr_bundle.progress import Progress
from monai_sr_bundle.request import SRRequest
from monai_sr_bundle.uncertainty import MAPS

logger = logging.getLogger(__name__)


def check_output_dir(output_dir: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder that is a file, lies under a file, cannot be written, or has a
    name longer than the file system takes (the OS would refuse it at the first write, mid-run)."""
    out = Path(output_dir)
    existing = out
    while not os.path.exists(existing) and existing != existing.parent:  # the nearest existing ancestor
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == out else f"lies under the file {existing}"
        raise InputError(f"{output_dir}: the output folder {where}; give a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{output_dir}: no permission to write in {existing}; give another output folder.")
    name_max = os.pathconf(existing, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if any(len(os.fsencode(name)) > name_max for name in out.relative_to(existing).parts):
        raise InputError(f"{output_dir}: file name too long (at most {name_max} bytes a name); give a shorter one.")


def output_paths(
    src: str, family: str, output_dir: str | os.PathLike, output_format: str | None, maps: Sequence[str] = ()
) -> dict[str, Path]:
    """Where the SR image of ``src`` (its format ``family``) goes (``"sr"``), and each uncertainty map: floats
    in the input's units, so NIfTI for PNG and DICOM inputs, whose 8-bit or integer pixels would erase them."""
    from monai_sr_bundle.data.writers import output_format_for, output_path_for

    fmt = output_format_for(family, output_format)
    out = {"sr": output_path_for(src, output_dir, source_format=family, fmt=fmt)}
    map_fmt = "nifti" if {family, output_format} & {"png", "dicom"} else output_format
    for key in maps:
        out[key] = output_path_for(src, output_dir, f"_sr_{key}", source_format=family, fmt=map_fmt)
    return out


def check_outputs(
    files: Sequence[str], output_dir: str | os.PathLike, output_format: str | None, maps: Sequence[str] = ()
) -> None:
    """Refuse, before anything is written, a run whose outputs would replace one of its inputs or a file this
    tool did not write (an earlier output is replaced: a rerun is expected), or where two inputs would share an
    output name (``scan.png`` and ``scan.jpg``; names are compared ignoring case, as a Windows or macOS share
    would). An input whose format is unknown is left to the reader to report."""
    from monai_sr_bundle.data.readers import image_format
    from monai_sr_bundle.data.writers import check_replaceable

    inputs = {os.path.realpath(f) for f in files}
    listable = [f for f in files if os.path.isdir(f) and os.access(f, os.R_OK | os.X_OK)]  # else: the reader's
    inputs |= {os.path.realpath(c) for f in listable for c in Path(f).iterdir()}
    claimed: dict[str, str] = {}
    for src in files:
        try:
            family = image_format(src)
        except InputError:
            continue
        for target in output_paths(src, family, output_dir, output_format, maps).values():
            key = os.path.realpath(target).casefold()
            if key in claimed:
                raise InputError(
                    f"{printable(src)} and {printable(claimed[key])} would both be written to {printable(target)}; "
                    "rename one or super-resolve them into separate folders (nothing was written)."
                )
            claimed[key] = src
            if os.path.realpath(target) in inputs:
                raise InputError(
                    f"{printable(target)}: the output of {printable(src)} would replace an input image; give an "
                    "output folder apart from the inputs (nothing was written)."
                )
            check_replaceable([target])


def default_input(given: str | os.PathLike | None = None) -> str | os.PathLike:
    """``given`` when there is one, else the real chest CT slice that pydicom ships: an input that exists on
    every machine (the bundle's inference with no ``dataset_dir``)."""
    if given is not None:
        return given
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


def run_inference(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    predictor: Predictor,
    output_dir: str | os.PathLike,
    allow_volume: bool = False,
    progress: bool = True,
    output_format: str | None = None,
    recursive: bool = False,
    skip_existing: bool = False,
    workers: int = 1,
    datalist: str | os.PathLike | None = None,
    request: SRRequest | None = None,
) -> list[str]:
    """Super-resolve every input and write each result to ``output_dir`` in its input's format family, or in
    ``output_format`` (``png``, ``nifti``, ``nrrd``, ``mha``, ``dicom``). A DICOM input gives a derived DICOM
    series of its study by default (``<stem>_sr.dcm``, or a folder for a series), naming the method.

    ``request`` (:class:`~monai_sr_bundle.request.SRRequest`) holds the run's options, over the predictor's
    defaults, checked before any file is read (:meth:`Predictor.request`). With its ``samples`` > 1 (stochastic
    methods; None is one draw) the SR image is the mean of that many draws, and the uncertainty maps are written
    beside it as ``<stem>_sr_std`` and ``<stem>_sr_lr_consistency`` (NIfTI for PNG and DICOM inputs, else the
    input's family), with the SR's geometry.

    Images are read with the predictor's intensity map, the one its weights were trained with: ``"minmax"``
    or a (lo, hi) window in modality units, e.g. HU for a CT model.

    An input whose SR would exceed the request's ``max_output_mp`` megapixels is refused from its header, before
    its pixels are decoded (:func:`~monai_sr_bundle.limits.check_output_size`): memory stays bounded.

    An archive: ``recursive`` walks folder inputs and writes each image under the same subfolder of
    ``output_dir`` (an ``output_dir`` inside the tree is not walked: outputs are not inputs), as a ``datalist``
    file's images are written under their paths relative to the folder they share; ``skip_existing`` leaves out
    inputs whose outputs are there already, ours and whole (:func:`~monai_sr_bundle.data.writers.complete_output`),
    and removes the temporary files a killed run left of the others; ``workers`` > 1 super-resolves in that many
    processes, each with its own copy of the predictor, which die with the run; under torchrun each process takes
    every N-th input.

    A bad input is reported in one sentence and skipped (nothing is written for it) while the others go on;
    if any failed, an :class:`InputError` saying how many is raised at the end: when others were written or were
    complete already, a :class:`PartialFailure`, and ``failed.csv`` in ``output_dir`` lists the failed inputs with
    their reasons (a clean run removes the one an earlier run wrote). A ``failed.csv`` there that this tool did
    not write is refused before anything is written, as a user's file at an SR output's name is: scripts read
    this run's failures from that name, so ours under another name would leave the user's to be read as ours.
    Returns the written paths."""
    from monai_sr_bundle import distributed
    from monai_sr_bundle.data.writers import check_replaceable, complete_output, remove_interrupted_writes

    request = predictor.request(request)  # bad options: refused before any file is read
    samples = request.samples or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a whole number of processes, at least 1, got {workers!r}.")
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for path in [output_dir, *paths]:  # a datalist file, a service's request: the OS would raise ValueError
        if "\0" in str(path):
            raise InputError(f"{printable(path)}: a path cannot contain a NUL character.")
    check_output_dir(output_dir)
    maps = MAPS if samples > 1 else ()
    jobs = input_jobs(inputs, output_dir, recursive) + (datalist_jobs(datalist, output_dir) if datalist else [])
    if not jobs:
        raise InputError(f"{inputs}: no input images found.")
    by_folder: dict[Path, list[str]] = {}
    for src, folder in jobs:
        by_folder.setdefault(folder, []).append(src)
    for folder, sources in by_folder.items():
        check_outputs(sources, folder, output_format, maps)
    check_replaceable([Path(output_dir) / FAILED])
    total = len(jobs)
    if skip_existing:
        targets = {job: _targets(job, output_format, maps) for job in jobs}
        jobs = [job for job in jobs if not (targets[job] and all(complete_output(t) for t in targets[job]))]
        if distributed.is_main_process():
            remove_interrupted_writes(t for job in jobs for t in targets[job])
            logger.info(f"{total - len(jobs)} of {total} inputs skipped: their outputs are complete")
    task = {"allow_volume": allow_volume, "output_format": output_format, "request": request}
    mine = distributed.shard(jobs)
    results = dict(_run_jobs(mine, predictor, task, workers, progress and distributed.is_main_process()))
    written = [path for job in mine if results.get(job) and results[job][0] for path in results[job][0]]
    failures = distributed.gather([(src, results[(src, f)][1]) for src, f in mine if results[(src, f)][1]])
    partial = bool(failures) and len(failures) < total  # when every input failed, nothing is written at all
    if distributed.is_main_process():
        _report_failures(Path(output_dir) / FAILED, failures if partial else [])
    if failures:
        message = f"{len(failures)} of {total} inputs failed: " + " | ".join(m for _, m in failures[:SHOWN])
        message += f" | and {len(failures) - SHOWN} more" if len(failures) > SHOWN else ""
        if not partial:
            raise InputError(message)
        raise PartialFailure(f"{message} (all listed in {Path(output_dir) / FAILED})")
    return written


#: in an output folder: the inputs of the last run that failed, with their one-sentence reasons
FAILED = "failed.csv"
#: the failures an error message names (an archive's may be thousands: failed.csv has them all)
SHOWN = 50


class PartialFailure(InputError):
    """Some inputs failed and the others were written or complete (``failed.csv`` lists the failed ones)."""


def input_jobs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike, recursive: bool = False
) -> list[tuple[str, Path]]:
    """(input, the folder its output goes to) for every input (``data.readers.expand_inputs``); with ``recursive``, a
    folder's subfolders too, each written under the same subfolder of ``output_dir`` as it has in the folder.
    A subfolder that is ``output_dir`` is not walked, nor what is under it, so that a rerun with the outputs inside
    the tree does not take them for inputs (``out/out/a_sr_sr.png``)."""
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out = Path(output_dir)
    outputs = _identity(out)
    jobs = []
    for path in map(Path, paths):
        if not (recursive and os.path.isdir(path)):
            jobs += [(src, out) for src in expand_inputs(path)]
            continue
        for folder, subfolders, _ in os.walk(path):
            subfolders[:] = sorted(
                d
                for d in subfolders
                if not d.startswith(".") and (outputs is None or _identity(Path(folder, d)) != outputs)
            )
            kinds = image_kinds(folder)
            if not kinds:
                continue  # a folder of folders, or of no images
            if set(kinds.values()) == {"dicom"} and one_series(list(kinds)):  # one input, beside its siblings
                subfolders[:] = []
                jobs.append((folder, out / Path(folder).parent.relative_to(path) if Path(folder) != path else out))
            else:
                jobs += [(str(src), out / Path(folder).relative_to(path)) for src in kinds]
    return jobs


def _identity(folder: Path) -> tuple[int, int] | None:
    """What tells a folder from every other whatever the path that names it (device, inode); None if it is not
    there."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def datalist_jobs(datalist: str | os.PathLike, output_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """(input, output folder) for every image a datalist file names (``label``, else ``image``, of the items
    of each of its lists), each written under its path relative to the folder they all share."""
    from monai_sr_bundle.jsonfile import read_json_object

    content = read_json_object(datalist, f"the datalist {datalist}")
    base = Path(datalist).resolve().parent
    paths = []
    for items in content.values():
        for item in items if isinstance(items, list) else []:
            value = item.get("label", item.get("image")) if isinstance(item, dict) else None
            if isinstance(value, str):
                paths.append(str(base / value))
    paths = list(dict.fromkeys(os.path.normpath(p) for p in paths))
    if any("\0" in p for p in paths):
        raise InputError(f"{datalist}: a path in it contains a NUL character.")
    if not paths:
        raise InputError(f"{datalist}: no item with a 'label' or 'image' path in its lists; give a datalist of images.")
    root = Path(os.path.commonpath([os.path.dirname(p) for p in paths]))
    return [(p, Path(output_dir) / Path(p).parent.relative_to(root)) for p in paths]


def _targets(job: tuple[str, Path], output_format: str | None, maps: Sequence[str]) -> list[Path]:
    """Where ``job``'s outputs go; none for an input of no known format (the reader reports it)."""
    from monai_sr_bundle.data.readers import image_format

    src, folder = job
    try:
        return list(output_paths(src, image_format(src), folder, output_format, maps).values())
    except InputError:
        return []


def super_resolve_file(src: str, folder: Path, predictor: Predictor, task: dict, progress: bool = False) -> list[str]:
    """Read, check, super-resolve and write one input (``task``: :func:`run_inference`'s options); returns the
    written paths."""
    from monai_sr_bundle.data.readers import image_shape, read_image
    from monai_sr_bundle.data.writers import output_format_for, write_image

    output_format, request = task["output_format"], task["request"]
    samples = request.samples or 1
    check_output_size(image_shape(src), src, predictor.scale, request.max_output_mp)
    img = read_image(src, predictor.intensity)
    validate_input(img, src, predictor.scale, task["allow_volume"])
    family = img.meta["source_format"]
    targets = output_paths(src, family, folder, output_format, MAPS if samples > 1 else ())
    fmt, method = output_format_for(family, output_format), predictor.method.name
    if samples == 1:
        sr = predictor(img, progress, request)
        return [str(write_image(sr, targets["sr"], fmt, method=method))]
    maps = predictor.maps(img, progress, request)
    written = [str(write_image(maps.pop("sr"), targets.pop("sr"), fmt, method=method))]
    return written + [str(write_image(maps[key], target, method=method)) for key, target in targets.items()]


def _attempt(job: tuple[str, Path], predictor: Predictor, task: dict, progress: bool = False):
    """(written paths, None), or (None, the input's one-sentence failure)."""
    try:
        return super_resolve_file(*job, predictor, task, progress), None
    except InputError as e:
        logger.error(printable(e))
        return None, printable(e)


#: a worker process's predictor and the pid of the run that started it, set once by :func:`_start_worker`
_WORKER: dict = {}
#: prctl's option that has the kernel signal a process when its parent dies (linux/prctl.h)
_PR_SET_PDEATHSIG = 1


def _start_worker(predictor: Predictor, threads: int, parent: int) -> None:
    """A worker dies with the run that started it: a killed run's workers would go on writing the jobs queued to
    them, racing the run that resumes it. On Linux the kernel kills it (``PR_SET_PDEATHSIG``); elsewhere
    :func:`_work` looks before each job."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the check between jobs remains
            pass
    _WORKER["parent"] = parent
    _exit_if_orphaned()  # the run died before prctl
    torch.set_num_threads(threads)
    _WORKER["predictor"] = predictor


def _exit_if_orphaned() -> None:
    """End this worker at once if the run that started it is gone (it has another parent now)."""
    if os.getppid() != _WORKER["parent"]:
        os._exit(1)


def _work(job: tuple[str, Path], task: dict):
    _exit_if_orphaned()
    return _attempt(job, _WORKER["predictor"], task)


def _run_jobs(jobs: list, predictor: Predictor, task: dict, workers: int, progress: bool):
    """(job, result of :func:`_attempt`) for every job, as they finish: here, or in ``workers`` processes that
    share the cores. A worker that dies (out of memory, killed) fails the inputs it had, not the run."""
    meter = Progress(len(jobs), progress)
    try:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                meter.status(printable(job[0]))
                yield job, _attempt(job, predictor, task, progress)
                meter.update()
            return
        yield from _pooled(jobs, predictor, task, workers, meter)
    finally:
        meter.close()


def _pooled(jobs: list, predictor: Predictor, task: dict, workers: int, meter: Progress):
    """:func:`_run_jobs` in ``workers`` processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    from contextlib import ExitStack

    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # a forked torch can deadlock in its thread pool
    with ExitStack() as stack:
        with safe_children():  # the pool's queues start multiprocessing's resource tracker, and the submits the
            # workers: none of them imports from this folder
            pool = stack.enter_context(
                ProcessPoolExecutor(workers, context, _start_worker, (predictor, threads, os.getpid()))
            )
            running = {pool.submit(_work, job, task): job for job in jobs}
        for future in as_completed(running):
            try:
                result = future.result()
            except BrokenProcessPool:
                result = (None, f"{printable(running[future][0])}: the worker process super-resolving it died (out "
                          "of memory or killed); run again with --skip-existing to retry it.")  # fmt: skip
            yield running[future], result
            meter.update()


def _report_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    """Write ``failed.csv`` (input, reason; :func:`~monai_sr_bundle.data.writers.write_table`: atomic, noted as
    ours, no cell a spreadsheet would run as a formula), or, when none failed, remove the one an earlier run
    wrote; a user's file there was refused before the run."""
    from monai_sr_bundle.data.writers import write_table, written_by_monai_sr

    if failures:
        write_table(path, [{"input": src, "reason": reason} for src, reason in failures])
    elif path.is_file() and written_by_monai_sr(path):
        path.unlink()
