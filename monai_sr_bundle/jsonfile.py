"""The project's small JSON files (method overlays, degradation presets, job and site configs), read with
the one-sentence errors every boundary gives."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from monai_sr_bundle.errors import InputError


def read_json_object(path: str | os.PathLike, what: str, allowed: Iterable[str] | None = None) -> dict:
    """The JSON object in ``path``. Unreadable JSON, another type, or (with ``allowed``) other keys are
    refused in one sentence that starts with ``what`` (e.g. ``"method 'x': its overlay <path>"``), and so is
    a key given twice in one object (JSON readers keep the last: a second site of one name would vanish)."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise InputError(f"{what} is not readable JSON ({e}).") from e
    if not isinstance(content, dict):
        raise InputError(f"{what} must be a JSON object.")
    if allowed is not None:
        allowed = list(allowed)
        unknown = sorted(set(content) - set(allowed))
        if unknown:
            raise InputError(f"{what} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}.")
    return content


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key {twice[0]!r} is given twice in one object")
    return dict(pairs)
