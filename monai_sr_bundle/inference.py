"""The one SR entry point used by the bundle, the CLI, Slicer, MONAI Label, evaluation and the benchmarks: a
:class:`Predictor` (a method loaded once, :meth:`monai_sr_bundle.methods.Method.predictor`) super-resolves
loaded images, and :func:`run_inference` takes files in and writes SR files out, with the input's geometry
(spacing divided by the scale) and its format family.

The method and its weights come from :mod:`monai_sr_bundle.methods`, the tiling from
:mod:`monai_sr_bundle.tiling`; this module reads, checks, super-resolves and writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import MetaTensor
from torch import nn

from monai_sr_bundle.diffusion.uncertainty import MAPS
from monai_sr_bundle.errors import InputError, printable
from monai_sr_bundle.tiling import SRInferer
from monai_sr_bundle.transforms.degradation import zoom_geometry

logger = logging.getLogger(__name__)


def check_size(shape: Sequence[int], name: str, scale: int) -> None:
    """Refuse an image too small to super-resolve at ``scale``; ``shape`` is spatial (X, Y[, Z]), so a header's
    shape can be checked before any pixel is decoded."""
    if min(shape[:2]) < 8 * scale:
        raise InputError(
            f"{name}: image {tuple(shape[:2])} is smaller than {8 * scale} px (8x the scale {scale}) in-plane."
        )


def validate_input(img: torch.Tensor, name: str, scale: int, allow_volume: bool = False) -> None:
    """Refuse inputs that SR cannot handle sensibly, with one sentence naming the input."""
    if img.ndim not in (3, 4):
        raise InputError(f"{name}: expected a 2D image or a 3D volume, got array shape {tuple(img.shape)}.")
    if img.ndim == 4 and not allow_volume:
        raise InputError(
            f"{name}: is a 3D volume {tuple(img.shape[1:])} and the methods are 2D; to super-resolve it in-plane, "
            "slice by slice, ask for it (--slice_by_slice True)."
        )
    check_size(img.shape[1:], name, scale)
    if not torch.isfinite(img).all():
        raise InputError(f"{name}: the image contains NaN or infinite values.")
    if float(img.max() - img.min()) == 0.0:
        raise InputError(f"{name}: the image is constant (no detail to super-resolve); check the file.")


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files to super-resolve: each file as given; a folder of images gives its image files; a folder that
    holds only DICOM files of one series (a CT) stays one input, read as a volume."""
    from monai_sr_bundle.data.readers import folder_files, image_format

    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: list[str] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(str(p))
            continue
        children = folder_files(p)
        kinds = {}
        for c in children:
            try:
                kinds[c] = image_format(c)
            except InputError:
                continue
        if not kinds or (set(kinds.values()) == {"dicom"} and _one_series(list(kinds))):
            out.append(str(p))  # a folder without images stays an input too, so that the reader reports it
        else:
            out.extend(str(c) for c in kinds)
    return out


def check_output_dir(output_dir: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder that is a file, lies under a file, or cannot be written."""
    out = Path(output_dir)
    existing = out
    while not existing.exists() and existing != existing.parent:  # the nearest existing ancestor
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == out else f"lies under the file {existing}"
        raise InputError(f"{output_dir}: the output folder {where}; give a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{output_dir}: no permission to write in {existing}; give another output folder.")


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
    from monai_sr_bundle.data.writers import written_by_monai_sr

    inputs = {os.path.realpath(f) for f in files}
    inputs |= {os.path.realpath(c) for f in files if os.path.isdir(f) for c in Path(f).iterdir()}
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
            if target.exists() and not written_by_monai_sr(target):
                raise InputError(
                    f"{printable(target)}: already exists and was not written by monai-sr; move it or give "
                    "another output folder (nothing was written)."
                )


def _one_series(files: list[Path]) -> bool:
    from monai_sr_bundle.data.readers import dcmread

    if len(files) < 2:
        return False
    uids = set()
    for f in files:
        try:  # the readers' dcmread: a deflated file is bounded before it is inflated
            uids.add(str(dcmread(f, stop_before_pixels=True).get("SeriesInstanceUID", "")))
        except InputError:
            return False
    return len(uids) == 1


def default_input() -> str:
    """The real chest CT slice that pydicom ships: an input that exists on every machine."""
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


class Predictor:
    """A method loaded once, what every surface calls for SR (the CLI, the bundle, MONAI Label, evaluation, the
    benchmarks): its network on ``device`` in eval mode, the weights it came from, the reader's intensity map
    they were trained with and the tiling the method needs. Sampling options are defaults that each call may
    change; the network is never changed by a call, so one predictor serves every request.

    Args:
        method: the method (:func:`monai_sr_bundle.methods.get`).
        network: its loaded network (:meth:`~monai_sr_bundle.methods.Method.load`, or the same compiled with
            TensorRT or running its parts on ONNX Runtime).
        weights: the file ``network`` was loaded from (None: the shipped weights; none for interpolation).
        device: where images go.
        tile_size: LR tile edge; memory grows with its square.
        intensity: the reader's map to [0, 1] (default: the one recorded with the weights, else the
            modality's, :meth:`~monai_sr_bundle.methods.Method.intensity_of`).
        sampler, steps, seed: a stochastic method's defaults (refused for a deterministic one).
    """

    def __init__(
        self,
        method,
        network: nn.Module,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        tile_size: int = 256,
        intensity: str | Sequence[float] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.method, self.network, self.device, self.tile_size = method, network, device, int(tile_size)
        if weights is None and method.trainable:
            weights = method.weights_path
        self.weights = None if weights is None else Path(weights)
        self.intensity = method.intensity_of(self.weights) if intensity is None else intensity
        self.sampling = self._checked(sampler=sampler, steps=steps, seed=seed)

    def __repr__(self) -> str:
        return f"Predictor({self.method!r}, weights={self.weights}, sampling={self.sampling})"

    @property
    def scale(self) -> int:
        return self.method.scale

    def _checked(self, **options) -> dict:
        """The options given (not None), refused in one sentence when the method takes none, a sampler is
        unknown or there are more steps than the network was trained with."""
        given = {k: v for k, v in options.items() if v is not None}
        self.method.check_sampling(**given)
        if given.keys() & {"sampler", "steps"}:
            self.network.make_sampler(given.get("sampler"), given.get("steps"))
        return given

    def inferer(self, progress: bool = False, **sampling) -> SRInferer:
        """The tiling inferer of one call: the defaults with ``sampling`` over them; ``progress`` shows a
        stochastic method's steps."""
        options = {**self.sampling, **self._checked(**sampling)}
        seed = options.pop("seed", None)
        if self.method.stochastic and progress:
            options["progress"] = True
        return self.method.inferer(self.tile_size, seed=seed, **options)

    def __call__(self, image: MetaTensor, progress: bool = False, **sampling) -> MetaTensor:
        """SR of one loaded image (C, X, Y[, Z]) -> MetaTensor with geometry and intensity map carried over."""
        inferer = self.inferer(progress, **sampling)
        with torch.inference_mode():
            return inferer(image[None].to(self.device), self.network)[0].cpu()

    def maps(self, image: MetaTensor, samples: int, progress: bool = False, **sampling) -> dict[str, MetaTensor]:
        """``samples`` SR draws of one loaded image -> the mean SR image (``"sr"``) and the uncertainty maps of
        :mod:`monai_sr_bundle.diffusion.uncertainty`, each with the SR's geometry. A map's ``intensity_range``
        is (0, the image's range), so it is written as a spread in the input's units."""
        from monai_sr_bundle.diffusion.uncertainty import uncertainty_maps

        self.method.check_sampling(samples=samples)
        inferer = self.inferer(progress, **sampling)
        batch = image[None].to(self.device)
        with torch.inference_mode():
            maps = uncertainty_maps(batch, inferer.draw(batch, self.network, samples), self.scale)
        out = {}
        for key, value in maps.items():
            result = zoom_geometry(image, value[0].cpu(), self.scale)
            if key != "sr" and "intensity_range" in result.meta:
                lo, hi = result.meta["intensity_range"]
                result.meta["intensity_range"] = (0.0, float(hi) - float(lo))
            out[key] = result
        return out


def run_inference(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    predictor: Predictor,
    output_dir: str | os.PathLike,
    allow_volume: bool = False,
    progress: bool = True,
    samples: int | None = None,
    output_format: str | None = None,
    **sampling,
) -> list[str]:
    """Super-resolve every input and write each result to ``output_dir`` in its input's format family, or in
    ``output_format`` (``png``, ``nifti``, ``nrrd``, ``mha``, ``dicom``). A DICOM input gives a derived DICOM
    series of its study by default (``<stem>_sr.dcm``, or a folder for a series), naming the method.

    With ``samples`` > 1 (stochastic methods; None is one draw) the SR image is the mean of that many draws, and the
    uncertainty maps are written beside it as ``<stem>_sr_std`` and ``<stem>_sr_lr_consistency`` (NIfTI
    for PNG and DICOM inputs, else the input's family), with the SR's geometry.

    Images are read with the predictor's intensity map, the one its weights were trained with: ``"minmax"``
    or a (lo, hi) window in modality units, e.g. HU for a CT model. ``sampling`` (``sampler``, ``steps``,
    ``seed``) changes the predictor's defaults for this run.

    A bad input is reported in one sentence and skipped (nothing is written for it) while the others go on;
    if any failed, an :class:`InputError` listing them is raised at the end. Returns the written paths."""
    from tqdm import tqdm

    from monai_sr_bundle.data.readers import read_image
    from monai_sr_bundle.data.writers import output_format_for, write_image

    predictor.method.check_sampling(samples=samples)
    samples = samples or 1
    predictor.inferer(**sampling)  # bad sampling options: refused before any file is read
    check_output_dir(output_dir)
    files = expand_inputs(inputs)
    if not files:
        raise InputError(f"{inputs}: no input images found.")
    check_outputs(files, output_dir, output_format, MAPS if samples > 1 else ())
    written, failures = [], []
    for path in tqdm(files, desc="super-resolving", unit="image", disable=not progress):
        try:
            img = read_image(path, predictor.intensity)
            validate_input(img, path, predictor.scale, allow_volume)
            family = img.meta["source_format"]
            targets = output_paths(path, family, output_dir, output_format, MAPS if samples > 1 else ())
            fmt, method = output_format_for(family, output_format), predictor.method.name
            if samples == 1:
                sr = predictor(img, progress, **sampling)
                written.append(str(write_image(sr, targets["sr"], fmt, method=method)))
                continue
            maps = predictor.maps(img, samples, progress, **sampling)
            written.append(str(write_image(maps.pop("sr"), targets.pop("sr"), fmt, method=method)))
            for key, target in targets.items():
                written.append(str(write_image(maps[key], target, method=method)))
        except InputError as e:
            logger.error(printable(e))
            failures.append(printable(e))
    if failures:
        raise InputError(f"{len(failures)} of {len(files)} inputs failed: " + " | ".join(failures))
    return written
