"""Weights made without training here: readers of published SR weight files that map them onto this package's
networks, for a baseline row, a pretrained start or a teacher; and ESRGAN's interpolation of two trained files
(:func:`interpolate_weights`).

Formats:

- ncnn (``.param`` text + ``.bin``), as Real-ESRGAN's compact models ship for upscaler apps. The ``.param``
  file: a magic line ``7767517``, a line of layer and blob counts, then one layer per line (type, name, input
  and output counts, blob names, ``key=value`` options; a Convolution's ``0`` is its output channels, ``1``
  the kernel, ``5`` whether it has a bias, ``6`` the weight count). The ``.bin`` file holds, layer by layer in
  that order, a 4-byte storage tag and the weights (tag ``0x01306B47``: float16, padded to 4 bytes; ``0``:
  float32), then a bias and PReLU slopes as raw float32.
- BasicSR / Real-ESRGAN PyTorch files (``.pth``): a dict with ``params_ema`` or ``params``, read with
  ``torch.load(..., weights_only=True)``.

Radiographs have one channel: a grey image repeated to RGB gives the same first-layer response as the sum
of the RGB filters, and the mean of the three output channels is one image, so the first convolution's
filters are summed over their inputs and the last convolution's outputs (and the interpolant added to them)
averaged over the three colours. The result equals the RGB network on a grey image, averaged.

Every converted file records where its weights came from and their licence (``weights.json``).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np
import torch

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError, shown
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.weights import (
    check_weights_output,
    open_bounded,
    read_state,
    stored_limit,
    weights_record,
    write_weights,
)

NCNN_MAGIC = "7767517"
_FP16_TAG, _FP32_TAG = 0x01306B47, 0
#: the most bytes an ncnn ``.param`` may take: a compact network's, a line per layer, takes about 5 KB
PARAM_LIMIT = 1 << 20
#: copies of the one-channel network's weights a source file may hold: a BasicSR file holds two (``params``,
#: ``params_ema``) of an RGB network, whose first and last layers are three times the one-channel network's
SOURCE_COPIES = 6
#: what a weights file made from Real-ESRGAN's compact model must say of itself
REALESRGAN_ATTRIBUTION = {
    "source": "Real-ESRGAN realesr-general-x4v3 (SRVGGNetCompact), ncnn export",
    "licence": "BSD-3-Clause (Real-ESRGAN, Xintao Wang et al.)",
    "cite": "X. Wang, L. Xie, C. Dong, Y. Shan, Real-ESRGAN: Training Real-World Blind Super-Resolution with "
    "Pure Synthetic Data, ICCVW 2021",
}


def _options(tokens: list[str]) -> dict[int, str]:
    out = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(token)
        out[int(key)] = value
    return out


def read_ncnn_param(path: str | os.PathLike) -> list[tuple[str, dict[int, str]]]:
    """The layers of an ncnn ``.param`` file as (type, options), in order; a file that is not one is refused in
    one sentence."""
    path = Path(path)
    with open_bounded(path, PARAM_LIMIT, "an ncnn network description (.param)") as f:
        text = f.read()
    try:
        lines = [line.split() for line in text.decode("ascii").splitlines() if line.strip()]
        if not lines or lines[0] != [NCNN_MAGIC]:
            raise ValueError("magic")
        count = int(lines[1][0])
        layers = []
        for fields in lines[2 : 2 + count]:
            n_in, n_out = int(fields[2]), int(fields[3])
            layers.append((fields[0], _options(fields[4 + n_in + n_out :])))
        if len(layers) != count:
            raise ValueError("count")
    except (ValueError, IndexError) as e:  # a UnicodeDecodeError is a ValueError
        raise InputError(f"{path}: not an ncnn network description (.param) this reader understands ({e}).") from e
    return layers


def _whole(options: dict[int, str], key: int, layer: str) -> int:
    """Option ``key`` of ``layer`` as the positive whole number it must be (ValueError otherwise)."""
    value = options.get(key)
    if value is None or not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ValueError(f"{layer} has {key}={shown(value)}, not a positive whole number")
    return int(value)


def _conv_shapes(layers: list[tuple[str, dict[int, str]]], shuffle: int) -> list[tuple[int, int]]:
    """(outputs, inputs) of each 3x3 convolution, from its outputs (``0``) and weight count (``6``), which must
    chain: the first takes a grey or RGB image, each other what the one before gives, and the last gives the
    image's channels times the shuffle squared (ValueError otherwise)."""
    shapes = []
    for i, options in enumerate(o for t, o in layers if t == "Convolution"):
        layer = f"Convolution {i}"
        outputs, count = _whole(options, 0, layer), _whole(options, 6, layer)
        inputs = shapes[-1][0] if shapes else count // (9 * outputs)
        if count != 9 * outputs * inputs or (not shapes and inputs not in (1, 3)):
            raise ValueError(f"{layer}'s weight count 6={count} is not its 0={outputs} outputs x 9 x its inputs")
        shapes.append((outputs, inputs))
    if shapes[-1][0] != shapes[0][1] * shuffle**2:
        raise ValueError(f"its last convolution gives {shapes[-1][0]} channels, not the image's times {shuffle}^2")
    return shapes


class _Bin:
    """Sequential reader of an ncnn ``.bin`` file of at most ``limit`` bytes."""

    def __init__(self, path: Path, limit: int) -> None:
        with open_bounded(path, limit, "the ncnn weights (.bin) of this method's network") as f:
            self.path, self.data, self.at = path, f.read(), 0

    def _advance(self, size: int) -> int:
        """Where the next ``size`` bytes start, which must be in the file."""
        start = self.at
        if start + size > len(self.data):
            raise InputError(f"{self.path}: ends before the weights its .param file describes (truncated?).")
        self.at += size
        return start

    def take(self, count: int, dtype: str) -> np.ndarray:
        start = self._advance(np.dtype(dtype).itemsize * count)
        return np.frombuffer(self.data, dtype=dtype, count=count, offset=start).astype(np.float32)

    def tagged(self, count: int) -> np.ndarray:
        (tag,) = struct.unpack_from("<I", self.data, self._advance(4))
        if tag == _FP16_TAG:
            out = self.take(count, "<f2")
            self._advance((-2 * count) % 4)
            return out
        if tag == _FP32_TAG:
            return self.take(count, "<f4")
        raise InputError(
            f"{self.path}: unknown ncnn weight storage tag {tag:#x} (this reader knows float16 and float32)."
        )


def _check_values(state: dict, path: Path) -> None:
    """Refuse weights that are not dense tensors of finite real numbers, naming the first: a NaN, a complex or
    a boolean weight would otherwise be folded and written as if it were one."""
    for name, value in state.items():
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            what = f"a {type(value).__name__}" if not isinstance(value, torch.Tensor) else f"a {value.layout} tensor"
            raise InputError(f"{path}: {shown(name)} holds {what}, not a dense tensor of weights.")
        if not value.is_floating_point():
            raise InputError(f"{path}: {shown(name)} holds {value.dtype} values, not real floating-point weights.")
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"{path}: {shown(name)} holds values that are not finite (NaN or infinity).")


def srvgg_from_ncnn(param: str | os.PathLike, weights: str | os.PathLike, limit: int) -> tuple[dict, dict]:
    """An ncnn SRVGGNetCompact (Real-ESRGAN's compact models) -> (a one-channel state dict for
    :class:`~monai_sr_bundle.networks.srvgg.SRVGGNetCompact`, its arguments ``scale``, ``channels``, ``convs``).
    A file of another architecture is refused in one sentence naming what it holds; a ``.bin`` above ``limit``
    bytes is not read."""
    param, weights = Path(param), Path(weights)
    layers = read_ncnn_param(param)
    kinds = [t for t, _ in layers if t not in ("Input", "Split")]
    convs = [o for t, o in layers if t == "Convolution"]
    shapes = [t for t in kinds if t in ("Convolution", "PReLU")]
    expected = ["Convolution", "PReLU"] * (len(convs) - 1) + ["Convolution"]
    if (
        len(convs) < 2
        or shapes != expected
        or kinds[-3:] != ["PixelShuffle", "Interp", "BinaryOp"]
        or any(o.get(1, "1") != "3" for o in convs)
    ):
        counts = ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds)))
        raise InputError(
            f"{param}: not a Real-ESRGAN compact network (SRVGGNetCompact: 3x3 convolutions with PReLUs, a pixel "
            f"shuffle and an interpolated input); it holds {counts}."
        )
    try:
        shuffle = _whole({0: "1", **dict(layers)["PixelShuffle"]}, 0, "PixelShuffle")
        conv_shapes = _conv_shapes(layers, shuffle)
        slopes = [_whole({0: "1", **o}, 0, "PReLU") for t, o in layers if t == "PReLU"]
    except ValueError as e:
        raise InputError(f"{param}: not a compact network this reader understands: {e}.") from e
    rgb, width = conv_shapes[0][1], conv_shapes[0][0]
    state = {}
    reader = _Bin(weights, limit)
    for i, (c_out, c_in) in enumerate(conv_shapes):
        w = reader.tagged(c_out * c_in * 9).reshape(c_out, c_in, 3, 3)
        b = reader.take(c_out, "<f4") if convs[i].get(5, "0") == "1" else np.zeros(c_out, np.float32)
        if i == 0:
            w = w.sum(axis=1, keepdims=True)  # grey repeated to RGB: the filters' sum
        if i == len(conv_shapes) - 1:
            w = w.reshape(rgb, -1, *w.shape[1:]).mean(axis=0)  # the colours' mean, per sub-pixel
            b = b.reshape(rgb, -1).mean(axis=0)
        state[f"body.{2 * i}.weight"], state[f"body.{2 * i}.bias"] = w, b
        if i < len(slopes):
            state[f"body.{2 * i + 1}.weight"] = reader.take(slopes[i], "<f4")
    if reader.at != len(reader.data):
        raise InputError(
            f"{weights}: {len(reader.data) - reader.at} bytes left over after the weights {param} describes."
        )
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    _check_values(tensors, weights)
    return tensors, {"scale": shuffle, "channels": width, "convs": len(convs) - 2}


def srvgg_from_basicsr(path: str | os.PathLike, limit: int) -> tuple[dict, dict]:
    """A BasicSR / Real-ESRGAN ``.pth`` of SRVGGNetCompact (``params_ema`` or ``params``; keys ``body.{i}``)
    of at most ``limit`` bytes -> (one-channel state dict, arguments), as :func:`srvgg_from_ncnn`."""
    path = Path(path)
    try:
        loaded = read_state(path, limit, "a BasicSR file of this method's network")
    except InputError:
        raise
    except Exception as e:  # pickle, zip and torch's own errors: one sentence
        raise InputError(f"{path}: not a PyTorch weights file torch.load(weights_only=True) can read ({e}).") from e
    state = loaded.get("params_ema", loaded.get("params", loaded)) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise InputError(f"{path}: not a state dict (names of weights -> tensors) in params_ema or params.")
    body = {k: v for k, v in state.items() if re.fullmatch(r"body\.\d+\.(weight|bias)", k)}
    _check_values(body, path)
    keys = sorted(body, key=lambda k: int(k.split(".")[1]))
    convs = [k for k in keys if k.endswith(".weight") and body[k].ndim == 4]
    if len(convs) < 2 or any(body[k].shape[-2:] != (3, 3) for k in convs):
        raise InputError(f"{path}: not a Real-ESRGAN compact network (SRVGGNetCompact, keys body.N.weight).")
    first, last = body[convs[0]], body[convs[-1]]
    rgb, width = first.shape[1], first.shape[0]
    scale = int(round((last.shape[0] / rgb) ** 0.5)) if rgb in (1, 3) else 0
    bias = body.get(convs[-1].replace("weight", "bias"))
    if scale < 1 or last.shape[0] != rgb * scale**2 or (bias is not None and bias.shape != last.shape[:1]):
        raise InputError(
            f"{path}: its first convolution takes {rgb} channels and its last gives {last.shape[0]}: not a grey or "
            "RGB compact network (the last gives the image's channels times the scale squared)."
        )
    out = {}
    for k in keys:
        v = body[k].float()
        if k == convs[0]:
            v = v.sum(dim=1, keepdim=True)
        elif k in (convs[-1], convs[-1].replace("weight", "bias")):
            v = v.reshape(rgb, -1, *v.shape[1:]).mean(dim=0)
        out[k] = v.contiguous()
    return out, {"scale": scale, "channels": width, "convs": len(convs) - 2}


def convert(
    source: str | os.PathLike, method: str, output: str | os.PathLike, weights_bin: str | os.PathLike | None = None
) -> str:
    """Read a published SRVGGNetCompact file (``source``: an ncnn ``.param`` with its ``weights_bin``, or a
    BasicSR ``.pth``), check it fits ``method``'s network, and write it to ``output`` as this package's weights
    (``weights.json`` beside it records the source files' sha256 and :data:`REALESRGAN_ATTRIBUTION`). Returns the
    new file's sha256. The output is checked before anything is read (:func:`~monai_sr_bundle.weights.
    check_weights_output`), and no source is read beyond what ``method``'s network could hold."""

    source = Path(source)
    ncnn = source.suffix == ".param"
    files = [source, Path(weights_bin if weights_bin is not None else source.with_suffix(".bin"))] if ncnn else [source]
    check_weights_output(output, files)
    limit = stored_limit(methods.get(method).network(), SOURCE_COPIES)
    state, args = srvgg_from_ncnn(*files, limit) if ncnn else srvgg_from_basicsr(source, limit)
    target = methods.get(method, args["scale"])
    network = target.network()
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(
            f"{source}: a x{args['scale']} compact network of {args['convs']} convolutions x {args['channels']} "
            f"channels, which does not fit method {method!r}'s network ({str(e).splitlines()[-1].strip()})."
        ) from e
    provenance = {
        **REALESRGAN_ATTRIBUTION,
        "converted_from": {f.name: sha256(f) for f in files},
        "command": f"monai-sr pretrained {' '.join(str(f) for f in files)} -m {method} -o {output}",
        "data": "none of this project's: pretrained by Real-ESRGAN's authors on natural RGB images with synthetic "
        "blind degradations; folded to one channel (first filters summed, last outputs averaged)",
        "scale": args["scale"],
        "intensity": "minmax",
        "precision": "float16",
    }
    # float16 as published (ncnn stores them so): half the file; they load into the float32 network
    return write_weights({k: v.half() for k, v in network.state_dict().items()}, output, provenance)


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
    origin = {k: {"file": p.name, "sha256": sha256(p), **weights_record(p)} for k, p in sources.items()}
    command = (
        f"monai-sr interpolate -m {method} --scale {scale} --modality {modality} --alpha {alpha:g} "
        f"{sources['psnr']} {sources['gan']} -o {output}"
    )
    # the blend reads images as its sources were trained to (a HU window for CT weights) and on their data
    inherited = {k: origin["gan"][k] for k in ("data", "intensity") if k in origin["gan"]}
    provenance = {"command": command, **inherited, "scale": sr_method.scale, "modality": sr_method.modality}
    return write_weights(state, output, {**provenance, "alpha": alpha, "interpolated_from": origin})
