"""The one SR entry point: method + weights -> SR image, used by the bundle, the CLI, Slicer and MONAI Label.

``SRInferer`` runs a network on 2D images or CT volumes (slice by slice, in-plane), in overlapping tiles
so that memory stays bounded on full-size radiographs, and gives the output the input's geometry with
the spacing divided by the scale. ``load_network`` builds a method from its bundle overlay (the
``_target_`` in ``configs/methods/<method>.json`` is the registry) and loads its shipped weights.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import Inferer
from torch import nn

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.transforms.degradation import zoom_geometry

BUNDLE_ROOT = Path(__file__).resolve().parent
METHODS_DIR = BUNDLE_ROOT / "configs" / "methods"
logger = logging.getLogger(__name__)


def available_methods() -> list[str]:
    """Method names that have an overlay in ``configs/methods``."""
    return sorted(p.stem for p in METHODS_DIR.glob("*.json"))


def method_config(method: str, scale: int = 4, modality: str = "cxr", bundle_root: str | os.PathLike | None = None) -> ConfigParser:
    """Parser over ``configs/methods/<method>.json`` with ``scale``, ``modality`` and ``bundle_root`` set."""
    if method not in available_methods():
        raise InputError(f"unknown method {method!r}; available: {', '.join(available_methods())}.")
    parser = ConfigParser({"bundle_root": str(bundle_root or BUNDLE_ROOT), "scale": int(scale), "modality": modality})
    parser.update(ConfigParser.load_config_file(METHODS_DIR / f"{method}.json"))
    return parser


def weights_path(method: str, scale: int = 4, modality: str = "cxr", bundle_root: str | os.PathLike | None = None) -> Path:
    """Where a method's shipped weights live: ``models/<method>_<modality>_x<scale>.pt``."""
    return Path(bundle_root or BUNDLE_ROOT) / "models" / f"{method}_{modality}_x{int(scale)}.pt"


def load_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a plain state dict (``torch.load(..., weights_only=True)``) into ``network``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found; train the method first or pass --weights.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except (RuntimeError, KeyError, EOFError, OSError, TypeError, AttributeError, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: weights do not fit this network ({str(e).splitlines()[0]}).") from e
    return network


def load_network(
    method: str,
    scale: int = 4,
    modality: str = "cxr",
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    winograd: bool = False,
) -> nn.Module:
    """Build ``method`` at ``scale`` in eval mode with its weights (the shipped ones unless ``weights``).

    ``winograd`` swaps the 64-channel 3x3 convolutions for Winograd F(4x4, 3x3) on the CPU (same output
    to ~1e-5, about 2x faster for VDSR after an ~11 s compile per new image size; inference only)."""
    parser = method_config(method, scale, modality)
    network = parser.get_parsed_content("network_def")
    if parser.get("has_weights", True):
        load_weights(network, weights or weights_path(method, scale, modality))
    elif weights:
        raise InputError(f"method {method!r} has no weights; drop --weights.")
    network = network.to(device).eval()
    if winograd:
        if torch.device(device).type != "cpu":
            raise InputError("--winograd is a CPU speed-up; drop it on a GPU.")
        from monai_sr_bundle.networks.winograd import winograd_inference

        network = winograd_inference(network)
    return network


class SRInferer(Inferer):
    """Super-resolve a batch (B, C, X, Y) or a CT batch (B, C, X, Y, Z) in-plane, slice by slice.

    Inputs larger than ``tile_size`` (in LR pixels) are processed in overlapping tiles: each tile keeps
    only its core and drops a margin of ``overlap * tile_size / 2`` LR pixels on every side that faces
    another tile, so that, for a network whose receptive field fits in that margin (bicubic, SRCNN, VDSR),
    tiled and whole-image outputs are the same up to float rounding (Gaussian blending of whole tiles, as
    ``sliding_window_inference`` does, leaves seams where the tiles' edge pixels get weight). The output is
    clamped to [0, 1] and, for MetaTensors, carries the input's geometry with in-plane spacing divided by
    ``scale``.

    Args:
        scale: the network's SR factor.
        tile_size: LR tile edge; memory grows with its square.
        overlap: fraction of a tile shared with its neighbours (covers the receptive field).
        sw_batch_size: tiles per forward pass.
        progress: show a progress bar over slices/tiles.
    """

    def __init__(self, scale: int = 4, tile_size: int = 256, overlap: float = 0.25, sw_batch_size: int = 1, progress: bool = False) -> None:
        super().__init__()
        self.scale = int(scale)
        self.tile_size = int(tile_size)
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.progress = progress

    def _windows(self, size: int) -> list[tuple[int, int, int]]:
        """(window start, core start, core stop) along an axis of ``size`` LR pixels; windows are
        ``min(tile_size, size)`` long and hold their core with a full margin except at the image edges."""
        tile = min(self.tile_size, size)
        if tile == size:
            return [(0, 0, size)]
        margin = min(int(round(self.overlap * self.tile_size / 2)), (self.tile_size - 1) // 2)
        step = self.tile_size - 2 * margin
        return [(min(max(c - margin, 0), size - tile), c, min(c + step, size)) for c in range(0, size, step)]

    def _infer_2d(self, x: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if max(x.shape[-2:]) <= self.tile_size:
            return network(x)
        from tqdm import tqdm

        s, n = self.scale, x.shape[0]
        th, tw = min(self.tile_size, x.shape[-2]), min(self.tile_size, x.shape[-1])
        tiles = [(r, c) for r in self._windows(x.shape[-2]) for c in self._windows(x.shape[-1])]
        out = None
        for i in tqdm(range(0, len(tiles), self.sw_batch_size), desc="tiles", disable=not self.progress):
            group = tiles[i : i + self.sw_batch_size]
            pred = network(torch.cat([x[..., r[0] : r[0] + th, c[0] : c[0] + tw] for r, c in group]))
            if tuple(pred.shape[-2:]) != (th * s, tw * s):
                raise ValueError(f"the network turned a {th}x{tw} tile into {tuple(pred.shape[-2:])}, not x{s}.")
            if out is None:
                out = pred.new_zeros((n, pred.shape[1], x.shape[-2] * s, x.shape[-1] * s))
            for j, ((r0, r1, r2), (c0, c1, c2)) in enumerate(group):
                out[..., r1 * s : r2 * s, c1 * s : c2 * s] = pred[
                    j * n : (j + 1) * n, :, (r1 - r0) * s : (r2 - r0) * s, (c1 - c0) * s : (c2 - c0) * s
                ]
        return out

    def __call__(self, inputs: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor], *args, **kwargs) -> torch.Tensor:
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        x = x.to(torch.float32)
        if x.ndim == 4:
            out = self._infer_2d(x, network)
        elif x.ndim == 5:
            out = torch.stack([self._infer_2d(x[..., k], network) for k in range(x.shape[-1])], dim=-1)
        else:
            raise InputError(f"expected a batch (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(x.shape)}.")
        return zoom_geometry(inputs, out.clamp(0.0, 1.0), self.scale)


def validate_input(img: torch.Tensor, name: str, scale: int, allow_volume: bool = False) -> None:
    """Refuse inputs that SR cannot handle sensibly, with one sentence naming the input."""
    if img.ndim not in (3, 4):
        raise InputError(f"{name}: expected a 2D image or a 3D volume, got array shape {tuple(img.shape)}.")
    if img.ndim == 4 and not allow_volume:
        raise InputError(
            f"{name}: is a 3D volume {tuple(img.shape[1:])} and the methods are 2D; to super-resolve it in-plane, "
            "slice by slice, ask for it (--slice_by_slice True)."
        )
    if min(img.shape[1:3]) < 8 * scale:
        raise InputError(f"{name}: image {tuple(img.shape[1:3])} is smaller than {8 * scale} px (8x the scale {scale}) in-plane.")
    if not torch.isfinite(img).all():
        raise InputError(f"{name}: the image contains NaN or infinite values.")
    if float(img.max() - img.min()) == 0.0:
        raise InputError(f"{name}: the image is constant (no detail to super-resolve); check the file.")


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files to super-resolve: each file as given; a folder of images gives its image files; a folder that
    holds only DICOM files of one series (a CT) stays one input, read as a volume."""
    from monai_sr_bundle.data.readers import image_format

    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: list[str] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(str(p))
            continue
        children = sorted(c for c in p.iterdir() if c.is_file() and not c.name.startswith("."))
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


def _one_series(files: list[Path]) -> bool:
    import pydicom

    if len(files) < 2:
        return False
    uids = set()
    for f in files:
        try:
            uids.add(str(pydicom.dcmread(f, stop_before_pixels=True).get("SeriesInstanceUID", "")))
        except Exception:
            return False
    return len(uids) == 1


def default_input() -> str:
    """The real chest CT slice that pydicom ships: an input that exists on every machine."""
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


def super_resolve(image: MetaTensor, network: nn.Module, inferer: SRInferer, device: str | torch.device = "cpu") -> MetaTensor:
    """SR of one loaded image (C, X, Y[, Z]) -> MetaTensor with geometry and intensity map carried over."""
    with torch.inference_mode():
        return inferer(image[None].to(device), network)[0].cpu()


def run_inference(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    network: nn.Module,
    inferer: SRInferer,
    output_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    allow_volume: bool = False,
    progress: bool = True,
    intensity: str | Sequence[float] = "minmax",
) -> list[str]:
    """Super-resolve every input and write each result to ``output_dir`` in its input's format family.

    ``intensity`` is the reader's map to [0, 1] and must be the one the weights were trained with:
    ``"minmax"`` (the default) or a (lo, hi) window in modality units, e.g. HU for a CT model.

    A bad input is reported in one sentence and skipped (nothing is written for it) while the others go on;
    if any failed, an :class:`InputError` listing them is raised at the end. Returns the written paths."""
    from tqdm import tqdm

    from monai_sr_bundle.data.readers import read_image
    from monai_sr_bundle.data.writers import output_path_for, write_image

    check_output_dir(output_dir)
    files = expand_inputs(inputs)
    if not files:
        raise InputError(f"{inputs}: no input images found.")
    written, failures = [], []
    for path in tqdm(files, desc="super-resolving", unit="image", disable=not progress):
        try:
            img = read_image(path, intensity)
            validate_input(img, path, inferer.scale, allow_volume)
            target = output_path_for(path, output_dir, source_format=img.meta["source_format"])
            written.append(str(write_image(super_resolve(img, network, inferer, device), target)))
        except InputError as e:
            logger.error(str(e))
            failures.append(str(e))
    if failures:
        raise InputError(f"{len(failures)} of {len(files)} inputs failed: " + " | ".join(failures))
    return written


class OnnxNetwork(nn.Module):
    """An exported ONNX model behind the torch call interface, so the same inferer drives ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        if not Path(path).is_file():
            raise InputError(f"{path}: ONNX model not found; export it first with 'python -m monai.bundle onnx_export'.")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (y,) = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype("float32")})
        return torch.from_numpy(y).to(x.device)
