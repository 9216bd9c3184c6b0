"""Evaluation of SR methods against HR references: LR synthesis, SR, metrics, tables and figures.

One function, :func:`evaluate`, serves the bundle's ``evaluate.json``, the demo and the quality benchmark,
so every reported number is computed the same way.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from monai.data import MetaTensor

from monai_sr_bundle import distributed
from monai_sr_bundle.data import writers
from monai_sr_bundle.data.readers import image_format, read_image
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.inference import Predictor, validate_input
from monai_sr_bundle.metrics import summarize
from monai_sr_bundle.metrics.catalogue import CATALOGUE, scorers
from monai_sr_bundle.progress import Progress
from monai_sr_bundle.report import (
    LR_COLUMN,
    comparison_pages,
    crop_files,
    figure_pages,
    image_counts,
    page_names,
    spread_region,
    write_report,
    zoom_crops,
)
from monai_sr_bundle.results import format_table
from monai_sr_bundle.transforms.presets import ARTIFACT_MASK_KEY, lr_synthesis
from monai_sr_bundle.uncertainty import MAPS

logger = logging.getLogger(__name__)


def _plain(img: torch.Tensor) -> torch.Tensor:
    return img.as_tensor() if isinstance(img, MetaTensor) else img


def _score(
    fns: dict, sr: torch.Tensor, hr: torch.Tensor, boxes: torch.Tensor, region: torch.Tensor | None = None
) -> dict[str, float]:
    """The metrics of one SR image (:func:`~monai_sr_bundle.metrics.catalogue.scorers`); with ``region`` (where
    artifacts were drawn, at HR size) also the PSNR there."""
    sr, hr = _plain(sr)[None], _plain(hr)[None]
    row = {}
    for name, fn in fns.items():
        value = fn(sr, hr, boxes, region)
        if value is not None:
            row[name] = float(torch.as_tensor(value).flatten()[0])
    return row


def _counted(items, meter: Progress):
    """``items`` one by one, each counted done when the next is asked for; the meter closed at the end, or when
    the loop is left."""
    try:
        for item in items:
            yield item
            meter.update()
    finally:
        meter.close()


def evaluate(
    datalist: Sequence[Mapping],
    predictors: Mapping[str, Predictor],
    output_dir: str | os.PathLike,
    degradation: str | os.PathLike | Mapping | None = None,
    lpips: bool = True,
    lpips_weights: str | os.PathLike | None = None,
    save_images: bool = False,
    figures: int = 0,
    seed: int = 0,
    progress: bool = True,
    intensity: str | Sequence[float] | None = None,
    samples: int | None = None,
    sampled_images: int | None = None,
) -> dict:
    """Degrade each HR image (``label``), super-resolve it with every predictor and score it against the HR.

    Writes ``metrics.csv`` (one row per image and method), ``summary.json`` and ``summary.md`` (mean ± sd)
    to ``output_dir``; with ``save_images`` the SR images, and for the first ``figures`` images a
    comparison figure (:func:`~monai_sr_bundle.report.comparison_pages`: the first box zoomed, or on an image
    without boxes the region where the methods disagree most), and ``report.html``
    (:func:`~monai_sr_bundle.report.write_report`). Unreadable or unusable inputs are
    reported and skipped. Each input's rows, figure, crops and SR images carry one name, unique in the
    evaluation (:func:`input_labels`: its file name, unless another input shares it). Returns
    ``{method: {metric: (mean, sd)}}``.

    Every file is written as this tool's, and a file of a user's at any name it would write is refused in one
    sentence before anything is written (:func:`~monai_sr_bundle.data.writers.check_replaceable`): a rerun
    replaces its own outputs and nothing else.

    Args:
        datalist: dicts with ``label`` (HR path) and optional ``boxes`` ((x0, y0, x1, y1) at HR size).
        predictors: method name -> its :class:`~monai_sr_bundle.inference.Predictor`, all at one scale.
        degradation: a degradation preset (name or path) or its keys (default: antialiased bicubic), composed
            by :func:`~monai_sr_bundle.transforms.presets.lr_synthesis` as training composes it.
        lpips_weights: the LPIPS (AlexNet) ``.npz`` archive; default the shared data's.
        seed: LR synthesis of image ``i`` uses ``seed + i``, so noise presets are reproducible.
        intensity: how images are mapped to [0, 1] (:func:`~monai_sr_bundle.data.readers.read_image`); default
            the predictors' own, which must agree (a CT model is scored in the HU window it was trained in).
        samples: draws per image of the stochastic methods (None or 1: one): above 1 a method is scored on their
            mean, and its figure column adds the samples' spread and LR-consistency maps.
        sampled_images: the stochastic methods on the first this many images only (default all): minutes of
            sampling on a CPU each; ``summary.json``, ``summary.md`` and the report give each method's count.

    In a process group (``configs/multi_gpu_evaluate.json``) each process scores every N-th image and the first
    writes the files, the rows gathered in datalist order: the same files as one process writes.
    """
    if not predictors:
        raise InputError("no method to evaluate: give at least one predictor.")
    scales = {p.scale for p in predictors.values()}
    if len(scales) != 1:
        raise InputError(f"the methods to compare must share one scale, got x{', x'.join(map(str, sorted(scales)))}.")
    scale = scales.pop()
    if intensity is None:
        maps = {
            name: json.dumps(p.intensity if isinstance(p.intensity, str) else [float(v) for v in p.intensity])
            for name, p in predictors.items()
        }
        if len(set(maps.values())) != 1:
            raise InputError(
                "the methods read images differently ("
                + "; ".join(f"{k}: {v}" for k, v in maps.items())
                + "); compare methods of one modality, or give the intensity to score them in."
            )
        intensity = next(iter(predictors.values())).intensity
    for predictor in predictors.values():  # a bad number of samples: one sentence before anything is read
        if predictor.method.stochastic:
            predictor.request(samples=samples)
    if sampled_images is not None and sampled_images < 1:
        raise InputError(f"sampled_images must be at least 1, got {sampled_images}.")
    synthesis = lr_synthesis(degradation, scale)
    out = Path(output_dir)  # made once the degradation is known to be usable: a bad preset leaves nothing
    labels = input_labels([str(item["label"]) for item in datalist], 1 + len(predictors))
    writers.check_replaceable(_outputs(datalist, labels, list(predictors), out, save_images, figures))
    out.mkdir(parents=True, exist_ok=True)
    distributed.check_shards(datalist, "images to evaluate")
    fns = {name: scorers(lpips, lpips_weights) for name in predictors}
    rows, failures, shown = [], [], []  # (image index, row / message / figure): every process's, in one order
    mine = distributed.shard(range(len(datalist)))
    meter = Progress(len(mine), progress, desc="evaluating", quiet=not distributed.is_main_process())
    for i in _counted(mine, meter):
        item, label = datalist[i], labels[i]
        path = str(item["label"])
        try:
            hr = read_image(path, intensity=intensity)
            if hr.ndim != 3:
                raise InputError(f"{path}: evaluation takes 2D images, got a volume of shape {tuple(hr.shape[1:])}.")
            pair = synthesis.set_random_state(seed + i)({"label": hr})
            hr, lr, drawn = pair["label"], pair["image"], pair.get(ARTIFACT_MASK_KEY)
            region = None
            if drawn is not None:  # the artifacts drawn on the LR image, at the HR size
                region = (torch.as_tensor(drawn)[0] > 0).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
                region = region[: hr.shape[1], : hr.shape[2]]
            validate_input(lr, path, scale)
        except InputError as e:
            logger.error(str(e))
            failures.append((i, str(e)))
            continue
        boxes = torch.as_tensor(item.get("boxes") or [], dtype=torch.float32).reshape(-1, 4)
        panels = {LR_COLUMN: _plain(lr).repeat_interleave(scale, 1).repeat_interleave(scale, 2)}
        guards = {}  # a stochastic method's uncertainty maps, when it draws several samples
        for name, predictor in predictors.items():
            if predictor.method.stochastic and sampled_images is not None and i >= sampled_images:
                continue
            meter.status(f"{name} on {label.image}")
            try:
                if predictor.method.stochastic and (samples or 1) > 1:
                    drawn = predictor.maps(lr, samples=samples)
                    sr, guards[name] = drawn["sr"], {k: _plain(drawn[k]) for k in MAPS}
                else:
                    sr = predictor(lr)
            except InputError as e:  # one method on one image: the others go on, and the report says why
                logger.error(f"{name} on {path}: {e}")
                failures.append((i, f"{name} on {path}: {e}"))
                continue
            rows.append((i, {"image": label.image, "method": name, **_score(fns[name], sr, hr, boxes, region)}))
            panels[name] = _plain(sr)
            if save_images:
                writers.write_image(sr, _sr_path(path, out / name, hr.meta["source_format"], label))
        if i < figures:
            stem = label.stem
            done = [panels[n] for n in predictors if n in panels] or [panels[LR_COLUMN]]
            region = boxes[0].tolist() if len(boxes) else spread_region(done, _plain(hr))
            notes = {r["method"]: f"PSNR {r['psnr']:.2f} dB" for j, r in rows[-len(predictors) :] if j == i}
            figure, folder = _figure_places(out, stem)
            pages = comparison_pages(panels, _plain(hr), region, figure, notes, guards)
            crops = zoom_crops(panels, _plain(hr), region, folder)
            shown.append((i, stem, {n: f"report/{stem}/{f}" for n, f in crops.items()}, [p.name for p in pages]))
    rows = [row for _, row in sorted(distributed.gather(rows), key=lambda x: x[0])]  # stable: methods keep order
    failures = [message for _, message in sorted(distributed.gather(failures))]
    shown = {stem: (crops, pages) for _, stem, crops, pages in sorted(distributed.gather(shown))}
    if not rows:
        raise InputError("no image could be evaluated: " + " | ".join(failures))
    summary = {
        name: {m: summarize([r[m] for r in rows if r["method"] == name]) for m in rows[0] if m in CATALOGUE}
        for name in predictors
    }
    if not distributed.is_main_process():
        return summary
    writers.write_table(out / "metrics.csv", rows)
    n = len({r["image"] for r in rows})
    counts = image_counts(rows, list(predictors))
    writers.write_json(
        out / "summary.json", {"images": n, "images_per_method": counts, "failures": failures, "summary": summary}
    )
    writers.write_text(
        out / "summary.md",
        format_table(summary, counts) + f"\n\n{n} images; in-box metrics over the images with boxes.",
    )
    how = "antialiased bicubic downsampling" if degradation is None else f"degradation preset {degradation}"
    if isinstance(degradation, Mapping):
        how = "a degradation given as keys: " + str(degradation.get("description", "no description"))
    write_report(out, rows, summary, shown, scale, how, {k: p.weights for k, p in predictors.items()}, failures)
    return summary


class Label(NamedTuple):
    """How one input of an evaluation is named in its outputs (:func:`input_labels`): ``image`` in its rows of
    ``metrics.csv``, ``stem`` in its figure and crops folder; its saved SR images get ``prefix`` before and
    ``number`` after the usual ``<stem>`` of ``<stem>_sr<ext>``."""

    image: str
    stem: str
    prefix: str = ""
    number: str = ""


def input_labels(paths: Sequence[str], columns: int) -> list[Label]:
    """One label per input, unique in the evaluation: otherwise ``a/x.png`` and ``b/x.png`` would overwrite each
    other's figure, crops and SR images and give two rows nobody can tell apart.

    An input keeps its file name (the names it always had) unless another's outputs would take one of its own;
    then they are named by their shortest distinguishing trailing path (row ``a/x.png``, files ``a_x``), and where
    none tells them apart (the same file twice) the later ones are numbered (``x.png (2)``, ``x_2``). Names are
    compared ignoring case, as some file systems do; ``columns`` (the LR and the methods) gives the figure's
    page names. Only the paths, the working folder and the method count matter: a rerun names alike."""
    full = [Path(os.path.abspath(p)).parts for p in paths]
    saved = []  # each input's usual SR image name split at its "_sr" (for a label: prefix, head, number, _sr, tail)
    for p in paths:
        try:
            saved.append(_sr_path(p, Path(), image_format(p), Label("", "")).name.rsplit("_sr", 1))
        except InputError:  # no known format: it writes no SR image, and fails when read
            saved.append(None)

    def label(i: int, depth: int, number: int = 1) -> Label:
        trail = full[i][-depth:]
        folders = (re.sub(r"\W+", "_", part).strip("_") for part in trail[:-1])
        prefix = "".join(f"{part}_" for part in folders if part)
        tag = f"_{number}" if number > 1 else ""
        image = Path(*trail).as_posix() + (f" ({number})" if number > 1 else "")
        return Label(image, prefix + Path(trail[-1]).stem + tag, prefix, tag)

    def names(i: int, lab: Label) -> set[str]:
        """Every name ``lab`` gives input ``i``'s outputs (and its rows), as a case-insensitive file system sees it."""
        figure, folder = _figure_places(Path(), lab.stem)
        taken = {f"row:{lab.image}", folder.as_posix(), *(p.as_posix() for p in figure_pages(figure, columns))}
        if saved[i] is not None:  # as _sr_path names it, without asking the disk again
            taken.add(f"sr/{lab.prefix}{saved[i][0]}{lab.number}_sr{saved[i][1]}")
        return {name.casefold() for name in taken}

    depth = [1] * len(paths)
    while True:  # one folder more for each input that shares a name with one whose further folders differ
        current = [names(i, label(i, depth[i])) for i in range(len(paths))]
        owners = defaultdict(list)
        for i, taken in enumerate(current):
            for name in taken:
                owners[name].append(i)
        deeper = [
            i
            for i, taken in enumerate(current)
            if depth[i] < len(full[i])
            and any(len({full[j][: -depth[i]] for j in owners[name]}) > 1 for name in taken if len(owners[name]) > 1)
        ]
        if not deeper:
            break
        for i in deeper:
            depth[i] += 1
    result, used, after = [], set(), {}  # after: the last number given to a stem (where the next search starts)
    for i in range(len(paths)):  # what a trailing path cannot tell apart, a number does
        base = label(i, depth[i]).stem.casefold()
        number = after.get(base, 0) + 1
        while names(i, label(i, depth[i], number)) & used:
            number += 1
        result.append(label(i, depth[i], number))
        used |= names(i, result[-1])
        after[base] = number
    return result


def _figure_places(out: Path, stem: str) -> tuple[Path, Path]:
    """Where an image's comparison figure and its zoomed crops go (``stem``: its :class:`Label`'s)."""
    return out / f"figure_{stem}.png", out / "report" / stem


def _sr_path(path: str, folder: Path, family: str, label: Label) -> Path:
    """Where a saved SR image goes, named as its :class:`Label` says: the SR of a synthetic LR is no derived series
    of the HR's, so NIfTI for DICOM."""
    fmt = "nifti" if family == "dicom" else None
    usual = writers.output_path_for(path, folder, label.number + "_sr", source_format=family, fmt=fmt)
    return usual.with_name(label.prefix + usual.name)


def _outputs(
    datalist: Sequence[Mapping], labels: Sequence[Label], methods: list[str], out: Path, save_images: bool, figures: int
) -> list[Path]:
    """Every file :func:`evaluate` may write in ``out``, named by the inputs' ``labels`` as it names them (an input
    of no known format writes no SR image)."""
    columns = 1 + len(methods)  # the LR and each method
    shown = [label.stem for label in labels[: max(figures, 0)]]
    files = [out / name for name in ("metrics.csv", "summary.json", "summary.md", *page_names(len(shown)))]
    for stem in shown:
        figure, folder = _figure_places(out, stem)
        files += figure_pages(figure, columns) + crop_files(folder, columns)
    for item, label in zip(datalist, labels) if save_images else ():
        path = str(item["label"])
        try:
            files += [_sr_path(path, out / name, image_format(path), label) for name in methods]
        except InputError:
            continue
    return files
