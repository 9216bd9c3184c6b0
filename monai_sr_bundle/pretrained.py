"""Pretrained weights as an input like data: readers of published SR weight files that map them onto this
package's networks, for a baseline row, a pretrained start or a teacher.

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
import struct
from pathlib import Path

import numpy as np
import torch

from monai_sr_bundle.errors import InputError

NCNN_MAGIC = "7767517"
_FP16_TAG, _FP32_TAG = 0x01306B47, 0
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
    try:
        lines = [line.split() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
        if not lines or lines[0] != [NCNN_MAGIC]:
            raise ValueError("magic")
        count = int(lines[1][0])
        layers = []
        for fields in lines[2 : 2 + count]:
            n_in, n_out = int(fields[2]), int(fields[3])
            layers.append((fields[0], _options(fields[4 + n_in + n_out :])))
        if len(layers) != count:
            raise ValueError("count")
    except (OSError, ValueError, IndexError) as e:  # a UnicodeDecodeError is a ValueError
        raise InputError(f"{path}: not an ncnn network description (.param) this reader understands ({e}).") from e
    return layers


class _Bin:
    """Sequential reader of an ncnn ``.bin`` file."""

    def __init__(self, path: Path) -> None:
        self.path, self.data, self.at = path, path.read_bytes(), 0

    def take(self, count: int, dtype: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.at + size > len(self.data):
            raise InputError(f"{self.path}: ends before the weights its .param file describes (truncated?).")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.at).astype(np.float32)
        self.at += size
        return out

    def tagged(self, count: int) -> np.ndarray:
        (tag,) = struct.unpack("<I", self.data[self.at : self.at + 4] or b"\xff\xff\xff\xff")
        self.at += 4
        if tag == _FP16_TAG:
            out = self.take(count, "<f2")
            self.at += (-2 * count) % 4
            return out
        if tag == _FP32_TAG:
            return self.take(count, "<f4")
        raise InputError(
            f"{self.path}: unknown ncnn weight storage tag {tag:#x} (this reader knows float16 and float32)."
        )


def srvgg_from_ncnn(param: str | os.PathLike, weights: str | os.PathLike) -> tuple[dict, dict]:
    """An ncnn SRVGGNetCompact (Real-ESRGAN's compact models) -> (a one-channel state dict for
    :class:`~monai_sr_bundle.networks.srvgg.SRVGGNetCompact`, its arguments ``scale``, ``channels``, ``convs``).
    A file of another architecture is refused in one sentence naming what it holds."""
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
    shuffle = int(dict(layers)["PixelShuffle"].get(0, "1"))
    width = int(convs[0][0])
    rgb = int(convs[0][6]) // (width * 9)
    state, conv_i = {}, 0
    reader = _Bin(weights)
    body_index = 0
    for kind, opts in layers:
        if kind == "Convolution":
            c_out = int(opts[0])
            w = reader.tagged(int(opts[6])).reshape(c_out, -1, 3, 3)
            b = reader.take(c_out, "<f4") if opts.get(5, "0") == "1" else np.zeros(c_out, np.float32)
            if conv_i == 0:
                w = w.sum(axis=1, keepdims=True)  # grey repeated to RGB: the filters' sum
            if conv_i == len(convs) - 1:
                w = w.reshape(rgb, -1, *w.shape[1:]).mean(axis=0)  # the colours' mean, per sub-pixel
                b = b.reshape(rgb, -1).mean(axis=0)
            state[f"body.{body_index}.weight"], state[f"body.{body_index}.bias"] = w, b
            conv_i, body_index = conv_i + 1, body_index + 1
        elif kind == "PReLU":
            state[f"body.{body_index}.weight"] = reader.take(int(opts.get(0, "1")), "<f4")
            body_index += 1
    if reader.at != len(reader.data):
        raise InputError(
            f"{weights}: {len(reader.data) - reader.at} bytes left over after the weights {param} describes."
        )
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    return tensors, {"scale": shuffle, "channels": width, "convs": len(convs) - 2}


def srvgg_from_basicsr(path: str | os.PathLike) -> tuple[dict, dict]:
    """A BasicSR / Real-ESRGAN ``.pth`` of SRVGGNetCompact (``params_ema`` or ``params``; keys ``body.{i}``)
    -> (one-channel state dict, arguments), as :func:`srvgg_from_ncnn`."""
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch's own errors: one sentence
        raise InputError(f"{path}: not a PyTorch weights file torch.load(weights_only=True) can read ({e}).") from e
    state = loaded.get("params_ema", loaded.get("params", loaded)) if isinstance(loaded, dict) else None
    keys = sorted((k for k in (state or {}) if k.startswith("body.")), key=lambda k: int(k.split(".")[1]))
    convs = [k for k in keys if k.endswith(".weight") and state[k].ndim == 4]
    if not state or len(convs) < 2 or any(state[k].shape[-2:] != (3, 3) for k in convs):
        raise InputError(f"{path}: not a Real-ESRGAN compact network (SRVGGNetCompact, keys body.N.weight).")
    first, last = state[convs[0]], state[convs[-1]]
    rgb, width = first.shape[1], first.shape[0]
    scale = int(round((last.shape[0] / rgb) ** 0.5))
    out = {}
    for k in keys:
        v = state[k].float()
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
    new file's sha256."""
    from monai_sr_bundle import methods
    from monai_sr_bundle.hashing import sha256
    from monai_sr_bundle.training import write_weights

    source = Path(source)
    if source.suffix == ".param":
        if weights_bin is None:
            weights_bin = source.with_suffix(".bin")
        state, args = srvgg_from_ncnn(source, weights_bin)
        files = [source, Path(weights_bin)]
    else:
        state, args = srvgg_from_basicsr(source)
        files = [source]
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
