"""Weights that the app trains: ``<model_dir>/<method>_<modality>_x<scale>_v<N>.pt``, numbered from 1, each
with its provenance in ``<model_dir>/weights.json``. The shipped weights in the bundle are never written."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import HTTPException

from monai_sr_bundle import methods

SHIPPED = "shipped"
LATEST = "latest"


def versions(model_dir: str | Path, method: str, scale: int, modality: str) -> dict[int, Path]:
    """Trained versions of a method, by number."""
    stem = f"{method}_{modality}_x{int(scale)}_v"
    pattern = re.compile(re.escape(stem) + r"(\d+)\.pt")
    found = (pattern.fullmatch(p.name) for p in Path(model_dir).glob(stem + "*.pt"))
    return {int(m.group(1)): Path(model_dir) / m.group(0) for m in found if m}


def next_version(model_dir: str | Path, method: str, scale: int, modality: str) -> Path:
    """Path of the next version to train (one more than the highest)."""
    n = max(versions(model_dir, method, scale, modality), default=0) + 1
    return Path(model_dir) / f"{method}_{modality}_x{int(scale)}_v{n}.pt"


def resolve(model_dir: str | Path, method: str, scale: int, modality: str, choice: str | int = SHIPPED) -> Path:
    """Weights file for ``choice``: ``shipped`` (the bundle's), ``latest`` (the newest trained version, else the
    shipped one) or a version number (``3`` or ``v3``); 404 for a version that does not exist."""
    trained = versions(model_dir, method, scale, modality)
    text = str(choice).strip().lower()
    if text == SHIPPED or (text == LATEST and not trained):
        return methods.get(method, scale, modality).weights_path
    if text == LATEST:
        return trained[max(trained)]
    number = text[1:] if text.startswith("v") else text
    if not re.fullmatch(r"[0-9]{1,9}", number) or int(number) not in trained:  # ASCII: '²' and '١' are digits too
        have = ", ".join(f"v{n}" for n in sorted(trained)) or "none yet"
        raise HTTPException(
            404, f"weights {choice!r} of {method} x{scale}: use 'shipped', 'latest' or a trained version ({have})."
        )
    return trained[int(number)]
