"""File digests: how weights, graphs and data are named and recorded (``weights.json``, the engine's cache)."""

from __future__ import annotations

import hashlib
import os


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
