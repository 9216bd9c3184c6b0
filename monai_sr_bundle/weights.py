"""Weight storage: how a state dict is stored (fp32, or compacted to int8 / fp16: :func:`compact_state`) and
read back (:func:`load_weights`), bounded by what the network can hold before a byte is inflated
(:func:`open_bounded`, :func:`read_state`), and the ``weights.json`` manifest beside weights files that records
each file's sha256 and provenance (:func:`read_manifest`, :func:`weights_record`). torch is imported where a
tensor is read, so the registry lists methods without it."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from monai_sr_bundle.errors import InputError, shown
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.jsonfile import read_json_object

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch
    from torch import nn


#: what reading a file that holds no weights of the network raises (torch.load, load_state_dict): a text file
#: ends in an IndexError, a truncated one in an EOFError
NOT_WEIGHTS = (RuntimeError, LookupError, ValueError, EOFError, OSError, TypeError, AttributeError, pickle.PickleError)


#: the key suffix of an int8-stored weight's scales (:func:`compact_state`)
INT8_SCALE = ".int8_scale"
#: the fewest elements a weight needs to be stored in int8: the bytes are in the wide layers, while the thin
#: ones at the ends (an image's channels in and out, time embeddings) are small and carry every error into the
#: image (a sampler's 20 steps compound it: sr3's deviation from its fp16 samples is 4x lower this way)
INT8_MIN_SIZE = 16384
#: how a state dict may be stored, smallest first (:func:`compact_state`)
STORAGES = ("int8", "int8_kernel", "fp16")


def compact_state(state: Mapping[str, torch.Tensor], storage: str) -> dict[str, torch.Tensor]:
    """``state`` as shipped: ``fp16`` halves every float tensor; ``int8`` also stores each convolution or linear
    weight (2+ dimensions) of at least :data:`INT8_MIN_SIZE` elements as int8 codes and an fp16 scale per output
    channel (``<key>`` + :data:`INT8_SCALE`), a quarter of fp32; ``int8_kernel`` a scale per kernel (output and
    input channel) of a spatial convolution, 22 % more bytes for a 3x3 kernel and half the deviation of a
    sampler's draws (ADSR). The tracked tree must stay small enough for a GPU call to carry it; which storage a
    file may take is measured (``tools/compact_weights.py``), and :func:`expand_state` reads any back."""
    import torch

    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r}: choose one of {', '.join(STORAGES)}")
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
        elif storage != "fp16" and value.ndim >= 2 and value.numel() >= INT8_MIN_SIZE:
            dims = 2 if storage == "int8_kernel" and value.ndim > 2 and value[0, 0].numel() > 1 else 1
            scale = (value.float().abs().flatten(dims).amax(-1).clamp_min(1e-12) / 127).half()
            codes = value.float() / scale.float().view(*scale.shape, *(1,) * (value.ndim - dims))
            out[key] = torch.round(codes).clamp(-127, 127).to(torch.int8)
            out[key + INT8_SCALE] = scale
        else:
            out[key] = value.half()
    return out


def expand_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stored state dict (fp32, or :func:`compact_state`'s) as the fp32 tensors a network loads."""
    out = {}
    for key, value in state.items():
        if key.endswith(INT8_SCALE):
            continue
        scale = state.get(key + INT8_SCALE)
        if scale is not None:
            value = value.float() * scale.float().view(*scale.shape, *(1,) * (value.ndim - scale.ndim))
        out[key] = value.float() if value.is_floating_point() else value
    return out


#: bytes of a weights file beyond its tensors' (the pickle of their names, the zip's headers)
STORED_OVERHEAD = 1 << 20


def stored_limit(network: nn.Module, copies: int = 1) -> int:
    """The most bytes a file of ``copies`` copies of ``network``'s weights can take, every element in float64:
    what a weights file of it may hold before it is read."""
    return copies * 8 * sum(v.numel() for v in network.state_dict().values()) + STORED_OVERHEAD


def open_bounded(path: str | os.PathLike, limit: int, what: str):
    """``path`` opened for reading in binary, when it is a regular file of at most ``limit`` bytes; else one
    sentence that names ``what`` it should be. Opened without blocking (a FIFO would wait for a writer forever)
    and checked on the open file, so the file checked is the file read: a device (/dev/zero) never ends, and a
    file far larger than its network needs would be read whole."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror}); give {what}.") from e
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_size <= limit:
        return os.fdopen(fd, "rb")
    os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: not a regular file (a folder, device or pipe); give {what}.")
    raise InputError(f"{path}: {info.st_size} bytes, above the {limit} allowed for {what}; check the file.")


def read_state(path: str | os.PathLike, limit: int, what: str):
    """``torch.load(path, weights_only=True)`` of a regular file of at most ``limit`` bytes (:func:`open_bounded`)
    whose zip entries inflate to at most ``limit`` bytes: torch.load inflates each storage whole, so a few MB of
    deflated zeros could declare gigabytes; the zip's directory says their sizes first. A file that is no zip
    (the legacy format declares its sizes inside its pickle) raises ValueError, for the caller's sentence."""
    import zipfile

    import torch

    with open_bounded(path, limit, what) as f:
        try:
            inflated = sum(entry.file_size for entry in zipfile.ZipFile(f).infolist())
        except zipfile.BadZipFile as e:
            raise ValueError("not a zip archive, the format torch.save writes") from e
        if inflated > limit:
            raise InputError(
                f"{path}: its zip entries inflate to {inflated} bytes, above the {limit} allowed for {what} (a zip "
                "bomb?); check the file."
            )
        f.seek(0)
        return torch.load(f, map_location="cpu", weights_only=True)


def load_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a plain state dict (``torch.load(..., weights_only=True)``; fp32 or :func:`compact_state`'s) into
    ``network``, reading no more than a file of its weights can hold (:func:`read_state`)."""
    path = Path(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: weights file not found; train the method first or pass --weights.")
    try:
        state = read_state(path, stored_limit(network), "weights that fit this network")
        network.load_state_dict(expand_state(state))
    except InputError:
        raise
    except NOT_WEIGHTS as e:
        # torch's own first line only names the network ("Error(s) in loading state_dict for X:"); the next says what
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        reason = lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        if len(reason) > 160:
            reason = reason[:160].rsplit(", ", 1)[0] + ", ..."
        raise InputError(f"{path}: weights do not fit this network ({reason}).") from e
    return network


#: the manifest beside weights files: each file's name -> its sha256 and provenance (:func:`read_manifest`)
MANIFEST = "weights.json"
#: the most bytes a manifest may take (the shipped one, of every method: about 30 KB)
MANIFEST_LIMIT = 16 << 20


def read_manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """The entries of the ``weights.json`` in ``folder`` (``{}`` when there is none): a regular file holding a JSON
    object of objects, or one sentence. Writers of weights rewrite it, so they read it before their first byte."""
    manifest = Path(folder) / MANIFEST
    if not os.path.lexists(manifest):
        return {}
    what = f"the weights manifest {manifest}"
    open_bounded(manifest, MANIFEST_LIMIT, "a weights manifest (a JSON object)").close()
    entries = read_json_object(manifest, what)
    broken = next((name for name, entry in entries.items() if not isinstance(entry, dict)), None)
    if broken is not None:
        raise InputError(f"{what}: the entry of {shown(broken)} must be a JSON object; repair or remove it.")
    return entries


def weights_record(weights: str | os.PathLike) -> dict:
    """The entry of ``weights`` in the ``weights.json`` beside it (command, data, intensity, ...), or ``{}``
    when there is no manifest or no entry for it."""
    weights = Path(weights)
    return read_manifest(weights.parent).get(weights.name, {})


def write_weights(state: dict, weights_path: str | os.PathLike, provenance: dict) -> str:
    """Save a plain state dict to ``weights_path`` atomically and record its sha256 and ``provenance`` in the
    ``weights.json`` beside it; returns the sha256. Every published weight file goes through here; the
    manifest is read (and a broken one refused) before the first byte is written, and rewritten under a lock
    and atomically, so two trainings that publish at once keep both. No temporary file outlives a failure."""
    import fcntl

    import torch

    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    manifest = weights_path.parent / MANIFEST
    temporaries = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in (weights_path, manifest)]
    folder = os.open(weights_path.parent, os.O_RDONLY)  # the lock is on the folder: no lock file left behind
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        entries = read_manifest(weights_path.parent)
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
    if output.name == MANIFEST:
        raise InputError(f"{output}: the name of the manifest beside weights files; give another name.")
    if os.path.lexists(output) and not stat.S_ISREG(os.lstat(output).st_mode):
        raise InputError(
            f"{output}: exists and is not a regular file (a folder, link or device); give a new file name."
        )
    if any(output.resolve() == p.resolve() for p in sources):
        raise InputError(f"{output}: the output would overwrite a file it is made from; choose another.")
    recorded = read_manifest(output.parent).get(output.name, {}).get("sha256")
    if not (recorded and output.is_file() and sha256(output) == recorded):
        check_replaceable([output])
    return output
